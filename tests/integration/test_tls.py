"""TLS: a TLS-only redis-server with a throwaway CA and certificates made by
the test (`trustme`). Skipped, with the reason, when the binary lacks TLS.

Shows: rediss:// with the CA (and a client certificate, when the server
demands one) works; with another CA the failure is one line naming TLS
verification.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from scheduler.connection import make_client
from scheduler.errors import describe_redis_error
from scheduler.settings import Settings
from tests.support.redis_servers import redis_binary
from tests.support.topologies import TlsFiles, TlsRedis, binary_supports_tls, make_tls_files

pytestmark = pytest.mark.anyio


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[TlsRedis, TlsFiles, TlsFiles]]:
    binary = redis_binary()
    if binary is None:
        pytest.skip("no redis-server binary")
    ok, reason = binary_supports_tls(binary)
    if not ok:
        pytest.skip(reason)
    files = make_tls_files(tmp_path / "good")
    other = make_tls_files(tmp_path / "other", name="other")
    server = TlsRedis(binary, files, require_client_cert=True).start()
    try:
        yield server, files, other
    finally:
        server.stop()


async def test_rediss_with_the_ca_and_a_client_certificate(tls_server: tuple[TlsRedis, TlsFiles, TlsFiles]) -> None:
    server, files, _ = tls_server
    settings = Settings(
        redis_url=server.url,
        redis_tls_ca_file=files.ca,
        redis_tls_cert_file=files.client_cert,
        redis_tls_key_file=files.client_key,
    )
    client = make_client(settings, "cli")
    try:
        assert await client.set("{t}:tls", "1")
        assert await client.get("{t}:tls") == b"1"
    finally:
        await client.aclose()


async def test_a_wrong_ca_is_one_tls_line(tls_server: tuple[TlsRedis, TlsFiles, TlsFiles]) -> None:
    server, _files, other = tls_server
    settings = Settings(
        redis_url=server.url,
        redis_tls_ca_file=other.ca,
        redis_tls_cert_file=other.client_cert,
        redis_tls_key_file=other.client_key,
    )
    client = make_client(settings, "cli")
    try:
        with pytest.raises(Exception) as info:
            await client.ping()
    finally:
        await client.aclose()
    line = describe_redis_error(info.value, settings)
    assert "\n" not in line
    assert line.startswith("TLS verification of the Redis server at 127.0.0.1:"), line


async def test_plain_redis_against_a_tls_port_is_one_line(tls_server: tuple[TlsRedis, TlsFiles, TlsFiles]) -> None:
    server, _files, _ = tls_server
    settings = Settings(redis_url=f"redis://127.0.0.1:{server.port}/0", redis_socket_timeout=1.0)
    client = make_client(settings, "cli")
    try:
        with pytest.raises(Exception) as info:
            await client.ping()
    finally:
        await client.aclose()
    line = describe_redis_error(info.value, settings)
    assert "\n" not in line and line.startswith(("lost or could not", "Redis at", "TLS")), line
