"""Chaos scenarios on a fleet of real replica processes, and the invariants checked after each.

`ChaosFleet` is a `tests.support.replicas.Fleet` whose replicas each reach
Redis through their own port of a `ChaosProxy` (so one replica can be
partitioned or delayed), run the recording job with coalescing off (every
slot within the misfire grace must run, so a lost slot shows as a hole in the
grid) and append each accepted write to a fenced audit stream. One replica can
be started under `tests.chaos.clockskew`, so its wall clock can be jumped.

Redis is one server, or a `tests.support.topologies.ReplicatedRedis` (a master
and a replica behind a cuttable replication link) with `WAIT_REPLICAS=1`: then
the proxy is the virtual IP that a failover moves (`ChaosProxy.retarget`), and
the faults that kill, pause or restart Redis act on the current master. With
`slow_sync` the replicas also run `slow`, a plain-function job longer than its
interval (`tests.support.recording_jobs`).

Each fault function injects one fault, waits (bounded) for the fleet to
recover, and returns what it measured. `check_invariants()` reads the run
files, the audit stream, the logs, the manual requests made and the health
endpoints, and reports:

- duplicates: a slot of a job whose run started twice (scheduled runs only;
  manual runs, `trigger: manual`, are outside the slot grid);
- overlaps: two runs of one job at once in one process (`pid`), manual runs
  included: tick runs, and slow runs from start until their thread returned;
- stale writes accepted: a fenced write accepted while the leader key held
  another lease both right before and right after it (the run's fence against
  the lease's identity, `<token>:<lease_id>`, not token numbers, which a lossy
  failover may repeat; a change between the write and one of the reads is a
  race, not a violation, counted as `stale_suspects`); and, authoritatively, in
  the audit stream (Redis' own order of accepted writes): an entry of an older
  token, of a slot not after the previous one, or of a lease that had already
  been succeeded by another writer;
- lost slots: holes in the tick slot grid not explained by (a) a claim whose
  run was cut short before its line was written (at-most-once: the next
  leader does not re-run a claimed slot): the leader was killed right after
  claiming, or a `job_run` did not succeed (fenced before it started), or the
  claim was still in flight when its leader stepped down (`runs_cancelled`;
  the runtime logs nothing else for such a slot), (b) a
  `slot_missed` line naming the slot (causes `unreplicated`, `clock_ahead`,
  `redis`), (c) a `slot_missed` count naming no slot (`late`, `no_leader`,
  `still_running`), matched only to holes older than the misfire grace when it
  was logged, (d) a Redis restart that lost the state. A lossy failover is not
  (d): with WAIT_REPLICAS=1 a claim that a replica acknowledged survives it,
  and one that no replica acknowledged did not run and is counted
  `unreplicated` (the next leader may then run that slot);
- manual requests: none run twice, and one that ended `done`/`success` has
  exactly one run on record;
- replicas not alive or not answering GET /healthz with 200;
- log lines of unhandled exceptions.

Does not check: exact takeover times (measured and printed; the targets live
in benchmarks/), or anything about jobs other than the recording jobs.
"""

from __future__ import annotations

import itertools
import json
import math
import signal
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import redis
import redis.asyncio as aioredis

from scheduler.devredis import RedisProcess
from scheduler.keys import Keyspace
from scheduler.requests import RequestStore
from tests.support.proxy import ChaosProxy, Link
from tests.support.replicas import Fleet, ReplicaProc, wait_for
from tests.support.topologies import ReplicatedRedis

from .clockskew import CLOCK_FILE_ENV

__all__ = [
    "ChaosFleet",
    "ChaosReplica",
    "InvariantReport",
    "check_invariants",
    "FAULTS",
]

#: States a manual request ends in (`scheduler.requests`); `running` is not one.
REQUEST_FINAL = ("done", "cancelled", "rejected")
#: `slot_missed` causes whose lines name their slot, and those that only count.
NAMED_CAUSES = ("unreplicated", "clock_ahead", "redis")
COUNTED_CAUSES = ("late", "no_leader", "still_running")


def log_ts(line: dict[str, Any]) -> float | None:
    """Epoch seconds of a JSON log line's `ts` (ISO 8601, ms, Z)."""
    ts = line.get("ts")
    if not isinstance(ts, str):
        return None
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def iso_ms(text: str) -> int:
    return round(datetime.fromisoformat(text).timestamp() * 1000)


class ChaosReplica(ReplicaProc):
    """A replica that can be restarted after a kill, optionally under a jumpable clock."""

    def __init__(self, name: str, env: dict[str, str], workdir: Path, *, module: str = "scheduler.cli") -> None:
        super().__init__(name, env, workdir, http=True, module=module)
        self.restarts = 0

    def start(self) -> ChaosReplica:
        if getattr(self, "_log", None) is not None and not self._log.closed:
            self._log.close()
        super().start()
        return self

    def restart(self) -> None:
        if self.alive:
            self.stop()
        self.restarts += 1
        self.start()


