"""Adapter management routes: GET /adapters, POST /adapters/load, POST /adapters/unload."""

from __future__ import annotations

import asyncio
import datetime

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from loraplex.server.adapters.errors import AdapterError
from loraplex.server.adapters.manager import AdapterEntry

from .errors import ApiError

router = APIRouter()


class AdapterRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    adapter_id: str
    adapter_source: str | None = None


def describe(entry: AdapterEntry) -> dict:
    location = entry.location
    return {
        "adapter_id": location.adapter_id,
        "adapter_source": location.source,
        "tier": entry.tier,
        "rank": entry.rank or None,
        "bytes": entry.nbytes or None,
        "last_used": datetime.datetime.fromtimestamp(entry.last_used, datetime.timezone.utc).isoformat(),
        "requests": entry.requests,
        "running": entry.pins,
        "load_seconds": entry.load_seconds,
        "status": _status(entry),
    }


def _status(entry: AdapterEntry) -> str:
    if entry.future is not None:
        return "loading"
    if entry.error is not None:
        return "failed"
    return "unloaded" if entry.tier == "disk" else "loaded"


@router.get("/adapters")
async def list_adapters(request: Request) -> dict:
    engine = request.app.state.client.ready_engine()
    manager = engine.adapters
    return {
        "adapters": [describe(e) for e in manager.entries()],
        "gpu_slots": manager.slots.num_slots,
        "cpu_capacity": manager.cpu_capacity,
    }


def _locate(engine, body: AdapterRequest):
    try:
        return engine.adapters.locate(body.adapter_id, body.adapter_source)
    except AdapterError as error:
        raise ApiError(error.status, str(error), error.error_type) from error


@router.post("/adapters/load")
async def load_adapter(body: AdapterRequest, request: Request) -> dict:
    """Load into host memory (waiting for it), then into a GPU slot if one is free or evictable."""
    engine = request.app.state.client.ready_engine()
    location = _locate(engine, body)
    try:
        entry = await asyncio.to_thread(engine.adapters.wait_loaded, location)
    except AdapterError as error:
        engine.adapters.forget_failures()
        raise ApiError(error.status, str(error), error.error_type) from error
    activated = asyncio.get_running_loop().create_future()
    loop = asyncio.get_running_loop()
    engine.call_soon(
        lambda: loop.call_soon_threadsafe(activated.set_result, engine.adapters.activate_now(location))
    )
    await activated
    return describe(entry)


@router.post("/adapters/unload")
async def unload_adapter(body: AdapterRequest, request: Request) -> dict:
    engine = request.app.state.client.ready_engine()
    location = _locate(engine, body)
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def unload() -> None:
        try:
            result = engine.adapters.unload(location)
        except (KeyError, RuntimeError) as error:
            loop.call_soon_threadsafe(done.set_exception, error)
        else:
            loop.call_soon_threadsafe(done.set_result, result)

    engine.call_soon(unload)
    try:
        entry = await done
    except KeyError as error:
        raise ApiError(404, f"adapter {body.adapter_id!r} is not loaded", "adapter_not_loaded") from error
    except RuntimeError as error:
        raise ApiError(409, str(error), "adapter_in_use") from error
    return describe(entry)
