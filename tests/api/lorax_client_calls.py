"""Calls through LoRAX's own Python client (`lorax-client`), printed as JSON for test_lorax_client.py.

This runs in a separate environment, not the test suite's: lorax-client pins huggingface-hub < 1
and certifi, which transformers 5 cannot share. Only the standard library and `lorax` are imported.

    python lorax_client_calls.py URL calls      every call of the scenario below
    python lorax_client_calls.py URL one        one generate through AsyncClient (the sync client
                                                retries 429 by itself, for up to a minute)

Each call's result is the client's parsed object (`model_dump`), or {"raised": class, "message": str}.
"""

from __future__ import annotations

import asyncio
import json
import sys

from lorax import AsyncClient, Client

ADAPTERS = ("upper", "reverse", "rot13", None)


def outcome(call) -> dict:
    try:
        result = call()
    except Exception as error:  # noqa: BLE001 - the class the client raised is the result
        return {"raised": type(error).__name__, "message": str(error)}
    if isinstance(result, list):
        return {"events": [event.model_dump(mode="json") for event in result]}
    return result.model_dump(mode="json")


async def async_calls(url: str) -> dict:
    client = AsyncClient(url, timeout=60)
    replies = await asyncio.gather(
        *(client.generate("good morning", adapter_id=name, max_new_tokens=32) for name in ADAPTERS)
    )
    events = [event async for event in client.generate_stream("good morning", adapter_id="reverse")]
    return {
        "generate": [reply.model_dump(mode="json") for reply in replies],
        "stream": [event.model_dump(mode="json") for event in events],
    }


def calls(url: str, local_path: str) -> dict:
    client = Client(url, timeout=60)
    detailed = dict(max_new_tokens=32, details=True, decoder_input_details=True, return_k_alternatives=2)
    return {
        "generate": {
            str(name): outcome(lambda name=name: client.generate("hello world", adapter_id=name, **detailed))
            for name in ADAPTERS
        },
        "stream": {
            str(name): outcome(lambda name=name: list(client.generate_stream("hello world", adapter_id=name)))
            for name in ADAPTERS
        },
        "local_source": outcome(
            lambda: client.generate("hello world", adapter_id=local_path, adapter_source="local")
        ),
        "sampled": outcome(
            lambda: client.generate(
                "hello world",
                adapter_id="upper",
                do_sample=True,
                temperature=0.5,
                top_k=3,
                seed=7,
                details=True,
            )
        ),
        "too_long": outcome(lambda: client.generate("word " * 2000, adapter_id="upper")),
        "unknown_adapter": outcome(lambda: client.generate("hello", adapter_id="no-such-adapter")),
        "unknown_adapter_stream": outcome(
            lambda: list(client.generate_stream("hello", adapter_id="no-such-adapter"))
        ),
        "async": asyncio.run(async_calls(url)),
    }


if __name__ == "__main__":
    url, what = sys.argv[1], sys.argv[2]
    if what == "calls":
        print(json.dumps(calls(url, sys.argv[3])))
    else:
        print(json.dumps(outcome(lambda: asyncio.run(AsyncClient(url, timeout=60).generate("hello world")))))
