"""Why an adapter cannot be served. Each error carries the HTTP status and error_type a client sees."""

from __future__ import annotations


class AdapterError(Exception):
    status = 424
    error_type = "adapter_load_failed"

    def __init__(self, adapter_id: str, message: str):
        super().__init__(f"adapter {adapter_id!r}: {message}")
        self.adapter_id = adapter_id


class AdapterIdError(AdapterError):
    """The id itself is unacceptable (escapes the adapter roots, malformed): refused before queueing."""

    status = 422
    error_type = "validation"


class AdapterNotFoundError(AdapterError):
    error_type = "adapter_not_found"


class UnsupportedAdapterError(AdapterError):
    """The adapter would change outputs in a way we don't implement, or does not fit the base model."""

    error_type = "adapter_unsupported"


class AdapterReadError(AdapterError):
    """Files that can't be read: unreadable, truncated, not safetensors."""

    error_type = "adapter_load_failed"
