"""A job registry for process tests: every run appends one JSON line to a per-replica file.

Each line: replica, token, slot (ms), start/end (epoch s), the outcome of a
fenced write made during the run, and the token current in Redis right after
that write (to check that accepted writes carried the current token).

Opt-in for chaos tests (environment, read at import): `LIGHTSCHED_RECORDING_COALESCE=false`
runs every missed slot instead of coalescing them; `LIGHTSCHED_RECORDING_AUDIT=1` also
appends each run to a fenced stream `{prefix}:data:tick:audit` (the field `audit_id`
of the line), whose entry order is Redis' own order of accepted writes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import anyio
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from scheduler import JobContext, JobRegistry


class RecordingConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LIGHTSCHED_RECORDING_", frozen=True, extra="ignore")
    dir: str = Field(..., description="directory for the per-replica run files")
    run_s: float = Field(0.05, description="seconds each run takes")


registry = JobRegistry()


def _interval() -> float:
    return float(os.environ.get("LIGHTSCHED_RECORDING_INTERVAL_S", "0.5"))


def _coalesce() -> bool:
    return os.environ.get("LIGHTSCHED_RECORDING_COALESCE", "true").lower() not in ("0", "false", "no")


def _audit() -> bool:
    return os.environ.get("LIGHTSCHED_RECORDING_AUDIT", "0").lower() in ("1", "true", "yes")


@registry.job("tick", trigger=f"{_interval()}s", config=RecordingConfig, timeout=30, coalesce=_coalesce())
async def tick(ctx: JobContext) -> None:
    cfg: RecordingConfig = ctx.config
    start = time.time()
    await anyio.sleep(cfg.run_s)
    accepted = await ctx.fenced_set(ctx.key("last"), f"{ctx.fencing_token}:{ctx.scheduled_time.timestamp()}")
    current = await ctx.redis.get(ctx.keys.token)
    audit_id = None
    if _audit():
        slot_ms = round(ctx.scheduled_time.timestamp() * 1000)
        audit_id = await ctx.fenced_xadd(
            ctx.key("audit"), {"token": ctx.fencing_token, "slot_ms": slot_ms, "replica": ctx.replica_id}, 100_000
        )
    line = {
        "replica": ctx.replica_id,
        "token": ctx.fencing_token,
        "slot_ms": round(ctx.scheduled_time.timestamp() * 1000),
        "start": start,
        "end": time.time(),
        "fenced_write": accepted,
        "token_after_write": int(current) if current is not None else None,
        "pid": os.getpid(),
        "audit_id": audit_id,
        "trigger": ctx.trigger,
        "params": dict(ctx.params),
    }
    with open(Path(cfg.dir) / f"runs-{ctx.replica_id}.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")