class ChaosFleet(Fleet):
    """A fleet behind a per-replica TCP proxy, with fault controls and an audit trail."""

    def __init__(
        self,
        server: RedisProcess | ReplicatedRedis,
        workdir: Path,
        n: int = 3,
        *,
        skew: str | None = None,
        ttl_s: float = 1.5,
        deadline_s: float = 1.0,
        retry_s: float = 0.25,
        interval_s: float = 0.5,
        run_s: float = 0.02,
        slow_sync: bool = False,
        slow_run_s: float = 2.0,
        slow_interval_s: float = 1.0,
        wait_timeout_ms: int = 200,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.topology = server if isinstance(server, ReplicatedRedis) else None
        self._server = server.master if isinstance(server, ReplicatedRedis) else server
        env = {
            "LIGHTSCHED_RECORDING_COALESCE": "false",
            "LIGHTSCHED_RECORDING_AUDIT": "1",
            "LIGHTSCHED_REDIS_SOCKET_TIMEOUT": "0.5",
            "LIGHTSCHED_DRAIN_TIMEOUT": "2",
        }
        if self.topology is not None:
            env |= {"LIGHTSCHED_WAIT_REPLICAS": "1", "LIGHTSCHED_WAIT_TIMEOUT_MS": str(wait_timeout_ms)}
        if slow_sync:
            env |= {"LIGHTSCHED_RECORDING_SLOW_SYNC": "1", "LIGHTSCHED_RECORDING_SLOW_RUN_S": str(slow_run_s),
                    "LIGHTSCHED_RECORDING_SLOW_INTERVAL_S": str(slow_interval_s)}
        env.update(extra_env or {})
        super().__init__(self._server.url, workdir, n, ttl_s=ttl_s, deadline_s=deadline_s, retry_s=retry_s,
                         interval_s=interval_s, run_s=run_s, extra_env=env)
        self.ttl_s, self.deadline_s, self.retry_s, self.interval_s = ttl_s, deadline_s, retry_s, interval_s
        self.grace_s = float(self.env["LIGHTSCHED_MISFIRE_GRACE_TIME"])
        self.socket_timeout_s = float(self.env["LIGHTSCHED_REDIS_SOCKET_TIMEOUT"])
        self.wait_replicas = int(self.env.get("LIGHTSCHED_WAIT_REPLICAS", "0"))
        self.slow_sync = slow_sync
        self.slow_run_s = slow_run_s
        self.proxy = ChaosProxy(self._server.host, self._server.port)
        self.clock_file = workdir / "clock-offset-s"
        self.clock_file.write_text("0")
        self.skew = skew
        replicas: list[ReplicaProc] = []
        for old in self.replicas:
            link = self.proxy.link(old.name)
            env_r = {**self.env, "LIGHTSCHED_REDIS_URL": link.url}
            module = "scheduler.cli"
            if old.name == skew:
                env_r[CLOCK_FILE_ENV] = str(self.clock_file)
                module = "tests.chaos.clockskew"
            replicas.append(ChaosReplica(old.name, env_r, workdir, module=module))
        self.replicas = replicas
        self.keys = Keyspace(self.prefix)
        # Redis restarts that lost every key: (epoch s it went down, epoch s it was back, empty)
        self.resets: list[tuple[float, float]] = []
        self.failovers: list[float] = []  # epoch s of lossy failovers (not resets: acknowledged writes survive)
        self.audit: dict[str, dict[str, Any]] = {}  # audit entries by stream id, kept across restarts
        self.audit_key = self.keys.data("tick", "audit")
        self.job_key = self.keys.job("tick")
        self.interrupted: set[int] = set()  # slots claimed by a leader that was then killed
        self.manual: dict[str, dict[str, Any]] = {}  # manual requests by number: id, job, final hash
        self._manual_seq = 0

    @property
    def redis_proc(self) -> RedisProcess:
        """The Redis the faults act on: the current master when replicated."""
        return self.topology.master if self.topology is not None else self._server

    def save_state(self) -> None:
        """What the invariants need besides the run files and logs, next to them (for a post-mortem)."""
        state = {"resets": self.resets, "failovers": self.failovers, "interrupted": sorted(self.interrupted),
                 "manual": self.manual}
        (self.workdir / "chaos-state.json").write_text(json.dumps(state, indent=1))

    def move_vip(self, master: RedisProcess) -> None:
        """After a failover: every replica's link (and this test's client) now reaches `master`."""
        self.proxy.retarget(master.host, master.port)
        self.client.close()
        self.client = redis.Redis(host=master.host, port=master.port, socket_timeout=5)

    def note_claimed_slot(self) -> None:
        """After killing a leader: its last claimed slot may never run (at-most-once)."""
        try:
            raw = self.client.hget(self.job_key, "last_slot_ms")
        except redis.RedisError:
            return
        if raw is not None:
            self.interrupted.add(int(raw))

    def stop_all(self) -> None:
        self.proxy.heal_all()
        super().stop_all()
        self.proxy.close()

    def link(self, name: str) -> Link:
        return self.proxy.links[name]

    def chaos_replicas(self) -> list[ChaosReplica]:
        return [r for r in self.replicas if isinstance(r, ChaosReplica)]

    def leader_record(self) -> dict[str, Any] | None:
        """The lease, when one of this fleet's replicas holds it (not a test's thief)."""
        rec = super().leader_record()
        if rec is None or rec.get("replica_id") not in {r.name for r in self.replicas}:
            return None
        return rec

    def leader_token(self) -> int | None:
        rec = self.leader_record()
        return int(rec["fencing_token"]) if rec else None

    def ensure_running(self) -> None:
        """Undo what a failed scenario may have left: heal links, SIGCONT, restart dead replicas."""
        self.proxy.heal_all()
        if self.topology is not None:
            self.topology.heal()
        if not self.redis_proc.running:
            self.redis_proc.start()
            self.resets.append((time.time(), time.time()))
        self.redis_proc.resume()
        for r in self.chaos_replicas():
            if r.alive:
                r.signal(signal.SIGCONT)
            else:
                r.restart()

    def wait_listeners(self, timeout_s: float = 30) -> None:
        """Every live replica subscribed to the handoff channel again (after a Redis restart
        they resubscribe with a backoff of up to 5 s; a request published before is heard by nobody)."""
        channel = "{" + self.prefix + "}:handoff"
        alive = sum(1 for r in self.replicas if r.alive)

        def subscribed() -> bool:
            try:
                return int(self.client.execute_command("PUBSUB", "NUMSUB", channel)[1]) >= alive
            except redis.RedisError:
                return False

        wait_for(subscribed, timeout_s, interval_s=0.05, what="every replica listening for handoffs")

    def request_handoff(self, token: int | None) -> None:
        """Ask the leader holding `token` to hand off, as `lightsched handoff` does: again every
        half second until it acknowledges (a request that arrives between its acquire and its
        reading of the reply, or while its listener resubscribes, is not heard), for up to 6 s."""
        self.wait_listeners()
        rec = self.leader_record()
        fence = f"{token}:{rec['lease_id']}" if rec and int(rec["fencing_token"]) == token else str(token)

        def heard() -> bool:
            ack = self.client.get(self.keys.handoff_ack())
            return (ack is not None and ack.decode() == fence) or self.leader_token() != token

        for _ in range(12):
            self.client.publish("{" + self.prefix + "}:handoff", fence)
            try:
                wait_for(heard, 0.5, interval_s=0.01, what="the leader to acknowledge the handoff")
                return
            except TimeoutError:
                continue

    def snapshot_audit(self) -> None:
        """Copy the audit stream before it can be lost (Redis restarted empty, a lossy failover)."""
        try:
            entries = self.client.xrange(self.audit_key)
        except redis.RedisError:
            return
        for entry_id, fields in entries:
            eid = entry_id.decode()
            self.audit[eid] = {k.decode(): v.decode() for k, v in fields.items()}

    def jump_clock(self, offset_s: float) -> None:
        """Set the skewed replica's wall clock to real time + offset_s (a step, at once)."""
        assert self.skew is not None
        self.clock_file.write_text(repr(offset_s))
        self.by_name(self.skew).signal(signal.SIGUSR2)

    def wait_new_leader(self, old_token: int | None, timeout_s: float = 30) -> tuple[ReplicaProc, int]:
        def found() -> tuple[ReplicaProc, int] | None:
            rec = self.leader_record()
            if rec and int(rec["fencing_token"]) != old_token:
                return self.by_name(rec["replica_id"]), int(rec["fencing_token"])
            return None

        return wait_for(found, timeout_s, interval_s=0.01, what="a new leader")

    def wait_runs_after(self, t_wall: float, n: int = 2, timeout_s: float = 30) -> list[dict[str, Any]]:
        """Wait for n scheduled runs that started after t_wall on a live leader's clock."""
        return self.wait_for_runs(n, timeout_s, where=lambda r: r["start"] > t_wall and r["trigger"] == "scheduled")

    def slow_lines(self) -> list[dict[str, Any]]:
        """Every line of the `slow` job's files (`phase` start or end)."""
        out = []
        for path in sorted(self.workdir.glob("slow-*.jsonl")):
            out += [json.loads(raw) for raw in path.read_text().splitlines() if raw.strip()]
        return out

    def event_ts(self, replica: str, event: str, **match: Any) -> list[float]:
        out = []
        for line in self.by_name(replica).events(event):
            if all(line.get(k) == v for k, v in match.items()):
                ts = log_ts(line)
                if ts is not None:
                    out.append(ts)
        return out

    def all_events(self, event: str) -> list[dict[str, Any]]:
        return [{**line, "replica": r.name} for r in self.replicas for line in r.events(event)]

    def missed_since(self, t_wall: float, cause: str, job_id: str = "tick") -> int:
        """Slots the replicas counted missed with `cause` since `t_wall` (log time, with a second's margin)."""
        return sum(int(e.get("count", 1)) for e in self.all_events("slot_missed")
                   if e.get("cause") == cause and e.get("job_id") == job_id and (log_ts(e) or 0) >= t_wall - 1)

    # -- manual requests -------------------------------------------------------

    def enqueue_requests(self, asks: list[tuple[str, dict[str, str]]]) -> list[str]:
        """Enqueue manual run requests (job id, params) as `lightsched run-job` does; their ids.
        Each gets a unique number `n` in its params, to find its runs."""
        numbered = []
        for job_id, params in asks:
            self._manual_seq += 1
            numbered.append((job_id, {**params, "n": str(self._manual_seq)}))

        async def enqueue() -> list[str]:
            client = aioredis.Redis(host=self.redis_proc.host, port=self.redis_proc.port, socket_timeout=5)
            try:
                store = RequestStore(client, self.keys)
                return [await store.enqueue(job_id, params, "chaos") for job_id, params in numbered]
            finally:
                await client.aclose()

        ids = anyio.run(enqueue)
        for request_id, (job_id, params) in zip(ids, numbered, strict=True):
            self.manual[params["n"]] = {"id": request_id, "job": job_id, "state": "pending"}
        return ids

    def request_states(self, ids: list[str]) -> dict[str, dict[str, str]]:
        async def read() -> dict[str, dict[str, str]]:
            client = aioredis.Redis(host=self.redis_proc.host, port=self.redis_proc.port, socket_timeout=5)
            try:
                store = RequestStore(client, self.keys)
                return {i: await store.get(i) for i in ids}
            finally:
                await client.aclose()

        return anyio.run(read)

    def cancel_request(self, request_id: str, reason: str) -> bool:
        async def cancel() -> bool:
            client = aioredis.Redis(host=self.redis_proc.host, port=self.redis_proc.port, socket_timeout=5)
            try:
                return await RequestStore(client, self.keys).cancel(request_id, reason)
            finally:
                await client.aclose()

        return anyio.run(cancel)


# -- invariants ----------------------------------------------------------------


@dataclass
class InvariantReport:
    runs: int = 0  # scheduled tick runs started (slot grid)
    slots: int = 0
    manual_runs: int = 0
    slow_runs: int = 0
    duplicates: list[str] = field(default_factory=list)  # "job@slot_ms" started more than once
    overlaps: list[str] = field(default_factory=list)  # two runs of one job at once in one process
    stale_accepted: list[dict[str, Any]] = field(default_factory=list)
    stale_suspects: int = 0  # accepted; the lease changed between the write and the read after it
    audit_entries: int = 0
    audit_violations: list[str] = field(default_factory=list)
    refused_writes: int = 0
    claims_refused_fenced: int = 0
    missing: list[int] = field(default_factory=list)  # tick slot ms that never ran, inside the grid
    interrupted: list[int] = field(default_factory=list)  # of those: claimed, then the run was cut short
    claims_cancelled: list[int] = field(default_factory=list)  # of those: the claim was in flight at a step-down
    named_missed: dict[str, int] = field(default_factory=dict)  # of those: named by a slot_missed line, by cause
    counted_missed: dict[str, int] = field(default_factory=dict)  # of those: matched to a count naming no slot
    lost_slots: list[int] = field(default_factory=list)  # of those: none of the above
    grid_breaks: list[tuple[int, int]] = field(default_factory=list)
    reset_gaps_s: list[float] = field(default_factory=list)
    failovers: int = 0
    manual_requests: dict[str, int] = field(default_factory=dict)  # by final state
    manual_twice: list[str] = field(default_factory=list)
    manual_unrecorded: list[str] = field(default_factory=list)
    unhealthy: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return len(self.lost_slots)

    def problems(self) -> list[str]:
        """What broke an invariant."""
        out = []
        if self.duplicates:
            out.append(f"{len(self.duplicates)} slots ran twice: {self.duplicates[:5]}")
        if self.overlaps:
            out.append(f"{len(self.overlaps)} runs overlapped another of their job in one replica: {self.overlaps[:3]}")
        if self.stale_accepted:
            out.append(f"{len(self.stale_accepted)} fenced writes accepted under a stale lease: {self.stale_accepted[:3]}")
        if self.audit_violations:
            out.append(f"audit stream out of order: {self.audit_violations[:3]}")
        if self.lost:
            out.append(f"{self.lost} slots neither run nor counted missed: {self.lost_slots[:10]}")
        if self.grid_breaks:
            out.append(f"slot grid broken without a Redis reset: {self.grid_breaks[:3]}")
        if self.manual_twice:
            out.append(f"manual requests run more than once: {self.manual_twice[:5]}")
        if self.manual_unrecorded:
            out.append(f"manual requests done without a run on record: {self.manual_unrecorded[:5]}")
        if self.unhealthy:
            out.append(f"replicas not healthy: {self.unhealthy}")
        if self.errors:
            out.append(f"unhandled errors in logs: {self.errors[:3]}")
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "runs": self.runs, "slots": self.slots, "manual_runs": self.manual_runs, "slow_runs": self.slow_runs,
            "duplicates": len(self.duplicates), "overlaps": len(self.overlaps),
            "stale_accepted": len(self.stale_accepted) + len(self.audit_violations),
            "stale_suspects": self.stale_suspects,
            "stale_refused": self.refused_writes, "stale_claims_refused": self.claims_refused_fenced,
            "missing": len(self.missing), "lost": self.lost, "interrupted": len(self.interrupted),
            "claims_cancelled": len(self.claims_cancelled),
            "missed_named": self.named_missed,
            "missed_counted": self.counted_missed, "failovers": self.failovers,
            "reset_gaps_s": [round(g, 2) for g in self.reset_gaps_s], "audit_entries": self.audit_entries,
            "manual_requests": self.manual_requests, "manual_twice": len(self.manual_twice),
        }


