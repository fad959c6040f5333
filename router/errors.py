"""Errors a client can cause, in LoRAX's shape: {"error": str, "error_type": str} with its status codes."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

VALIDATION = "validation"
OVERLOADED = "overloaded"
GENERATION = "generation"
UNAVAILABLE = "unavailable"


class ApiError(Exception):
    """Raised anywhere in a handler; becomes a JSON error response with `status`."""

    def __init__(self, status: int, message: str, error_type: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.headers = headers

    def body(self) -> dict[str, str]:
        return {"error": self.message, "error_type": self.error_type}


def error_status(error_type: str | None) -> int:
    """The status of an error the engine reported for a request."""
    if error_type == VALIDATION:
        return 422
    if error_type == OVERLOADED:
        return 429
    return 424


def validation_error(message: str) -> ApiError:
    return ApiError(422, message, VALIDATION)


def error_response(status: int, message: str, error_type: str, headers=None) -> JSONResponse:
    return JSONResponse({"error": message, "error_type": error_type}, status_code=status, headers=headers)


def _describe(errors: list[dict]) -> str:
    parts = []
    for error in errors:
        location = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(
            f"{location}: {error.get('msg', 'invalid')}" if location else error.get("msg", "invalid")
        )
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI, on_api_error=None) -> None:
    """Every error as {"error", "error_type"}; `on_api_error(request, error)` sees each one (metrics)."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        if on_api_error is not None:
            on_api_error(request, error)
        return error_response(error.status, error.message, error.error_type, error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
        return await api_error(request, validation_error(_describe(error.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        error_type = {404: "not_found", 405: "method_not_allowed"}.get(
            error.status_code, VALIDATION if error.status_code < 500 else "internal"
        )
        return error_response(
            error.status_code, str(error.detail), error_type, getattr(error, "headers", None)
        )

    @app.exception_handler(Exception)
    async def unexpected(_: Request, error: Exception) -> JSONResponse:
        return error_response(500, f"internal error: {type(error).__name__}: {error}", "internal")
