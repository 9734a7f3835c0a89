"""One elector in a real process, for fault tests and the lease benchmark; plus
the helpers the elector tests share.

Run: `python -m tests.support.elector_proc --url URL --prefix P --replica-id R
[--ttl S --deadline S --retry S --act-interval S]`.

Prints one JSON object per line on stdout, each with `e` (what happened) and
`mono` (SystemClock monotonic seconds, CLOCK_BOOTTIME on Linux, comparable
across processes on one host): `ready`, `started` (token), `stopped` (token,
reason, `until`: when the belief ended, earlier than `mono` after a stall),
`observed` (replica_id or null), `handoff` (token), `act` (token: the
replica checked `is_leader()` and would run a job now), `releasing`, `released` (ok).
Reads commands on stdin: `release` (step down gracefully), `quit`.

Guarantees: an `act` line is printed only while `is_leader()` is True at the
moment of printing. Does not guarantee: anything after SIGKILL.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from pydantic import SecretStr

from leader import (
    ElectionEvent,
    Elector,
    HandoffRequested,
    Identity,
    LeaderObserved,
    LeaseKeys,
    LeaseTimings,
    RedisLeaseStore,
    StartedLeading,
    StoppedLeading,
    SystemClock,
)
from scheduler.connection import RedisConnectionSettings, make_client

CLOCK = SystemClock()


def make_store(url: str, prefix: str) -> RedisLeaseStore:
    """A lease store on its own `lease` client, as the scheduler builds it."""
    conn = RedisConnectionSettings(redis_url=SecretStr(url), redis_socket_timeout=5.0)
    return RedisLeaseStore(make_client(conn, "lease"), LeaseKeys(prefix))


def make_elector(url: str, prefix: str, replica_id: str, timings: LeaseTimings) -> Elector:
    identity = Identity(replica_id=replica_id, host=socket.gethostname(), pid=os.getpid())
    return Elector(make_store(url, prefix), identity, timings)


def event_record(event: ElectionEvent) -> dict[str, Any] | None:
    """The JSON line for an election event, or None for the ones not printed."""
    now = CLOCK.monotonic()
    if isinstance(event, StartedLeading):
        return {"e": "started", "token": event.term.token, "mono": now}
    if isinstance(event, StoppedLeading):
        # `until`: when the belief ended; later than `mono` never, earlier after a stall.
        until = min(now, event.term.valid_until())
        return {"e": "stopped", "token": event.term.token, "reason": event.reason.value, "mono": now, "until": until}
    if isinstance(event, HandoffRequested):
        return {"e": "handoff", "token": event.term.token, "mono": now}
    if isinstance(event, LeaderObserved):
        return {"e": "observed", "replica_id": event.holder.replica_id if event.holder else None, "mono": now}
    return None


@dataclass
class Recorder:
    """Collects one in-process elector's events with the monotonic time they arrived."""

    name: str
    events: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, event: ElectionEvent) -> None:
        record = event_record(event)
        if record is not None:
            self.events.append(record | {"who": self.name})

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["e"] == kind]


def terms(records: list[dict[str, Any]]) -> list[tuple[float, float, str]]:
    """(start, end, who) intervals of belief in leading, from started/stopped records
    (a stop ends the belief at its `until`); open terms end at +inf."""
    out: list[tuple[float, float, str]] = []
    open_: dict[str, float] = {}
    for r in sorted(records, key=lambda r: r["mono"]):
        if r["e"] == "started":
            assert r["who"] not in open_, f"{r['who']} started twice without stopping"
            open_[r["who"]] = r["mono"]
        elif r["e"] == "stopped":
            out.append((open_.pop(r["who"]), r["until"], r["who"]))
    out.extend((start, float("inf"), who) for who, start in open_.items())
    return sorted(out)


def assert_no_overlap(intervals: list[tuple[float, float, str]]) -> None:
    for (s1, e1, w1), (s2, _e2, w2) in zip(intervals, intervals[1:], strict=False):
        assert e1 <= s2, f"terms overlap: {w1} [{s1:.3f}, {e1:.3f}] and {w2} from {s2:.3f}"


