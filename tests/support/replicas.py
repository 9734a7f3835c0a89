"""Real replica processes (`python -m scheduler.cli run`) for process and chaos tests.

Each replica logs JSON lines to its own file and runs `tests.support.recording_jobs`
unless told otherwise. Helpers read the leader from Redis and the run files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from scheduler.devredis import free_port
from tests.support.waiting import wait_for

__all__ = ["REPO", "Fleet", "ReplicaProc", "wait_for"]

REPO = Path(__file__).resolve().parents[2]


class ReplicaProc:
    """`python -m <module> run` (the CLI, or `tests.chaos.clockskew` for a jumpable wall clock)."""

    def __init__(
        self, name: str, env: dict[str, str], workdir: Path, http: bool = True, *, module: str = "scheduler.cli"
    ) -> None:
        self.name = name
        self.workdir = workdir
        self.module = module
        self.http_port = free_port() if http else 0
        self.env = {**env, "LIGHTSCHED_REPLICA_ID": name, "LIGHTSCHED_HTTP_PORT": str(self.http_port),
                    "LIGHTSCHED_HTTP_HOST": "127.0.0.1", "LIGHTSCHED_LOG_FORMAT": "json"}
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ReplicaProc:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, "run"],
            env=self.env, cwd=str(REPO), stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(10)

    def stop(self, timeout_s: float = 20) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

    def logs(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                lines.append({"raw": raw})
        return lines

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.logs() if line.get("event") == name]

    def health(self, path: str = "/healthz") -> tuple[int, Any]:
        import httpx

        r = httpx.get(f"http://127.0.0.1:{self.http_port}{path}", timeout=5)
        return r.status_code, (r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text)


class Fleet:
    """N replicas on one Redis with one key prefix, all recording their runs."""

    def __init__(self, redis_url: str, workdir: Path, n: int = 3, *, prefix: str = "lightsched",
                 ttl_s: float = 2.0, deadline_s: float = 1.2, retry_s: float = 0.3, interval_s: float = 0.5,
                 run_s: float = 0.05, extra_env: dict[str, str] | None = None, http: bool = True) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.workdir = workdir
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LIGHTSCHED_", "OTEL_"))}
        env.update({
            "PYTHONPATH": str(REPO),
            "LIGHTSCHED_REDIS_URL": redis_url,
            "LIGHTSCHED_KEY_PREFIX": prefix,
            "LIGHTSCHED_LEASE_TTL": str(ttl_s),
            "LIGHTSCHED_RENEW_DEADLINE": str(deadline_s),
            "LIGHTSCHED_RETRY_PERIOD": str(retry_s),
            "LIGHTSCHED_MISFIRE_GRACE_TIME": str(max(10.0, ttl_s + retry_s + 5)),
            "LIGHTSCHED_DRAIN_TIMEOUT": "5",
            "LIGHTSCHED_JOBS": "tests.support.recording_jobs:registry",
            "LIGHTSCHED_RECORDING_DIR": str(workdir),
            "LIGHTSCHED_RECORDING_INTERVAL_S": str(interval_s),
            "LIGHTSCHED_RECORDING_RUN_S": str(run_s),
        })
        env.update(extra_env or {})
        self.env = env
        self.replicas = [ReplicaProc(f"r{i}", env, workdir, http=http) for i in range(n)]
        self.client = redis.Redis.from_url(redis_url, socket_timeout=5)

    def __enter__(self) -> Fleet:
        for r in self.replicas:
            r.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def stop_all(self) -> None:
        for r in self.replicas:
            if r.proc is not None and r.proc.poll() is None:
                r.signal(signal.SIGCONT)
                r.signal(signal.SIGTERM)
        for r in self.replicas:
            r.stop()
        self.client.close()

    def by_name(self, name: str) -> ReplicaProc:
        return next(r for r in self.replicas if r.name == name)

    def leader_record(self) -> dict[str, Any] | None:
        try:
            raw = self.client.get("{" + self.prefix + "}:leader")
        except redis.RedisError:
            return None
        return json.loads(raw) if raw else None

    def wait_for_leader(self, timeout_s: float = 30, exclude: set[str] | None = None) -> ReplicaProc:
        def found() -> ReplicaProc | None:
            rec = self.leader_record()
            if rec and rec["replica_id"] not in (exclude or set()):
                return self.by_name(rec["replica_id"])
            return None

        return wait_for(found, timeout_s, what="a leader")

    def runs(self) -> list[dict[str, Any]]:
        out = []
        for path in sorted(self.workdir.glob("runs-*.jsonl")):
            for raw in path.read_text().splitlines():
                if raw.strip():
                    out.append(json.loads(raw))
        return sorted(out, key=lambda r: (r["slot_ms"], r["start"]))

    def wait_for_runs(self, n: int, timeout_s: float = 30, where: Callable[[dict[str, Any]], bool] = lambda r: True) -> list[dict[str, Any]]:
        return wait_for(lambda: (lambda rs: rs if len(rs) >= n else None)([r for r in self.runs() if where(r)]),
                        timeout_s, interval_s=0.05, what=f"{n} runs")

    def unhandled_errors(self) -> list[str]:
        """Log lines that show an unhandled exception (tracebacks, ERROR level)."""
        bad = []
        for r in self.replicas:
            for line in r.logs():
                if "raw" in line and "Traceback" in line["raw"]:
                    bad.append(f"{r.name}: {line['raw']}")
                elif line.get("level") in ("ERROR", "CRITICAL"):
                    bad.append(f"{r.name}: {line}")
        return bad
