"""A job registry for process tests: every run appends one JSON line to a per-replica file.

Each line of `runs-<replica>.jsonl` (job `tick`): replica, pid, token and fence
(`<token>:<lease_id>`) of the run's term, slot (ms), trigger (scheduled or
manual) and params, start/end (epoch s, this process' wall clock, which a test
may jump) and start_mono/end_mono (the monotonic clock: to order runs within
one process), the outcome of a fenced write made during the run, the token
counter read right after it (`token_after_write`), and the fence the leader key
held right before and right after the write (`fence_before_write`,
`fence_after_write`: None when no lease, the raw value when it is not a lease).
The line is written when the run ends, however it ends (`error` says how when
it did not succeed), so a run that started is always on record unless its
process was killed.

A manual run's `run_s` param overrides how long it takes.

Opt-in for chaos tests (environment, read at import):
- `LIGHTSCHED_RECORDING_COALESCE=false` runs every missed slot instead of coalescing them;
- `LIGHTSCHED_RECORDING_AUDIT=1` also appends each run to a fenced stream
  `{prefix}:data:tick:audit` (fields token, fence, slot_ms, replica, trigger; the line's
  `audit_id`), whose entry order is Redis' own order of accepted writes;
- `LIGHTSCHED_RECORDING_SLOW_SYNC=1` adds job `slow`, a plain function (run in a
  worker thread) that takes `LIGHTSCHED_RECORDING_SLOW_RUN_S` (default 1.5 s),
  longer than its interval `LIGHTSCHED_RECORDING_SLOW_INTERVAL_S` (default 1 s).
  It appends a `start` line to `slow-<replica>.jsonl` when it starts and an
  `end` line (same fields as a tick line, plus `run_id`) when its thread returns.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from leader import fence_arg
from scheduler import JobContext, JobRegistry


class RecordingConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LIGHTSCHED_RECORDING_", frozen=True, extra="ignore")
    dir: str = Field(..., description="directory for the per-replica run files")
    run_s: float = Field(0.05, description="seconds each run of `tick` takes")
    slow_run_s: float = Field(1.5, description="seconds each run of `slow` takes")


registry = JobRegistry()


def _interval() -> float:
    return float(os.environ.get("LIGHTSCHED_RECORDING_INTERVAL_S", "0.5"))


def _slow_interval() -> float:
    return float(os.environ.get("LIGHTSCHED_RECORDING_SLOW_INTERVAL_S", "1"))


def _flag(name: str, default: str) -> bool:
    return os.environ.get(name, default).lower() in ("1", "true", "yes")


def _coalesce() -> bool:
    return os.environ.get("LIGHTSCHED_RECORDING_COALESCE", "true").lower() not in ("0", "false", "no")


def _audit() -> bool:
    return _flag("LIGHTSCHED_RECORDING_AUDIT", "0")


def _append(path: Path, line: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")


async def _leader_fence(ctx: JobContext) -> str | None:
    """The fence of the lease the leader key holds now: None without one, else `<token>:<lease_id>`
    (the raw value when it is not a lease, e.g. a test's thief)."""
    raw = await ctx.redis.get(ctx.keys.leader)
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    try:
        lease = json.loads(text)
        return fence_arg(int(lease["fencing_token"]), str(lease["lease_id"]))
    except (ValueError, KeyError, TypeError):
        return text


def _base_line(ctx: JobContext) -> dict[str, Any]:
    return {
        "job": ctx.job_id,
        "replica": ctx.replica_id,
        "pid": os.getpid(),
        "token": ctx.fencing_token,
        "fence": ctx.fence,
        "slot_ms": round(ctx.scheduled_time.timestamp() * 1000),
        "trigger": ctx.trigger,
        "params": dict(ctx.params),
    }


@registry.job("tick", trigger=f"{_interval()}s", config=RecordingConfig, timeout=30, coalesce=_coalesce())
async def tick(ctx: JobContext) -> None:
    cfg: RecordingConfig = ctx.config
    line: dict[str, Any] = {**_base_line(ctx), "start": time.time(), "start_mono": time.monotonic(),
                            "fenced_write": None, "token_after_write": None, "fence_before_write": None,
                            "fence_after_write": None, "audit_id": None, "error": None}
    try:
        await anyio.sleep(float(ctx.params.get("run_s", cfg.run_s)))
        line["fence_before_write"] = await _leader_fence(ctx)
        accepted = await ctx.fenced_set(ctx.key("last"), f"{ctx.fence}:{ctx.scheduled_time.timestamp()}")
        line["fenced_write"] = accepted
        line["fence_after_write"] = await _leader_fence(ctx)
        current = await ctx.redis.get(ctx.keys.token)
        line["token_after_write"] = int(current) if current is not None else None
        if _audit():
            line["audit_id"] = await ctx.fenced_xadd(
                ctx.key("audit"),
                {"token": ctx.fencing_token, "fence": ctx.fence, "slot_ms": line["slot_ms"],
                 "replica": ctx.replica_id, "trigger": ctx.trigger},
                100_000,
            )
    except BaseException as exc:  # recorded, then re-raised
        line["error"] = type(exc).__name__ if not str(exc) else f"{type(exc).__name__}: {exc}"
        raise
    finally:
        line["end"], line["end_mono"] = time.time(), time.monotonic()
        _append(Path(cfg.dir) / f"runs-{ctx.replica_id}.jsonl", line)


if _flag("LIGHTSCHED_RECORDING_SLOW_SYNC", "0"):

    @registry.job("slow", trigger=f"{_slow_interval()}s", config=RecordingConfig, timeout=30, coalesce=True)
    def slow(ctx: JobContext) -> None:
        """A plain function longer than its interval: one run per replica at a time, even across
        a lease lost and won back mid-run (its thread cannot be stopped)."""
        cfg: RecordingConfig = ctx.config
        path = Path(cfg.dir) / f"slow-{ctx.replica_id}.jsonl"
        line: dict[str, Any] = {**_base_line(ctx), "run_id": uuid.uuid4().hex, "start": time.time(),
                                "start_mono": time.monotonic(), "fenced_write": None, "fence_before_write": None,
                                "fence_after_write": None, "error": None}
        _append(path, {**line, "phase": "start"})
        try:
            time.sleep(float(ctx.params.get("run_s", cfg.slow_run_s)))
            line["fence_before_write"] = anyio.from_thread.run(_leader_fence, ctx)
            line["fenced_write"] = anyio.from_thread.run(
                ctx.fenced_set, ctx.key("last"), f"{ctx.fence}:{ctx.scheduled_time.timestamp()}"
            )
            line["fence_after_write"] = anyio.from_thread.run(_leader_fence, ctx)
        except BaseException as exc:  # recorded, then re-raised
            line["error"] = type(exc).__name__ if not str(exc) else f"{type(exc).__name__}: {exc}"
            raise
        finally:
            line["end"], line["end_mono"] = time.time(), time.monotonic()
            _append(path, {**line, "phase": "end"})