async def wait_for(cond: Callable[[], object], timeout_s: float, interval_s: float = 0.01) -> None:
    """Poll `cond` until it is truthy; TimeoutError naming the condition after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout_s}s: {getattr(cond, '__name__', cond)}")
        await anyio.sleep(interval_s)


class ElectorProcess:
    """The parent's handle on one `elector_proc` child: start, read events, signal."""

    def __init__(self, url: str, prefix: str, replica_id: str, timings: LeaseTimings, act_interval_s: float = 0) -> None:
        self.replica_id = replica_id
        args = [
            sys.executable, "-m", "tests.support.elector_proc",
            "--url", url, "--prefix", prefix, "--replica-id", replica_id,
            "--ttl", str(timings.ttl_s), "--deadline", str(timings.renew_deadline_s),
            "--retry", str(timings.retry_period_s), "--act-interval", str(act_interval_s),
        ]  # fmt: skip
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.proc = subprocess.Popen(
            args, cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self.events: list[dict[str, Any]] = []
        self._buf = ""
        os.set_blocking(self.proc.stdout.fileno(), False)  # type: ignore[union-attr]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll_events(self) -> list[dict[str, Any]]:
        """Read whatever lines the child printed so far (non-blocking)."""
        assert self.proc.stdout is not None
        try:
            chunk = self.proc.stdout.read()
        except (BlockingIOError, TypeError):
            chunk = None
        if chunk:
            self._buf += chunk
            *lines, self._buf = self._buf.split("\n")
            self.events.extend(json.loads(line) | {"who": self.replica_id} for line in lines if line)
        return self.events

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.poll_events() if e["e"] == kind]

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


@contextmanager
def spawned(*procs: ElectorProcess) -> Iterator[None]:
    """Stops every child however the block ends."""
    try:
        yield
    finally:
        for p in procs:
            p.stop()


# -- the child -------------------------------------------------------------


def _print(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


async def _commands(elector: Elector, done: anyio.Event) -> None:
    fd = sys.stdin.fileno()
    os.set_blocking(fd, False)
    buf = b""
    while True:
        await anyio.wait_readable(fd)
        chunk = os.read(fd, 4096)
        if not chunk:
            done.set()
            return
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            command = line.decode().strip()
            if command == "release":
                _print({"e": "releasing", "mono": CLOCK.monotonic()})
                ok = await elector.release()
                _print({"e": "released", "ok": ok, "mono": CLOCK.monotonic()})
            elif command == "quit":
                done.set()
                return


async def _act(elector: Elector, interval_s: float) -> None:
    while True:
        await anyio.sleep(interval_s)
        term = elector.current_term()
        if term is not None:
            _print({"e": "act", "token": term.token, "mono": CLOCK.monotonic()})


async def _main(ns: argparse.Namespace) -> None:
    timings = LeaseTimings(ns.ttl, ns.deadline, ns.retry)
    elector = make_elector(ns.url, ns.prefix, ns.replica_id, timings)

    def on_event(event: ElectionEvent) -> None:
        record = event_record(event)
        if record is not None:
            _print(record)

    elector.subscribe(on_event)
    done = anyio.Event()
    async with anyio.create_task_group() as tg:
        await tg.start(elector.run)
        tg.start_soon(_commands, elector, done)
        if ns.act_interval > 0:
            tg.start_soon(_act, elector, ns.act_interval)
        _print({"e": "ready", "mono": CLOCK.monotonic()})
        await done.wait()
        tg.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--replica-id", required=True)
    parser.add_argument("--ttl", type=float, default=15.0)
    parser.add_argument("--deadline", type=float, default=10.0)
    parser.add_argument("--retry", type=float, default=2.0)
    parser.add_argument("--act-interval", type=float, default=0.0)
    anyio.run(_main, parser.parse_args(argv))


if __name__ == "__main__":
    main()
