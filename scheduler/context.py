"""What a job sees when it runs: `JobContext`.

Guarantees: `fencing_token` is the token of the lease under which this run's
slot was claimed; the `fenced_*` helpers write only while it is still the
deployment's current token and report False/None otherwise.
Does not guarantee: that a run is never cut short; a run is cancelled when
its replica stops leading or its timeout passes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from opentelemetry import trace
from redis.asyncio import Redis

from .fencing import Fence
from .keys import Keyspace

__all__ = ["JobContext", "JobLogger"]


class JobLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger bound to a job whose per-call `extra=` is merged, not dropped (as 3.11's adapter does)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


@dataclass(frozen=True, slots=True)
class JobContext:
    job_id: str
    replica_id: str
    fencing_token: int
    scheduled_time: datetime  # tz-aware fire time of this slot
    redis: Redis  # the replica's shared asyncio client
    keys: Keyspace
    log: logging.LoggerAdapter[logging.Logger]
    config: Any = None  # the job's validated settings model, when it declares one
    params: Mapping[str, str] = field(default_factory=dict)  # `run-job --param k=v` (manual runs only)
    attempt: int = 1
    manual: bool = False
    loop_lag_s: float = 0.0  # worst event-loop lag seen by the replica since the previous run of any job
    _fence: Fence | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return (
            f"JobContext(job_id={self.job_id!r}, replica_id={self.replica_id!r}, "
            f"fencing_token={self.fencing_token}, scheduled_time={self.scheduled_time.isoformat()})"
        )

    def key(self, *parts: str) -> str:
        """A key for this job's own data under the deployment prefix."""
        return self.keys.data(self.job_id, *parts)

    @property
    def fence(self) -> Fence:
        if self._fence is None:
            self_fence = Fence(self.redis, self.keys)
            object.__setattr__(self, "_fence", self_fence)
        assert self._fence is not None
        return self._fence

    async def fenced_set(self, key: str, value: str | bytes, px: int | None = None) -> bool:
        """SET `key` (under the prefix) only while this run's token is current."""
        return await self.fence.set(self.fencing_token, key, value, px)

    async def fenced_xadd(self, key: str, fields: dict[str, Any], maxlen: int) -> str | None:
        """XADD to a capped stream (under the prefix) only while the token is current."""
        return await self.fence.xadd(self.fencing_token, key, fields, maxlen)

    async def fenced_unlink(self, keys: list[str]) -> int | None:
        """UNLINK `keys` (any names) only while the token is current; None when fenced out."""
        return await self.fence.unlink(self.fencing_token, keys)

    async def still_current(self) -> bool:
        return await self.fence.is_current(self.fencing_token)

    @contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[trace.Span]:
        """A child span of this run's span."""
        tracer = trace.get_tracer("lightsched.jobs")
        with tracer.start_as_current_span(name, attributes=attributes or None) as span:
            yield span