def _check_audit(entries: dict[str, dict[str, Any]], report: InvariantReport) -> None:
    """In Redis' order of accepted writes: tokens never go back, scheduled slots always go forward,
    and a lease that another lease's writes followed never writes again (its term is over)."""

    def order(eid: str) -> tuple[int, int]:
        ms, seq = eid.split("-")
        return int(ms), int(seq)

    last_token, last_slot = -1, -1
    current: str | None = None
    ended: set[str] = set()
    for eid in sorted(entries, key=order):
        e = entries[eid]
        token, slot, fence = int(e["token"]), int(e["slot_ms"]), e.get("fence")
        if token < last_token:
            report.audit_violations.append(f"{eid}: token {token} accepted after token {last_token}")
        scheduled = e.get("trigger", "scheduled") == "scheduled"  # a manual run's slot is when it was asked for
        if scheduled and slot <= last_slot:
            report.audit_violations.append(f"{eid}: slot {slot} accepted after slot {last_slot}")
        if fence is not None and fence != current:
            if fence in ended:
                report.audit_violations.append(f"{eid}: lease {fence} wrote again after lease {current}")
            if current is not None:
                ended.add(current)
            current = fence
        last_token = max(last_token, token)
        last_slot = max(last_slot, slot) if scheduled else last_slot
    report.audit_entries = len(entries)


