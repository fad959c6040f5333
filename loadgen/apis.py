"""How a request goes over the wire: LoRAX's native stream, or OpenAI's streaming completions.

Both are read the same way. Every server-sent event that carries a generated token is timestamped, and
the final event's counts (LoRAX's `details`, OpenAI's `usage`) are the server's own prompt and
generated token counts. Every request is greedy and asks for its exact length with EOS ignored:
`ignore_eos_token` for LoRAX and loraplex, and also `ignore_eos` on the OpenAI route, which is what
vLLM calls it, so the same workload can be sent to loraplex, LoRAX or vLLM.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx

from .workload import RequestSpec

API_NAMES = ("lorax", "openai")


@dataclass(frozen=True)
class StreamEvent:
    """What one `data:` line of a stream says (None: the line does not say it)."""

    token: bool = False
    done: bool = False
    error: str | None = None
    prompt_tokens: int | None = None
    generated_tokens: int | None = None
    finish_reason: str | None = None


def _error_text(error: object, kind: object) -> str:
    if isinstance(error, dict):  # OpenAI style: {"message", "type", ...}
        return f"{error.get('type', kind or 'error')}: {error.get('message', error)}"
    return f"{kind or 'error'}: {error}"


@dataclass(frozen=True)
class LoraxApi:
    """POST /generate_stream {"inputs", "parameters"}; the adapter is `parameters.adapter_id`."""

    name: str = "lorax"
    route: str = "/generate_stream"

    def body(self, request: RequestSpec) -> dict:
        parameters: dict = {
            "max_new_tokens": request.output_len,
            "ignore_eos_token": True,
            "details": True,
        }
        if request.adapter_id is not None:
            parameters["adapter_id"] = request.adapter_id
        return {"inputs": request.prompt, "parameters": parameters}

    def parse(self, data: str) -> StreamEvent:
        event = json.loads(data)
        if "error" in event:
            return StreamEvent(error=_error_text(event["error"], event.get("error_type")))
        details = event.get("details") or {}
        return StreamEvent(
            token=event.get("token") is not None,
            prompt_tokens=details.get("prompt_tokens"),
            generated_tokens=details.get("generated_tokens"),
            finish_reason=details.get("finish_reason"),
        )


@dataclass(frozen=True)
class OpenAIApi:
    """POST /v1/completions with `stream` and usage; the adapter is `model`, `base_model` the base."""

    base_model: str = ""
    name: str = "openai"
    route: str = "/v1/completions"

    def body(self, request: RequestSpec) -> dict:
        return {
            "model": request.adapter_id if request.adapter_id is not None else self.base_model,
            "prompt": request.prompt,
            "max_tokens": request.output_len,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,
            "ignore_eos_token": True,
        }

    def parse(self, data: str) -> StreamEvent:
        if data == "[DONE]":
            return StreamEvent(done=True)
        event = json.loads(data)
        if "error" in event or event.get("object") == "error":
            return StreamEvent(
                error=_error_text(event.get("error", event.get("message")), event.get("error_type"))
            )
        choices = event.get("choices") or []
        usage = event.get("usage") or {}
        return StreamEvent(
            token=bool(choices),
            prompt_tokens=usage.get("prompt_tokens"),
            generated_tokens=usage.get("completion_tokens"),
            finish_reason=choices[0].get("finish_reason") if choices else None,
        )


LORAX = LoraxApi()
Api = LoraxApi | OpenAIApi


def make_api(name: str, base_model: str = "") -> Api:
    if name == "lorax":
        return LORAX
    if name == "openai":
        return OpenAIApi(base_model)
    raise ValueError(f"unknown API {name!r}; expected one of {', '.join(API_NAMES)}")


def served_base_model(url: str, info: dict, timeout: float = 10.0) -> str:
    """The base model's name for OpenAI requests: /info's model_id, else the first of GET /v1/models."""
    if info.get("model_id"):
        return info["model_id"]
    try:
        response = httpx.get(url.rstrip("/") + "/v1/models", timeout=timeout)
        models = response.json().get("data", []) if response.status_code == 200 else []
    except (httpx.HTTPError, ValueError):
        models = []
    return models[0]["id"] if models and isinstance(models[0], dict) and "id" in models[0] else ""
