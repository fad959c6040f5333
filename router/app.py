"""The FastAPI application: lifespan (engine load and shutdown), status routes, and the API routers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from loraplex.server.engine import Engine

from . import adapters, generate, openai_routes
from .auth import ApiKeyAuth, RateLimiter
from .engine_client import EngineClient, Status
from .errors import ApiError, install_error_handlers
from .generation import Generator
from .metrics import Metrics
from .validation import MAX_BEST_OF

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerSettings:
    """HTTP-side settings (the engine has its own EngineConfig)."""

    max_concurrent_requests: int = 128
    api_keys: frozenset[str] = frozenset()
    metrics_without_auth: bool = False
    rate_limit_requests: int | None = None
    rate_limit_tokens: int | None = None
    request_timeout: float | None = None
    adapter_label_limit: int = 100
    chat_template: str | None = None  # --chat-template: stands in for the base model's
    trust_request_chat_template: bool = False


def package_version() -> str:
    try:
        return version("loraplex")
    except PackageNotFoundError:
        return "unknown"


def create_app(
    engine_factory: Callable[[], Engine],
    settings: ServerSettings | None = None,
    on_load_failure: Callable[[str], None] | None = None,
) -> FastAPI:
    """The app builds its engine with `engine_factory` after it starts listening (/health says 503 until then)."""
    settings = settings or ServerSettings()
    client = EngineClient(engine_factory, settings.max_concurrent_requests)
    metrics = Metrics(lambda: client.engine, settings.adapter_label_limit)
    limiter = RateLimiter(settings.rate_limit_requests, settings.rate_limit_tokens)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = asyncio.create_task(_load(client, on_load_failure))
        try:
            yield
        finally:
            loading.cancel()
            client.shutdown()

    app = FastAPI(title="loraplex", version=package_version(), lifespan=lifespan)
    app.state.client = client
    app.state.metrics = metrics
    app.state.generator = Generator(client, metrics, limiter, settings.request_timeout)
    app.state.settings = settings
    install_error_handlers(app, on_api_error=lambda request, error: _count_error(metrics, request, error))
    app.include_router(generate.router)
    app.include_router(openai_routes.router)
    app.include_router(adapters.router)
    open_paths = {"/health"} | ({"/metrics"} if settings.metrics_without_auth else set())
    app.add_middleware(ApiKeyAuth, keys=settings.api_keys, open_paths=frozenset(open_paths))

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health(request: Request) -> JSONResponse:
        status = request.app.state.client.status
        code = 200 if status is Status.READY else 503
        return JSONResponse({"status": status.value}, status_code=code)

    @app.get("/info")
    async def info(request: Request) -> JSONResponse:
        return JSONResponse(_info(request))

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        return Response(
            request.app.state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    return app


def _count_error(metrics: Metrics, request: Request, error: ApiError) -> None:
    if request.url.path in ("/generate", "/generate_stream", "/", "/v1/completions", "/v1/chat/completions"):
        metrics.count(getattr(request.state, "adapter_id", None), error.error_type)


async def _load(client: EngineClient, on_load_failure: Callable[[str], None] | None) -> None:
    """Build the engine; a failure goes to `on_load_failure` (the CLI prints it as it exits) or, with
    no one to report it, to the log: once either way."""
    await client.load()
    if not client.load_error:
        return
    if on_load_failure is not None:
        on_load_failure(client.load_error)
    else:
        logger.error("the engine failed to start: %s", client.load_error)


# TGI's and LoRAX's /info fields for things this server does not have (no hub lookup, no build
# stamps, no waiting-ratio batching, no validation worker pool, no cap on prompts per request,
# no request logger, no eager-prefill switch): present, as their clients expect, and null.
_NOT_APPLICABLE = (
    "model_sha", "model_pipeline_tag", "waiting_served_ratio", "max_waiting_tokens",
    "validation_workers", "max_client_batch_size", "request_logger_url", "eager_prefill",
)  # fmt: skip


def _info(http_request: Request) -> dict:
    client: EngineClient = http_request.app.state.client
    body: dict = {
        "status": client.status.value,
        "router": "loraplex",
        "version": package_version(),
        "sha": None,
        "docker_label": None,
    }
    engine = client.engine
    if engine is None:
        return body
    info = engine.info
    body.update(dict.fromkeys(_NOT_APPLICABLE))
    body.update(
        model_id=info.model_id,
        model_path=info.model_path,
        architecture=info.architecture,
        model_dtype=info.dtype,
        model_device_type=info.device.split(":")[0],
        device=info.device,
        max_input_length=info.limits.max_input_length,
        max_input_tokens=info.limits.max_input_length,  # TGI's newer name
        max_total_tokens=info.limits.max_total_tokens,
        max_best_of=MAX_BEST_OF,
        max_batch_total_tokens=info.kv_cache_tokens,
        max_batch_prefill_tokens=info.max_batch_prefill_tokens,
        max_batch_size=info.max_batch_size,
        max_concurrent_requests=client.max_concurrent_requests,
        max_stop_sequences=info.max_stop_sequences,
        block_size=info.block_size,
        kv_cache_blocks=info.num_kv_blocks,
        vocab_size=info.vocab_size,
        max_active_adapters=info.adapter_slots,
        max_lora_rank=info.max_lora_rank,
        cuda_graphs=info.cuda_graphs,
        gil_switch_interval_ms=round(sys.getswitchinterval() * 1000, 6),
        event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0],  # uvloop or asyncio
        http_protocol=getattr(http_request.app.state, "http_protocol", None),  # set by `serve`
        adapters=engine.adapters.tier_counts(),
    )
    return body