def _check_grid(
    slots: list[int], interval_ms: int, resets: list[tuple[float, float]], report: InvariantReport
) -> None:
    """Fill report.missing (holes in the slot grid), report.reset_gaps_s and report.grid_breaks.

    A restart that lost every key explains the holes of the gap it falls in from a second before
    Redis went down (a claim in flight then, gone with the state) on: the next leader starts from
    its own now. Not the holes before that: those slots should have run while Redis was up.
    """
    for a, b in itertools.pairwise(slots):
        gap = b - a
        if gap == interval_ms:
            continue
        k = gap / interval_ms
        if abs(k - round(k)) * interval_ms > 2:
            report.grid_breaks.append((a, b))
            continue
        holes = [a + i * interval_ms for i in range(1, round(k))]
        lost_from = min((down for down, up in resets if a / 1000 - 1 <= up <= b / 1000 + 1), default=None)
        if lost_from is not None:
            report.reset_gaps_s.append(gap / 1000)
            holes = [m for m in holes if m < (lost_from - 1) * 1000]
        report.missing.extend(holes)


def _cancelled_claims(
    fleet: ChaosFleet,
    scheduled: list[dict[str, Any]],
    unexplained: list[int],
    named: dict[str, list[tuple[float, int, int | None]]],
) -> set[int]:
    """Holes left by a tick claim in flight when its leader stepped down.

    The step-down cancels the claim's wait (`runs_cancelled`, with more jobs cancelled than thread
    runs left going: a coroutine was in flight); the claim itself may have landed in Redis, so the
    slot is run by no one, and the runtime logs nothing for it (no `job_run`, no `slot_missed`).
    The slot is the first unexplained hole after the last slot that leader ran or counted missed
    in that term, due at most a few seconds before the step-down (claims are bounded by the batch
    timeout). Not when that last run itself was the one cut short (then no claim was in flight).
    """
    out: set[int] = set()
    holes = sorted(unexplained)
    for e in fleet.all_events("runs_cancelled"):
        t = log_ts(e)
        if t is None or int(e.get("count", 0)) <= int(e.get("threads_still_running", 0)):
            continue
        token = e.get("fencing_token")
        own = [r for r in scheduled if r["replica"] == e["replica"] and r["token"] == token]
        last = max(own, key=lambda r: r["slot_ms"], default=None)
        if last is not None and last["error"] is not None:
            continue
        seen = [slot for ts, slot, tok in named.get(e["replica"], []) if tok in (token, None) and ts <= t]
        after = max([*seen, last["slot_ms"] if last else 0], default=0)
        hole = next((m for m in holes if m > after and m not in out and t * 1000 - 3000 <= m <= t * 1000 + 1000),
                    None)
        if hole is not None:
            out.add(hole)
    return out


def _count_missed(lines: list[dict[str, Any]], unexplained: list[int], grace_s: float) -> tuple[dict[str, int], list[int]]:
    """Match `slot_missed` lines that give only a count (late, no_leader, still_running: slots
    older than the misfire grace when logged) to holes that old at that moment; the holes each
    cause explains, and the holes left. A count never explains a hole younger than the grace at its log time."""
    left = sorted(unexplained)
    explained: Counter[str] = Counter()
    for line in sorted(lines, key=lambda e: log_ts(e) or 0):
        horizon_ms = ((log_ts(line) or 0) - grace_s + 1.0) * 1000  # a second's margin for the log stamp
        eligible = [m for m in left if m <= horizon_ms]
        take = eligible[-int(line.get("count", 1)):] if eligible else []  # the holes just before the horizon
        for m in take:
            left.remove(m)
        explained[str(line.get("cause"))] += len(take)
    return dict(explained), left


def _check_overlaps(runs: list[dict[str, Any]], report: InvariantReport) -> None:
    """Per process and job, run intervals (monotonic clock; open: still running, or its process died
    with it) must not overlap."""
    by_proc: dict[tuple[int, str], list[tuple[float, float, str]]] = defaultdict(list)
    for r in runs:
        end = r.get("end_mono")
        what = f"{r['replica']} {r['job']} {r['trigger']} slot {r['slot_ms']}"
        by_proc[(r["pid"], r["job"])].append((r["start_mono"], math.inf if end is None else end, what))
    for (pid, job), spans in by_proc.items():
        spans.sort()
        busy_until, busy_with = -math.inf, ""
        for start, end, what in spans:
            if start < busy_until:
                report.overlaps.append(f"pid {pid} {job}: {what} started while {busy_with} ran")
            if end > busy_until:
                busy_until, busy_with = end, what


