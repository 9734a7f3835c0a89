"""What the elector needs from a lease store: a small protocol, like client-go's resourcelock.

Guarantees: each method is one atomic operation on the store (plus an optional
replication wait). The elector never sees a Redis client, only this protocol.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol

__all__ = ["AcquireResult", "Identity", "LeaseHolder", "LeaseStore", "StoreError", "StoreRejected", "StoreUnavailable"]


class StoreError(Exception):
    """A lease operation failed; whether it took effect in the store is unknown."""


class StoreUnavailable(StoreError, ConnectionError):
    """The store did not answer, or answered with a transient error (LOADING, READONLY, timeout)."""


class StoreRejected(StoreError):
    """The store refused the operation for a reason a retry alone will not fix
    (ACL NOPERM, out of memory, a script error): an operator has to act. The
    elector still retries, so it recovers once they have.
    """


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
            )
        except (ValueError, TypeError, KeyError, RecursionError):
            # RecursionError: deeply nested JSON that something else wrote.
            return cls(raw=raw, foreign=True)


@dataclass(frozen=True, slots=True)
class AcquireResult:
    """Outcome of one acquire attempt.

    When `acquired`, `value` is the exact stored string and `token` its fencing
    token. Otherwise `holder` is whoever holds the key and `holder_pttl_ms` its
    remaining TTL in Redis (-1: no TTL, a foreign key).
    """

    acquired: bool
    value: str | None = None
    token: int | None = None
    holder: LeaseHolder | None = None
    holder_pttl_ms: int | None = None


class LeaseStore(Protocol):
    async def try_acquire(self, identity: Identity, ttl_ms: int, acquired_at: str) -> AcquireResult:
        """Take the lease if nobody holds it, minting the next fencing token."""

    async def renew(self, value: str, ttl_ms: int) -> bool:
        """Extend the lease if the key still holds exactly `value`."""

    async def release(self, value: str) -> bool:
        """Delete the lease if it still holds `value`, and tell the standbys."""

    async def read(self) -> tuple[LeaseHolder | None, int | None]:
        """The current holder and its remaining TTL in ms, or (None, None)."""

    async def listen(self, on_released: object, on_handoff: object) -> None:
        """Run until cancelled, calling `on_released()` when a lease is released and
        `on_handoff(token)` when an operator asks the leader with `token` to hand off.
        """

    async def request_handoff(self, token: int) -> int:
        """Ask the leader holding `token` to step down; returns how many listeners heard."""

    async def aclose(self) -> None:
        """Close connections owned by the store."""
