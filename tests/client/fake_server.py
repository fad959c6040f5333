"""A scriptable HTTP/1.1 server on 127.0.0.1 for the client's retry tests: plain asyncio, so that it can
also reset or drop connections, stall, and break a stream mid-way.

Each path answers from its script (a queue of `Reply`) and, once that is used up, with its default:
a successful answer in the server's wire format. Every request is recorded in `hits`.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any


@dataclass
class Reply:
    """One scripted answer.

    drop: "reset" (TCP RST) or "close" (FIN) instead of any answer.
    delay: seconds to wait before answering.
    events: answer 200 as server-sent events (chunked): each dict is sent as `data:{json}`, each str
        as is; a float in the list is a pause of that many seconds. Then `break_stream` ("reset",
        "close" or None) ends the body abruptly instead of properly.
    """

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: str | None = None
    events: list[Any] | None = None
    break_stream: str | None = None


@dataclass
class Hit:
    method: str
    path: str
    headers: dict[str, str]
    json: Any


def error(status: int, message: str, error_type: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, {"error": message, "error_type": error_type}, headers or {})


def token_event(text: str, index: int = 0, final_text: str | None = None, details: bool = False) -> dict:
    event = {
        "token": {"id": 100 + index, "text": text, "logprob": -0.5, "special": False},
        "generated_text": final_text,
        "details": None,
    }
    if final_text is not None and details:
        event["details"] = {
            "finish_reason": "length",
            "prompt_tokens": 3,
            "generated_tokens": index + 1,
            "seed": None,
        }
    return event


STREAM_EVENTS = [token_event("Hello", 0), token_event(" world", 1, final_text="Hello world", details=True)]


def chat_completion(text: str = "Hi there", model: str = "") -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }


def chat_chunks(pieces: list[str]) -> list[Any]:
    chunks: list[Any] = []
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        choice = {"index": 0, "delta": {"content": piece}, "finish_reason": "length" if last else None}
        chunks.append(
            {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "", "choices": [choice]}
        )
    return [*chunks, "data: [DONE]\n\n"]


def _defaults() -> dict[tuple[str, str], Reply]:
    adapter = {"adapter_id": "a", "adapter_source": "local", "tier": "gpu", "rank": 8, "bytes": 1024,
               "last_used": "2026-01-01T00:00:00+00:00", "requests": 2, "running": 0, "load_seconds": 0.1,
               "status": "loaded"}  # fmt: skip
    return {
        ("POST", "/generate"): Reply(
            body={"generated_text": "Hello world"},
            headers={
                "x-adapter-id": "",
                "x-compute-time": "0.012",
                "x-prompt-tokens": "3",
                "x-generated-tokens": "2",
            },
        ),
        ("POST", "/generate_stream"): Reply(events=STREAM_EVENTS),
        ("POST", "/v1/chat/completions"): Reply(body=chat_completion()),
        ("GET", "/adapters"): Reply(body={"adapters": [adapter], "gpu_slots": 4, "cpu_capacity": 16}),
        ("POST", "/adapters/load"): Reply(body=adapter),
        ("POST", "/adapters/unload"): Reply(body={**adapter, "tier": "disk"}),
        ("GET", "/health"): Reply(body={"status": "ready"}),
        ("GET", "/info"): Reply(
            body={"status": "ready", "model_id": "tiny", "version": "0.1.0", "extra_field": 7}
        ),
    }


class FakeServer:
    """Start with `start()` (it runs its own event loop on a thread); `stop()` ends everything."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self._scripts: dict[tuple[str, str], deque[Reply]] = {}
        self._defaults = _defaults()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, path: str, *replies: Reply, method: str = "POST") -> None:
        self._scripts.setdefault((method, path), deque()).extend(replies)

    def set_default(self, path: str, reply: Reply, method: str = "POST") -> None:
        self._defaults[(method, path)] = reply

    def reset(self) -> None:
        self.hits.clear()
        self._scripts.clear()
        self._defaults = _defaults()

    def count(self, path: str) -> int:
        return sum(1 for hit in self.hits if hit.path == path)

    def start(self) -> FakeServer:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._connection, "127.0.0.1", 0), self._loop
        ).result(5)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection is to be closed."""
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, _ = request_line.split(" ", 2)
        headers = dict(
            (name.strip().lower(), value.strip())
            for name, _, value in (h.partition(":") for h in header_lines if h)
        )
        raw = await reader.readexactly(int(headers.get("content-length", "0")))
        self.hits.append(Hit(method, target, headers, json.loads(raw) if raw else None))
        reply = self._next_reply(method, target)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.drop:
            _drop(writer, reply.drop)
            return False
        if reply.events is not None:
            await _stream(writer, reply)
            return False
        _respond(writer, reply.status, reply.body, reply.headers)
        await writer.drain()
        return True

    def _next_reply(self, method: str, path: str) -> Reply:
        queue = self._scripts.get((method, path))
        if queue:
            return queue.popleft()
        return self._defaults.get((method, path)) or Reply(
            404, {"error": "Not Found", "error_type": "not_found"}
        )


def _drop(writer: asyncio.StreamWriter, how: str) -> None:
    if how == "reset":
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    else:
        writer.close()


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _respond(writer: asyncio.StreamWriter, status: int, body: Any, headers: dict[str, str]) -> None:
    if isinstance(body, str):
        payload, kind = body.encode(), "text/html"
    else:
        payload, kind = json.dumps(body).encode(), "application/json"
    all_headers = {"content-type": kind, "content-length": str(len(payload)), **headers}
    writer.write(_head(status, all_headers) + payload)


async def _stream(writer: asyncio.StreamWriter, reply: Reply) -> None:
    headers = {"content-type": "text/event-stream", "transfer-encoding": "chunked", "connection": "close"}
    writer.write(_head(200, {**headers, **reply.headers}))
    for item in reply.events:
        if isinstance(item, float):
            await writer.drain()
            await asyncio.sleep(item)
            continue
        text = item if isinstance(item, str) else f"data:{json.dumps(item)}\n\n"
        data = text.encode()
        writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    await writer.drain()
    if reply.break_stream:
        _drop(writer, reply.break_stream)
        return
    writer.write(b"0\r\n\r\n")
    await writer.drain()