def _stale(line: dict[str, Any], report: InvariantReport) -> None:
    if line.get("fenced_write") is False:
        report.refused_writes += 1
    if not line.get("fenced_write"):
        return
    before, after, own = line.get("fence_before_write"), line.get("fence_after_write"), line["fence"]
    if before is not None and before == after and before != own:
        report.stale_accepted.append(line)  # another lease held before and after: it held throughout
    elif after != own:
        report.stale_suspects += 1


def _slow_runs(fleet: ChaosFleet) -> list[dict[str, Any]]:
    """One record per slow run: its end line, or its start line with end_mono None (still running)."""
    runs: dict[str, dict[str, Any]] = {}
    for line in fleet.slow_lines():
        if line["phase"] == "start":
            runs.setdefault(line["run_id"], {**line, "end_mono": None})
        else:
            runs[line["run_id"]] = line
    return list(runs.values())


def check_invariants(fleet: ChaosFleet, *, health: bool = True) -> InvariantReport:
    report = InvariantReport(failovers=len(fleet.failovers))
    ticks = [{**r, "job": r.get("job", "tick")} for r in fleet.runs()]
    slow = _slow_runs(fleet)
    scheduled = [r for r in ticks if r["trigger"] == "scheduled"]
    report.runs, report.slow_runs = len(scheduled), len(slow)
    report.manual_runs = sum(1 for r in ticks + slow if r["trigger"] == "manual")

    starts = Counter((r["job"], r["slot_ms"]) for r in scheduled + slow if r["trigger"] == "scheduled")
    report.duplicates = sorted(f"{job}@{slot}" for (job, slot), c in starts.items() if c > 1)
    _check_overlaps(ticks + slow, report)
    for run in ticks + slow:
        _stale(run, report)
    fleet.snapshot_audit()
    _check_audit(fleet.audit, report)

    counts = Counter(r["slot_ms"] for r in scheduled)
    report.slots = len(counts)
    _check_grid(sorted(counts), round(fleet.interval_s * 1000), fleet.resets, report)
    cut_short = set(fleet.interrupted)  # claimed by a leader that was then killed
    for line in fleet.all_events("job_run"):  # claimed, then cancelled, fenced or failed before its line
        if (line.get("job_id") == "tick" and line.get("trigger", "scheduled") == "scheduled"
                and line.get("status") != "success" and line.get("scheduled_time")):
            cut_short.add(iso_ms(line["scheduled_time"]))
    named: dict[int, str] = {}
    named_by: dict[str, list[tuple[float, int, int | None]]] = defaultdict(list)  # replica -> (log time, slot, token)
    counted: list[dict[str, Any]] = []
    for line in fleet.all_events("slot_missed"):
        if line.get("job_id") != "tick":
            continue
        if line.get("slot"):
            named.setdefault(iso_ms(line["slot"]), str(line.get("cause")))
            named_by[line["replica"]].append((log_ts(line) or 0, iso_ms(line["slot"]), line.get("fencing_token")))
        else:
            counted.append(line)
    unexplained = [m for m in report.missing if m not in cut_short and m not in named]
    report.claims_cancelled = sorted(_cancelled_claims(fleet, scheduled, unexplained, named_by))
    cut_short |= set(report.claims_cancelled)
    report.interrupted = [m for m in report.missing if m in cut_short]
    report.named_missed = dict(Counter(named[m] for m in report.missing if m in named and m not in cut_short))
    unexplained = [m for m in unexplained if m not in cut_short]
    report.counted_missed, report.lost_slots = _count_missed(counted, unexplained, fleet.grace_s)
    report.claims_refused_fenced = sum(1 for e in fleet.all_events("slot_claim_refused") if e.get("reason") == "fenced")

    manual_runs = Counter(r["params"].get("n") for r in ticks + slow if r["trigger"] == "manual")
    report.manual_twice = sorted(n for n, c in manual_runs.items() if c > 1)
    report.manual_requests = dict(Counter(req["state"] for req in fleet.manual.values()))
    report.manual_unrecorded = sorted(
        n for n, req in fleet.manual.items()
        if req["state"] == "done" and req.get("outcome") == "success" and manual_runs.get(n, 0) != 1
    )
    if health:
        for r in fleet.replicas:
            if not r.alive:
                report.unhealthy.append(f"{r.name}: exited with {r.proc.returncode if r.proc else None}")
                continue
            try:
                code, body = r.health("/healthz")
            except Exception as exc:  # noqa: BLE001 - any failure to answer is unhealthy
                report.unhealthy.append(f"{r.name}: {type(exc).__name__}: {exc}")
                continue
            if code != 200:
                report.unhealthy.append(f"{r.name}: /healthz {code} {body}")
    report.errors = fleet.unhandled_errors()
    return report


def wait_healthy(fleet: ChaosFleet, timeout_s: float = 60) -> None:
    """Every replica alive and answering /healthz 200 (restarted ones need a few seconds)."""

    def ok() -> bool:
        for r in fleet.replicas:
            try:
                if not r.alive or r.health("/healthz")[0] != 200:
                    return False
            except Exception:  # noqa: BLE001 - not up yet
                return False
        return True

    wait_for(ok, timeout_s, interval_s=0.2, what="every replica healthy")


# -- faults ----------------------------------------------------------------------
# Each takes the fleet, injects one fault, waits for recovery (bounded) and
# returns what it measured. Durations of faults (how long Redis stays down, how
# long a replica stays stopped) and the instants they start at (just before a
# slot falls due) are part of the fault, not synchronisation.


def _settle(fleet: ChaosFleet, since_wall: float, n: int = 2) -> None:
    fleet.wait_runs_after(since_wall, n=n, timeout_s=40)


def fault_kill_leader(fleet: ChaosFleet) -> dict[str, Any]:
    leader = fleet.wait_for_leader()
    token = fleet.leader_token()
    t_kill = time.time()
    m0 = time.monotonic()
    assert isinstance(leader, ChaosReplica)
    leader.kill()
    fleet.note_claimed_slot()
    new, new_token = fleet.wait_new_leader(token)
    takeover_s = time.monotonic() - m0
    first = fleet.wait_runs_after(t_kill, n=1, timeout_s=30)[0]
    leader.restart()
    _settle(fleet, t_kill)
    return {"killed": leader.name, "new_leader": new.name, "takeover_s": round(takeover_s, 3),
            "first_run_after_s": round(first["start"] - t_kill, 3),
            "bound_s": fleet.ttl_s + fleet.retry_s}


