"""What the elector needs from a lease store: a small protocol, like client-go's resourcelock.

Guarantees: each method is one atomic operation on the store (plus an optional
replication wait). The elector never sees a Redis client, only this protocol.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from collections.abc import Callable
from typing import Protocol

__all__ = [
    "AcquireResult",
    "Identity",
    "LeaseHolder",
    "LeaseStore",
    "StoreError",
    "StoreNotReplicated",
    "StoreRejected",
    "StoreUnavailable",
]


class StoreError(Exception):
    """A lease operation failed; whether it took effect in the store is unknown."""


class StoreUnavailable(StoreError, ConnectionError):
    """The store did not answer, or answered with a transient error (LOADING, READONLY, timeout)."""


class StoreRejected(StoreError):
    """The store refused the operation for a reason a retry alone will not fix
    (ACL NOPERM, out of memory, a script error): an operator has to act. The
    elector still retries, so it recovers once they have.
    """


class StoreNotReplicated(StoreError):
    """The write landed on the primary, but fewer replicas than `wait_replicas`
    acknowledged it in time: a failover may lose it, so it must not be acted on."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who contends: written into the leader key for humans (`redis-cli GET`)."""

    replica_id: str
    host: str
    pid: int


@dataclass(frozen=True, slots=True)
class LeaseHolder:
    """A decoded leader key. `foreign` is set when the value is not one of ours."""

    raw: str
    replica_id: str | None = None
    host: str | None = None
    pid: int | None = None
    fencing_token: int | None = None
    acquired_at: str | None = None
    lease_id: str | None = None  # random per acquisition; None in a lease written by lightsched < 0.2
    foreign: bool = False

    @classmethod
    def parse(cls, raw: str | bytes) -> LeaseHolder:
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise TypeError
            token = data["fencing_token"]
            if not isinstance(token, int) or isinstance(token, bool):
                raise TypeError
            return cls(
                raw=raw,
                replica_id=str(data["replica_id"]),
                host=str(data.get("host", "")),
                pid=int(data.get("pid", 0)),
                fencing_token=token,
                acquired_at=str(data.get("acquired_at", "")),
                lease_id=data["lease_id"] if isinstance(data.get("lease_id"), str) else None,
            )
        except (ValueError, TypeError, KeyError, RecursionError):
            # RecursionError: deeply nested JSON that something else wrote.
            return cls(raw=raw, foreign=True)


@dataclass(frozen=True, slots=True)
class AcquireResult:
    """Outcome of one acquire attempt.

    When `acquired`, `value` is the exact stored string, `token` its fencing
    token and `lease_id` the attempt's random id (the term's identity with the
    token). Otherwise `holder` is whoever holds the key and `holder_pttl_ms` its
    remaining TTL in Redis (-1: no TTL, a foreign key).
    """

    acquired: bool
    value: str | None = None
    token: int | None = None
    lease_id: str | None = None
    holder: LeaseHolder | None = None
    holder_pttl_ms: int | None = None


class LeaseStore(Protocol):
    async def try_acquire(
        self, identity: Identity, ttl_ms: int, acquired_at: str, lease_id: str | None = None
    ) -> AcquireResult:
        """Take the lease if nobody holds it, minting the next fencing token.

        `lease_id` names this attempt (a fresh random one when None): an attempt
        that finds the key holding its own lease id (its reply was lost and the
        command re-sent) counts as acquired.
        """

    async def renew(self, value: str, ttl_ms: int) -> bool:
        """Extend the lease if the key still holds exactly `value`.

        Raises `StoreNotReplicated` when the renew landed but too few replicas
        acknowledged it.
        """

    async def release(self, value: str) -> bool:
        """Delete the lease if it still holds `value`, and tell the standbys."""

    async def read(self) -> tuple[LeaseHolder | None, int | None]:
        """The current holder and its remaining TTL in ms, or (None, None)."""

    async def listen(
        self,
        on_released: Callable[[], None],
        on_handoff: Callable[[str], None],
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        """Run until cancelled, calling `on_released()` when a lease is released,
        `on_handoff(fence)` when an operator asks the leader holding `fence`
        (`<token>:<lease_id>`, or a bare token) to hand off, and `on_error(exc)`
        each time the subscription breaks (it is then renewed).
        """

    async def request_handoff(self, fence: str) -> int:
        """Ask the leader holding `fence` to step down; returns how many listeners heard
        (every replica listens: the leader's own acknowledgement is what confirms it)."""

    async def aclose(self) -> None:
        """Close connections owned by the store."""
