"""What a job sees when it runs: `JobContext`.

Guarantees: `fencing_token` and `lease_id` are the identity of the lease term
under which this run started (its slot claim, or its manual request, was made
under it); `fence` is that identity as fenced scripts take it. The `fenced_*`
helpers and `run_fenced` write only while it is still the deployment's
current lease (the helpers report False/None otherwise), and with
`WAIT_REPLICAS` > 0 raise `WriteNotReplicated` for a write too few replicas
acknowledged.
Does not guarantee: that a run is never cut short; a coroutine run is
cancelled when its replica stops leading or its timeout passes (a thread run
cannot be, it is waited for).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from opentelemetry import trace
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from leader import fence_arg, fenced_script

from .fencing import Fence
from .keys import Keyspace

__all__ = ["JobContext", "JobLogger"]

_scripts: weakref.WeakKeyDictionary[Any, dict[str, AsyncScript]] = weakref.WeakKeyDictionary()


def _script_for(client: Any, lua: str) -> AsyncScript:
    """`lua` registered once per client (redis-py reloads it on NOSCRIPT)."""
    per_client = _scripts.setdefault(client, {})
    script = per_client.get(lua)
    if script is None:
        script = per_client[lua] = client.register_script(lua)
    return script


class JobLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger bound to a job whose per-call `extra=` is merged, not dropped (as 3.11's adapter does)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


@dataclass(frozen=True, slots=True)
class JobContext:
    job_id: str
    replica_id: str
    fencing_token: int  # the term's number: for logs, headers and ordering
    scheduled_time: datetime  # tz-aware fire time of this slot (a manual run: when it was asked for)
    redis: Redis  # the replica's shared asyncio client
    keys: Keyspace
    log: logging.LoggerAdapter[logging.Logger]
    config: Any = None  # the job's validated settings model, when it declares one
    params: Mapping[str, str] = field(default_factory=dict)  # `run-job --param k=v` (manual runs only)
    attempt: int = 1
    manual: bool = False
    loop_lag_s: float = 0.0  # worst event-loop lag seen by the replica since the previous run of any job
    lease_id: str = ""  # the term's random id: with the token, its identity
    trigger: str = "scheduled"  # scheduled | manual
    requested_by: str | None = None  # who asked, for a manual run
    _ops: Fence | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return (
            f"JobContext(job_id={self.job_id!r}, replica_id={self.replica_id!r}, "
            f"fencing_token={self.fencing_token}, scheduled_time={self.scheduled_time.isoformat()})"
        )

    @property
    def fence(self) -> str:
        """This run's fence, `<token>:<lease_id>`: ARGV[1] of a fenced script, and what
        another system must compare with the leader key to check a write (docs/CELERY_MIGRATION.md)."""
        return fence_arg(self.fencing_token, self.lease_id)

    def key(self, *parts: str) -> str:
        """A key for this job's own data under the deployment prefix."""
        return self.keys.data(self.job_id, *parts)

    @property
    def _fence_ops(self) -> Fence:
        if self._ops is None:
            object.__setattr__(self, "_ops", Fence(self.redis, self.keys))
        assert self._ops is not None
        return self._ops

    async def fenced_set(self, key: str, value: str | bytes, px: int | None = None) -> bool:
        """SET `key` (under the prefix) only while this run's lease is current."""
        return await self._fence_ops.set(self.fence, key, value, px)

    async def fenced_xadd(self, key: str, fields: dict[str, Any], maxlen: int) -> str | None:
        """XADD to a capped stream (under the prefix) only while the lease is current."""
        return await self._fence_ops.xadd(self.fence, key, fields, maxlen)

    async def fenced_unlink(self, keys: list[str]) -> int | None:
        """UNLINK `keys` (any names) only while the lease is current; None when fenced out."""
        return await self._fence_ops.unlink(self.fence, keys)

    async def still_current(self) -> bool:
        return await self._fence_ops.is_current(self.fence)

    async def run_fenced(self, body: str, keys: Sequence[str], args: Sequence[Any], *, what: str = "write") -> Any:
        """Run your own fenced Lua script; returns its result.

        `body` is Lua that runs after the fence check with `fenced` set (return
        early when it is true). Your `keys` are KEYS[2..] and your `args`
        ARGV[2..]: KEYS[1] and ARGV[1] are the leader key and this run's fence.
        The script must be idempotent for its caller (a command is re-sent
        after a lost reply). With WAIT_REPLICAS > 0 it is followed by WAIT and
        raises `WriteNotReplicated` when too few replicas acknowledged it.
        """
        script = _script_for(self.redis, fenced_script(body))
        return await self._fence_ops.run(script, [self.keys.leader, *keys], [self.fence, *args], what=what)

    @contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[trace.Span]:
        """A child span of this run's span."""
        tracer = trace.get_tracer("lightsched.jobs")
        with tracer.start_as_current_span(name, attributes=attributes or None) as span:
            yield span