def fault_sigstop_leader(fleet: ChaosFleet, stop_s: float | None = None) -> dict[str, Any]:
    leader = fleet.wait_for_leader()
    token = fleet.leader_token()
    stop_s = stop_s if stop_s is not None else 2 * fleet.ttl_s
    t0 = time.time()
    m0 = time.monotonic()
    leader.signal(signal.SIGSTOP)
    fleet.note_claimed_slot()
    try:
        new, new_token = fleet.wait_new_leader(token)
        takeover_s = time.monotonic() - m0
        remaining = stop_s - (time.monotonic() - m0)
        if remaining > 0:
            time.sleep(remaining)
    finally:
        leader.signal(signal.SIGCONT)
    t_cont = time.time()
    wait_for(lambda: any(ts >= t0 for ts in fleet.event_ts(leader.name, "stopped_leading", fencing_token=token)),
             30, what=f"{leader.name} to notice it stopped leading")
    _settle(fleet, t_cont)
    reasons = [e.get("reason") for e in leader.events("stopped_leading") if e.get("fencing_token") == token]
    stale_runs = [r for r in fleet.runs() if r["token"] == token and r["start"] > t0 + 0.05]
    return {"stopped": leader.name, "stopped_s": stop_s, "new_leader": new.name,
            "takeover_s": round(takeover_s, 3), "old_leader_step_down": reasons,
            "runs_started_by_frozen_leader_after_freeze": len(stale_runs),
            "its_writes_accepted": sum(1 for r in stale_runs if r["fenced_write"])}


def fault_partition_leader(fleet: ChaosFleet, hold_s: float | None = None) -> dict[str, Any]:
    leader = fleet.wait_for_leader()
    token = fleet.leader_token()
    link = fleet.link(leader.name)
    t0 = time.time()
    m0 = time.monotonic()
    link.partition()
    fleet.note_claimed_slot()
    try:
        new, _ = fleet.wait_new_leader(token)
        takeover_s = time.monotonic() - m0
        fleet.wait_runs_after(time.time(), n=2, timeout_s=20)  # the new leader runs while the old one is cut off
        if hold_s is not None and hold_s > time.monotonic() - m0:
            time.sleep(hold_s - (time.monotonic() - m0))
    finally:
        link.heal()
    t_heal = time.time()
    wait_for(lambda: any(ts >= t0 for ts in fleet.event_ts(leader.name, "stopped_leading", fencing_token=token)),
             30, what=f"{leader.name} to step down")
    _settle(fleet, t_heal)
    reasons = [e.get("reason") for e in leader.events("stopped_leading") if e.get("fencing_token") == token]
    late = [r for r in fleet.runs() if r["token"] == token and r["start"] > t0]
    return {"partitioned": leader.name, "new_leader": new.name, "takeover_s": round(takeover_s, 3),
            "old_leader_step_down": reasons, "old_leader_runs_during_partition": len(late),
            "its_writes_accepted_after_takeover": sum(1 for r in late if r["fenced_write"] and r["end"] > t0 + takeover_s)}


def fault_delay_leader(fleet: ChaosFleet, delay_s: float = 0.2, hold_s: float = 3.0) -> dict[str, Any]:
    """Slow link (below the renew deadline): leadership should usually survive it."""
    leader = fleet.wait_for_leader()
    token = fleet.leader_token()
    link = fleet.link(leader.name)
    link.delay(delay_s)
    try:
        time.sleep(hold_s)
    finally:
        link.heal()
    t_heal = time.time()
    _settle(fleet, t_heal)
    return {"delayed": leader.name, "delay_s": delay_s, "kept_lead": fleet.leader_token() == token}


def fault_redis_restart_empty(fleet: ChaosFleet) -> dict[str, Any]:
    fleet.snapshot_audit()
    t0 = time.time()
    m0 = time.monotonic()
    fleet.redis_proc.restart()
    fleet.resets.append((t0, time.time()))
    leader = fleet.wait_for_leader()
    lead_s = time.monotonic() - m0
    first = fleet.wait_runs_after(t0, n=1, timeout_s=30)[0]
    _settle(fleet, t0)
    return {"new_leader": leader.name, "leader_after_s": round(lead_s, 3),
            "first_run_after_s": round(first["start"] - t0, 3)}


def fault_redis_down(fleet: ChaosFleet, down_s: float | None = None) -> dict[str, Any]:
    """Redis killed for three TTLs, then back (empty: it keeps nothing on disk)."""
    down_s = down_s if down_s is not None else 3 * fleet.ttl_s
    fleet.snapshot_audit()
    t0 = time.time()
    fleet.redis_proc.kill()
    time.sleep(down_s)
    fleet.redis_proc.start()
    t_up = time.time()
    fleet.resets.append((t0, t_up))
    m0 = time.monotonic()
    leader = fleet.wait_for_leader()
    lead_s = time.monotonic() - m0
    first = fleet.wait_runs_after(t_up, n=1, timeout_s=30)[0]
    _settle(fleet, t_up)
    reasons = Counter(e.get("reason") for e in fleet.all_events("stopped_leading")
                      if (log_ts(e) or 0) >= t0 and (log_ts(e) or 0) <= t_up)
    return {"down_s": down_s, "leaders_stepped_down": dict(reasons), "leader_after_up_s": round(lead_s, 3),
            "first_run_after_up_s": round(first["start"] - t_up, 3), "new_leader": leader.name}


def fault_redis_freeze(fleet: ChaosFleet, frozen_s: float | None = None) -> dict[str, Any]:
    """Redis SIGSTOPped past the TTL: queued commands all run at once when it resumes."""
    frozen_s = frozen_s if frozen_s is not None else 2 * fleet.ttl_s
    t0 = time.time()
    fleet.redis_proc.pause()
    try:
        time.sleep(frozen_s)
    finally:
        fleet.redis_proc.resume()
    t_up = time.time()
    leader = fleet.wait_for_leader()
    _settle(fleet, t_up)
    return {"frozen_s": frozen_s, "leader_after": leader.name, "since": round(time.time() - t0, 2)}


def fault_handoffs(fleet: ChaosFleet, count: int = 20) -> dict[str, Any]:
    """`count` graceful handoffs in a row, each asked for on the handoff channel with the leader's token."""
    gaps_s: list[float] = []
    t0 = time.time()
    for _ in range(count):
        fleet.wait_for_leader()
        token = fleet.leader_token()
        fleet.wait_listeners()
        m0 = time.monotonic()
        fleet.request_handoff(token)
        fleet.wait_new_leader(token, timeout_s=20)
        gaps_s.append(time.monotonic() - m0)
    _settle(fleet, time.time())
    log_gaps = handoff_gaps_from_logs(fleet, since=t0)
    gaps_ms = sorted(g * 1000 for g in log_gaps)
    return {"handoffs": count, "observed_s": _pcts([g for g in gaps_s]),
            "release_to_acquire_ms": _pcts(gaps_ms), "samples": len(gaps_ms)}


