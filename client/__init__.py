"""Python client of a loraplex server (LoRAX / TGI wire format, plus its OpenAI chat route).

    from loraplex.client import Client

    client = Client("http://127.0.0.1:8080", api_key="...", max_retries=3, backoff=0.5)
    print(client.generate("Hello", adapter_id="my/adapter", max_new_tokens=20).generated_text)

`AsyncClient` has the same methods, awaited. Connection failures and 429/502/503/504 answers are
retried with exponential backoff and jitter, POST included, honoring Retry-After; a stream only until
its first event (see `loraplex.client.retry`). Failures raise a `LoraplexError` subclass.
"""

from .async_client import AsyncClient
from .base import DEFAULT_TIMEOUT
from .errors import (
    AdapterError,
    AdapterLoadError,
    AdapterNotFoundError,
    AdapterUnsupportedError,
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    ConflictError,
    GenerationError,
    InternalServerError,
    LoraplexError,
    NotFoundError,
    OverloadedError,
    RequestTimeoutError,
    ResponseDecodeError,
    ServerError,
    StreamInterruptedError,
    StreamTimeoutError,
    UnavailableError,
    ValidationError,
)
from .parameters import ChatParameters, GenerateParameters
from .retry import RetryPolicy
from .sync_client import Client
from .types import (
    AdapterInfo,
    AdapterList,
    AlternativeToken,
    BestOfSequence,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChatMessage,
    Details,
    GenerateResponse,
    Health,
    Info,
    PrefillToken,
    ResponseMeta,
    StreamDetails,
    StreamResponse,
    Token,
    Usage,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AdapterError",
    "AdapterInfo",
    "AdapterList",
    "AdapterLoadError",
    "AdapterNotFoundError",
    "AdapterUnsupportedError",
    "AlternativeToken",
    "AsyncClient",
    "AuthenticationError",
    "BestOfSequence",
    "ChatChoice",
    "ChatChunkChoice",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatDelta",
    "ChatMessage",
    "ChatParameters",
    "Client",
    "ConflictError",
    "Details",
    "GenerateParameters",
    "GenerateResponse",
    "GenerationError",
    "Health",
    "Info",
    "InternalServerError",
    "LoraplexError",
    "NotFoundError",
    "OverloadedError",
    "PrefillToken",
    "RequestTimeoutError",
    "ResponseDecodeError",
    "ResponseMeta",
    "RetryPolicy",
    "ServerError",
    "StreamDetails",
    "StreamInterruptedError",
    "StreamResponse",
    "StreamTimeoutError",
    "Token",
    "UnavailableError",
    "Usage",
    "ValidationError",
]
