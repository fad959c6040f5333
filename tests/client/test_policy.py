"""The retry policy and the error mapping on their own, without a server."""

from __future__ import annotations

import random
from datetime import datetime, timezone

import httpx
import pytest

from loraplex.client import (
    AdapterError,
    AdapterLoadError,
    AdapterNotFoundError,
    APIStatusError,
    AuthenticationError,
    GenerationError,
    InternalServerError,
    NotFoundError,
    OverloadedError,
    RequestTimeoutError,
    RetryPolicy,
    UnavailableError,
    ValidationError,
)
from loraplex.client.errors import error_class
from loraplex.client.retry_after import parse_retry_after

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("3", 3.0),
        (" 0.25 ", 0.25),
        ("-4", 0.0),
        ("Thu, 01 Jan 2026 12:00:07 GMT", 7.0),
        ("Thu, 01 Jan 2026 11:59:00 GMT", 0.0),
        ("soon", None),
        ("nan", None),
        (None, None),
    ],
)
def test_parse_retry_after(header, seconds):
    assert parse_retry_after(header, now=NOW) == seconds


def test_backoff_doubles_with_jitter_in_its_upper_half_and_is_capped():
    policy = RetryPolicy(backoff=0.5, max_backoff=3.0, rng=random.Random(0))
    for retry, ceiling in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 3.0), (10, 3.0)]:
        delays = [policy.backoff_delay(retry) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 4  # jittered, not constant


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (httpx.ConnectError("refused"), True),
        (httpx.ConnectTimeout("slow connect"), True),
        (httpx.PoolTimeout("pool"), True),
        (httpx.RemoteProtocolError("closed"), True),
        (httpx.ReadError("reset"), True),
        (httpx.WriteError("broken pipe"), True),
        (httpx.ReadTimeout("slow answer"), False),
        (httpx.UnsupportedProtocol("ftp"), False),
    ],
)
def test_which_transport_errors_are_retried(error, retried):
    assert RetryPolicy().retries_error(error) is retried
    assert RetryPolicy(retry_read_timeouts=True).retries_error(error) is (
        retried or isinstance(error, httpx.ReadTimeout)
    )


def test_negative_settings_are_refused():
    with pytest.raises(ValueError):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ValueError):
        RetryPolicy(backoff=-0.1)


@pytest.mark.parametrize(
    ("status", "error_type", "cls"),
    [
        (422, "validation", ValidationError),
        (400, None, ValidationError),
        (404, "validation", NotFoundError),  # the status decides the family
        (424, "adapter_not_found", AdapterNotFoundError),
        (424, "adapter_something_new", AdapterError),
        (424, "generation", GenerationError),
        (424, None, GenerationError),
        (401, "authentication", AuthenticationError),
        (429, "overloaded", OverloadedError),
        (503, "unavailable", UnavailableError),
        (504, "request_timeout", RequestTimeoutError),
        (502, None, InternalServerError),
        (418, None, APIStatusError),
        # error events inside a stream have no status: the error_type stands for one
        (None, "generation", GenerationError),
        (None, "adapter_load_failed", AdapterLoadError),
        (None, "overloaded", OverloadedError),
        (None, "request_timeout", RequestTimeoutError),
        (None, "validation", ValidationError),
        (None, "mystery", GenerationError),
    ],
)
def test_error_mapping(status, error_type, cls):
    assert error_class(status, error_type) is cls