def handoff_gaps_from_logs(fleet: ChaosFleet, since: float) -> list[float]:
    """Seconds from each `stopped_leading(released)` to the next `started_leading` on another replica."""
    stops = sorted((log_ts(e), e["replica"]) for e in fleet.all_events("stopped_leading")
                   if e.get("reason") == "released" and (log_ts(e) or 0) >= since)
    starts = sorted((log_ts(e), e["replica"]) for e in fleet.all_events("started_leading") if (log_ts(e) or 0) >= since)
    gaps = []
    for ts, who in stops:
        nxt = next((s for s in starts if s[0] is not None and ts is not None and s[0] >= ts and s[1] != who), None)
        if nxt is not None and ts is not None:
            gaps.append(nxt[0] - ts)
    return gaps


def fault_clock_jump(fleet: ChaosFleet, jump_s: float = 3.0) -> dict[str, Any]:
    """The skewed replica leads; its wall clock steps by `jump_s` (either way), stays there a while,
    then is corrected (a step the other way). The lease must not notice (it runs on the monotonic
    clock). Ahead beyond MAX_CLOCK_SKEW_MS, slots are deferred until Redis' clock reaches them,
    and beyond the misfire grace counted missed (`clock_ahead`); behind, slots run late, and
    beyond the grace are counted missed (`late`)."""
    assert fleet.skew is not None
    for _ in range(12):
        rec = fleet.leader_record()
        if rec and rec["replica_id"] == fleet.skew:
            break
        token = fleet.leader_token()
        fleet.request_handoff(token)
        fleet.wait_new_leader(token, timeout_s=20)
    rec = fleet.leader_record()
    if not rec or rec["replica_id"] != fleet.skew:
        return {"skipped": f"{fleet.skew} never became leader"}
    token = int(rec["fencing_token"])
    t0 = time.time()
    fleet.jump_clock(jump_s)
    # How long the clock stays wrong is part of the fault. Runs from the jumped replica carry
    # its jumped time, so nothing here waits on their times.
    time.sleep(min(abs(jump_s), fleet.grace_s) + 2 * fleet.interval_s)
    kept_after_step = fleet.leader_token() == token
    fleet.jump_clock(0.0)
    t_back = time.time()
    m0 = time.monotonic()
    fleet.wait_runs_after(t_back, n=2, timeout_s=abs(jump_s) + 30)
    resumed_after_s = time.monotonic() - m0
    kept_after_back = fleet.leader_token() == token
    return {"jumped": fleet.skew, "jump_s": jump_s, "kept_lead_forward": kept_after_step,
            "kept_lead_back": kept_after_back, "runs_resumed_after_correction_s": round(resumed_after_s, 2),
            "missed_clock_ahead": fleet.missed_since(t0, "clock_ahead"), "missed_late": fleet.missed_since(t0, "late"),
            "deferred": sum(int(e.get("count", 1)) for e in fleet.by_name(fleet.skew).events("slots_deferred")
                            if (log_ts(e) or 0) >= t0 - 1)}


def _next_slot_s(fleet: ChaosFleet, lead_s: float = 0.15) -> float:
    """Epoch s of the next tick slot at least `lead_s` from now (interval slots are multiples of
    the interval since the epoch)."""
    return math.ceil((time.time() + lead_s) / fleet.interval_s) * fleet.interval_s


def _sleep_until(t_wall: float) -> None:
    time.sleep(max(0.0, t_wall - time.time()))


def fault_redis_failover(fleet: ChaosFleet, cut_s: float | None = None, cut_before_slot_s: float = 0.03) -> dict[str, Any]:
    """WAIT_REPLICAS=1: the replication link is cut just before a slot falls due, and slots fall due
    while no replica acknowledges anything (claims are refused as `unreplicated`, the leader steps
    down at its next renew, acquires are given back). Then the master dies, the replica is promoted
    without what it never got, the virtual IP moves to it and a fresh replica is added. A claim a
    replica acknowledged survives (no slot twice); one it did not did not run, and the new leader
    may run that slot."""
    topo = fleet.topology
    if topo is None:
        return {"skipped": "Redis is not replicated"}
    topo.wait_synced()
    leader = fleet.wait_for_leader()
    cut_s = cut_s if cut_s is not None else 3 * fleet.interval_s
    _sleep_until(_next_slot_s(fleet) - cut_before_slot_s)
    t_cut = time.time()
    topo.cut()
    try:
        time.sleep(cut_s)
        fleet.snapshot_audit()  # the master's writes since the cut are about to be lost: keep them
        topo.failover(on_promoted=fleet.move_vip)
    finally:
        topo.heal()
    t_fo = time.time()
    fleet.failovers.append(t_fo)
    m0 = time.monotonic()
    new = fleet.wait_for_leader(timeout_s=40)
    lead_s = time.monotonic() - m0
    first = fleet.wait_runs_after(t_fo, n=1, timeout_s=30)[0]
    _settle(fleet, t_fo)
    reasons = Counter(e.get("reason") for e in fleet.all_events("stopped_leading")
                      if t_cut - 1 <= (log_ts(e) or 0) <= t_fo + 1)
    return {"failover": topo.failovers, "cut_s": round(cut_s, 3), "old_leader": leader.name, "new_leader": new.name,
            "step_downs_during_cut": dict(reasons), "unreplicated": fleet.missed_since(t_cut, "unreplicated"),
            "leader_after_s": round(lead_s, 3), "first_run_after_s": round(first["start"] - t_fo, 3)}


def fault_redis_pause(fleet: ChaosFleet, pause_x: float = 1.5) -> dict[str, Any]:
    """Redis SIGSTOPped for `pause_x` times the replicas' socket timeout (just over it: 1.2 to 1.8),
    from just before a slot falls due:
    what was sent meanwhile runs when Redis resumes, but its reply is lost (the client gave up on
    that connection) and redis-py sends it again. A re-sent claim neither skips nor repeats its
    slot; a re-sent acquire or renew does not lock its own replica out."""
    pause_s = pause_x * fleet.socket_timeout_s
    fleet.wait_for_leader()
    token = fleet.leader_token()
    slot_s = _next_slot_s(fleet, 0.2)
    _sleep_until(slot_s - 0.05)
    t0 = time.time()
    fleet.redis_proc.pause()
    try:
        time.sleep(pause_s)
    finally:
        fleet.redis_proc.resume()
    t_up = time.time()
    leader = fleet.wait_for_leader(timeout_s=30)
    _settle(fleet, t_up)
    slot_ms = round(slot_s * 1000)
    ran = sum(1 for r in fleet.runs() if r["slot_ms"] == slot_ms and r["trigger"] == "scheduled")
    return {"paused_s": round(pause_s, 3), "slot_ms": slot_ms, "slot_runs": ran, "kept_lead": fleet.leader_token() == token,
            "leader": leader.name, "missed_redis": fleet.missed_since(t0, "redis")}


