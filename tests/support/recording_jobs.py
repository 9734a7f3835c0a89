"""A job registry for process tests: every run appends one JSON line to a per-replica file.

Each line: replica, token, slot (ms), start/end (epoch s), the outcome of a
fenced write made during the run, and the token current in Redis right after
that write (to check that accepted writes carried the current token).
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


@registry.job("tick", trigger=f"{_interval()}s", config=RecordingConfig, timeout=30)
async def tick(ctx: JobContext) -> None:
    cfg: RecordingConfig = ctx.config
    start = time.time()
    await anyio.sleep(cfg.run_s)
    accepted = await ctx.fenced_set(ctx.key("last"), f"{ctx.fencing_token}:{ctx.scheduled_time.timestamp()}")
    current = await ctx.redis.get(ctx.keys.token)
    line = {
        "replica": ctx.replica_id,
        "token": ctx.fencing_token,
        "slot_ms": round(ctx.scheduled_time.timestamp() * 1000),
        "start": start,
        "end": time.time(),
        "fenced_write": accepted,
        "token_after_write": int(current) if current is not None else None,
        "pid": os.getpid(),
    }
    with open(Path(cfg.dir) / f"runs-{ctx.replica_id}.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")
