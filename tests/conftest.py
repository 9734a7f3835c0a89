"""Shared fixtures: real Redis servers, never fakes.

- `redis_server`: a fresh throwaway server per test, with fault controls
  (stop, kill -9, SIGSTOP/SIGCONT, restart empty).
- `redis_url`: a server for tests that need no faults; shared across the
  session, or `LIGHTSCHED_TEST_REDIS_URL`. Each test gets its own `key_prefix`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests.support.redis_servers import EXTERNAL_URL_ENV, ServerLike, new_server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def redis_server() -> Iterator[ServerLike]:
    server = new_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def _shared_redis() -> Iterator[str]:
    external = os.environ.get(EXTERNAL_URL_ENV)
    if external:
        yield external
        return
    server = new_server()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_url(_shared_redis: str) -> str:
    return _shared_redis


@pytest.fixture
def key_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(autouse=True)
def _collect_garbage_per_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test that talks to servers, collect garbage, so an unclosed socket or
    stream is reported (filterwarnings=error) against the test that leaked it, not a
    later one. Unit tests open no sockets and skip the cost (~80 ms a collection)."""
    yield
    if request.node.path.parent.name in ("integration", "chaos"):
        import gc

        gc.collect()
