"""Status models shared by `lightsched status`, the health endpoint and `status()`.

`ClusterStatus.stable_json()` is the `lightsched status --json` shape, kept
stable for operators' scripts:
{"leader": null | {"replica_id", "fencing_token", "ttl_ms", "acquired_at"},
 "jobs": [{"id", "next_run_time", "last_run": null | {"scheduled_time",
   "started_at", "finished_at", "status", "replica_id", "fencing_token"}}]}
It is read from Redis only, so it works from any pod.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from redis.asyncio import Redis

from leader import LeaseHolder, LeaseTerm

from .keys import Keyspace
from .registry import JobSpec

__all__ = ["ClusterStatus", "JobState", "LeaderInfo", "ReplicaStatus", "RunRecord", "read_cluster_status"]

_STABLE_RUN = ("scheduled_time", "started_at", "finished_at", "status", "replica_id", "fencing_token")


class LeaderInfo(BaseModel):
    model_config = ConfigDict(frozen=True)
    replica_id: str | None
    fencing_token: int | None
    ttl_ms: int | None
    acquired_at: str | None
    host: str | None = None
    pid: int | None = None
    foreign: bool = False


class RunRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")
    scheduled_time: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    status: str | None = None
    replica_id: str | None = None
    fencing_token: int | None = None
    error: str | None = None
    attempts: int | None = None
    duration_ms: float | None = None


class JobState(BaseModel):
    model_config = ConfigDict(frozen=True)
    id: str
    next_run_time: str | None
    last_run: RunRecord | None
    last_slot_time: str | None = None


class ClusterStatus(BaseModel):
    model_config = ConfigDict(frozen=True)
    leader: LeaderInfo | None
    jobs: list[JobState]

    def stable_json(self) -> dict[str, Any]:
        leader = None
        if self.leader is not None:
            leader = {k: getattr(self.leader, k) for k in ("replica_id", "fencing_token", "ttl_ms", "acquired_at")}
        jobs = []
        for job in self.jobs:
            last = None
            if job.last_run is not None:
                last = {k: getattr(job.last_run, k) for k in _STABLE_RUN}
            jobs.append({"id": job.id, "next_run_time": job.next_run_time, "last_run": last})
        return {"leader": leader, "jobs": jobs}


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _ms_iso(raw: Any) -> str | None:
    if raw is None or _text(raw) == "":
        return None
    return datetime.fromtimestamp(int(_text(raw)) / 1000, UTC).isoformat()


async def read_cluster_status(client: Redis, keys: Keyspace, job_ids: list[str] | None = None) -> ClusterStatus:
    """The deployment's state from Redis alone: leader key, PTTL, and each job's hash."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.get(keys.leader)
        pipe.pttl(keys.leader)
        pipe.smembers(keys.jobs_index())
        raw, pttl, indexed = await pipe.execute()
    ids = list(job_ids or [])
    for j in sorted(_text(x) for x in indexed):
        if j not in ids:
            ids.append(j)
    async with client.pipeline(transaction=False) as pipe:
        for j in ids:
            pipe.hgetall(keys.job(j))
        hashes = await pipe.execute()
    leader = None
    if raw is not None:
        h = LeaseHolder.parse(raw)
        leader = LeaderInfo(
            replica_id=h.replica_id, fencing_token=h.fencing_token, ttl_ms=int(pttl), acquired_at=h.acquired_at,
            host=h.host, pid=h.pid, foreign=h.foreign,
        )
    jobs = []
    for j, h in zip(ids, hashes, strict=True):
        fields = {_text(k): v for k, v in h.items()}
        last = None
        if "last_run" in fields:
            try:
                last = RunRecord(**json.loads(_text(fields["last_run"])))
            except (ValueError, TypeError):
                last = None
        jobs.append(
            JobState(
                id=j,
                next_run_time=_ms_iso(fields.get("next_run_ms")),
                last_run=last,
                last_slot_time=_ms_iso(fields.get("last_slot_ms")),
            )
        )
    return ClusterStatus(leader=leader, jobs=jobs)


class ReplicaJob(BaseModel):
    id: str
    next_run: str | None
    trigger: str
    enabled: bool
    last_outcome: str | None
    last_run: RunRecord | None


class ReplicaStatus(BaseModel):
    """The health endpoint's body: the original plan's shape, extended."""

    scheduler_running: bool
    job_count: int
    jobs: list[ReplicaJob]
    replica_id: str
    enabled: bool
    is_leader: bool
    fencing_token: int | None
    lease_left_s: float | None
    leader: LeaderInfo | None
    draining: bool
    redis_error: str | None = None
    clock_skew_ms: float | None = None  # this replica's wall clock minus Redis TIME (latest measure)

    @classmethod
    def build(
        cls,
        *,
        replica_id: str,
        enabled: bool,
        scheduler_running: bool,
        term: LeaseTerm | None,
        now_mono: float,
        specs: list[JobSpec],
        cluster: ClusterStatus | None,
        local_records: dict[str, dict[str, Any]],
        draining: bool,
        redis_error: str | None,
        clock_skew_s: float | None = None,
    ) -> ReplicaStatus:
        by_id = {j.id: j for j in cluster.jobs} if cluster else {}
        jobs = []
        for spec in specs:
            state = by_id.get(spec.id)
            last = state.last_run if state and state.last_run else None
            if last is None and spec.id in local_records:
                last = RunRecord(**local_records[spec.id])
            jobs.append(
                ReplicaJob(
                    id=spec.id,
                    next_run=state.next_run_time if state and spec.enabled else None,
                    trigger=str(spec.trigger),
                    enabled=spec.enabled,
                    last_outcome=last.status if last else None,
                    last_run=last,
                )
            )
        return cls(
            scheduler_running=scheduler_running,
            job_count=len(specs),
            jobs=jobs,
            replica_id=replica_id,
            enabled=enabled,
            is_leader=term is not None,
            fencing_token=term.token if term else None,
            lease_left_s=round(term.time_left_s(now_mono), 3) if term else None,
            leader=cluster.leader if cluster else None,
            draining=draining,
            redis_error=redis_error,
            clock_skew_ms=round(clock_skew_s * 1000, 1) if clock_skew_s is not None else None,
        )