def fault_steal_lease(fleet: ChaosFleet, hold_s: float = 0.4, same_replica: bool = True) -> dict[str, Any]:
    """The lease is taken from the leader while its `slow` thread run is mid-way: the leader key is
    SET to a thief's value for `hold_s` (as redis-py's lock tests simulate theft). With
    `same_replica` the standbys are cut off meanwhile, so the old leader wins the lease back while
    that thread still runs: it must not start another run of `slow` before the thread returns, and
    the thread's fenced write, made under the lost lease, must be refused."""
    if not fleet.slow_sync:
        return {"skipped": "the fleet runs no slow job"}
    leader = fleet.wait_for_leader()
    rec = fleet.leader_record()
    assert rec is not None
    token, pid = int(rec["fencing_token"]), leader.pid
    fence = f"{token}:{rec['lease_id']}"

    def victim() -> dict[str, Any] | None:
        now = time.monotonic()
        return next((r for r in _slow_runs(fleet) if r["pid"] == pid and r["fence"] == fence
                     and r["end_mono"] is None and 0.1 <= now - r["start_mono"] <= fleet.slow_run_s - 1.5), None)

    run = wait_for(victim, 30, interval_s=0.02, what=f"a slow run in flight on {leader.name}")
    others = [r for r in fleet.replicas if r is not leader] if same_replica else []
    for other in others:
        fleet.link(other.name).partition()
    try:
        t_steal = time.time()
        fleet.client.set(fleet.keys.leader, json.dumps({"replica_id": "thief", "fencing_token": 1}),
                         px=round(hold_s * 1000))
        wait_for(lambda: any(ts >= t_steal - 1 for ts in fleet.event_ts(leader.name, "stopped_leading",
                                                                          fencing_token=token)),
                 10, what=f"{leader.name} to notice its lease was taken")
        new, _ = fleet.wait_new_leader(token, timeout_s=20)
    finally:
        for other in others:
            fleet.link(other.name).heal()

    def ended() -> dict[str, Any] | None:
        return next((r for r in _slow_runs(fleet) if r["run_id"] == run["run_id"] and r["end_mono"] is not None), None)

    running_when_won_back = ended() is None
    done = wait_for(ended, fleet.slow_run_s + 10, what="the stolen run's thread to return")
    after = None
    if new is leader:
        after = wait_for(lambda: next((r for r in _slow_runs(fleet) if r["pid"] == pid
                                       and r["start_mono"] > run["start_mono"]), None),
                         20, what=f"the next slow run on {leader.name}")
    _settle(fleet, time.time())
    return {"victim": leader.name, "won_back_by": new.name, "standbys_cut_off": bool(others),
            "thread_running_when_won_back": running_when_won_back,
            "stolen_run_write_accepted": done["fenced_write"],
            "next_run_after_thread_s": round(after["start_mono"] - done["end_mono"], 3) if after else None}


def fault_manual_requests(fleet: ChaosFleet, count: int = 3, run_s: float = 0.4) -> dict[str, Any]:
    """Manual run requests (`lightsched run-job`) enqueued just as a scheduled tick run starts, each
    taking `run_s` (longer than the interval, so scheduled slots fall due behind them), and, with
    the slow job, one of `slow` while its scheduled thread run goes on. Each must run at most once,
    never beside another run of its job in the same replica."""
    fleet.wait_for_leader()
    asks = [("tick", {"run_s": str(run_s)}) for _ in range(count)]
    if fleet.slow_sync:
        asks.append(("slow", {"run_s": "0.5"}))
    _sleep_until(_next_slot_s(fleet) + 0.005)
    m0 = time.monotonic()
    ids = fleet.enqueue_requests(asks)

    def finished() -> dict[str, dict[str, str]] | None:
        try:
            states = fleet.request_states(ids)
        except (redis.RedisError, OSError):
            return None
        return states if all(h.get("state") in REQUEST_FINAL for h in states.values()) else None

    budget_s = 30 + count * run_s + 2 * fleet.slow_run_s
    try:
        states = wait_for(finished, budget_s, interval_s=0.1, what="the manual requests to finish")
    except TimeoutError:
        # As `lightsched run-job` does: a request nobody took is cancelled. One left `running`
        # means its leader lost the lease mid-run; it must still not run twice.
        for request_id, h in fleet.request_states(ids).items():
            if h.get("state") == "pending":
                fleet.cancel_request(request_id, "chaos: not taken in time")
        states = fleet.request_states(ids)
    took_s = time.monotonic() - m0
    number = {req["id"]: n for n, req in fleet.manual.items()}
    for request_id, h in states.items():
        fleet.manual[number[request_id]].update(state=h.get("state") or "expired", outcome=h.get("outcome"),
                                                replica=h.get("replica_id"))
    _settle(fleet, time.time())
    return {"requests": len(ids), "states": dict(Counter(h.get("state") for h in states.values())),
            "outcomes": dict(Counter(h.get("outcome") for h in states.values())), "took_s": round(took_s, 2)}


def _pcts(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    v = sorted(values)

    def q(p: float) -> float:
        return round(v[min(len(v) - 1, int(p * (len(v) - 1) + 0.5))], 3)

    return {"p50": q(0.5), "p99": q(0.99), "max": round(v[-1], 3), "n": len(v)}


FAULTS = {
    "kill_leader": fault_kill_leader,
    "sigstop_leader": fault_sigstop_leader,
    "partition_leader": fault_partition_leader,
    "delay_leader": fault_delay_leader,
    "redis_restart_empty": fault_redis_restart_empty,
    "redis_down": fault_redis_down,
    "redis_freeze": fault_redis_freeze,
    "handoffs": fault_handoffs,
    "clock_jump": fault_clock_jump,
    "redis_failover": fault_redis_failover,
    "redis_pause": fault_redis_pause,
    "steal_lease": fault_steal_lease,
    "manual_requests": fault_manual_requests,
}


def run_fault(fleet: ChaosFleet, name: str, **kwargs: Any) -> tuple[dict[str, Any], InvariantReport]:
    """Inject one fault, then check every invariant; print both as one JSON line."""
    fleet.ensure_running()
    fleet.wait_for_leader(timeout_s=60)
    try:
        measured = FAULTS[name](fleet, **kwargs)
    finally:
        fleet.save_state()
    wait_healthy(fleet)
    report = check_invariants(fleet)
    print(json.dumps({"scenario": name, "measured": measured, "invariants": report.summary()}), flush=True)
    return measured, report
