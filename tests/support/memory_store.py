"""An in-memory `LeaseStore` on a `FakeClock`: the fast first tier of elector tests.

It keeps the lease semantics of `leader.redis_store` (the acquire script's
token floor and own-attempt recognition, renew and release comparing the whole
value, expiry by TTL) on the injected clock, so table-driven tests can step an
elector through its decisions without Redis or real time. Faults are injected
per call with `script`: a list of actions consumed by the next calls of one
operation (`"error"`, `"lost_reply"`, `"unreplicated"`, or a callable run
before the operation).

Does not replace the real-Redis tier (tests/integration): it has no network,
no Lua and no replication; it is a model of what the elector may observe.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from leader import AcquireResult, FakeClock, Identity, LeaseHolder, StoreNotReplicated, StoreUnavailable, new_lease_id

__all__ = ["InMemoryLeaseStore"]

Action = str | Callable[[], None]


@dataclass
class InMemoryLeaseStore:
    clock: FakeClock
    time_ms_offset: int = 1_700_000_000_000  # "Redis TIME" = this + the fake monotonic clock
    value: str | None = None
    expires_mono: float = 0.0
    last_token: int = 0
    script: dict[str, list[Action]] = field(default_factory=dict)
    calls: list[tuple[str, Any]] = field(default_factory=list)
    released: int = 0

    # -- state --------------------------------------------------------------------------

    def _live(self) -> str | None:
        if self.value is not None and self.clock.monotonic() >= self.expires_mono:
            self.value = None
        return self.value

    def _fault(self, op: str) -> str | None:
        actions = self.script.get(op) or []
        if not actions:
            return None
        action = actions.pop(0)
        if callable(action):
            action()
            return None
        if action == "error":
            raise StoreUnavailable(f"{op}: injected error")
        return action

    def steal(self, holder: str = "thief", ttl_s: float = 10.0) -> None:
        """Someone else holds the lease now (a newer acquisition)."""
        self.last_token += 1
        self.value = json.dumps({"replica_id": holder, "fencing_token": self.last_token, "lease_id": "x"})
        self.expires_mono = self.clock.monotonic() + ttl_s

    # -- LeaseStore ---------------------------------------------------------------------

    async def try_acquire(
        self, identity: Identity, ttl_ms: int, acquired_at: str, lease_id: str | None = None
    ) -> AcquireResult:
        lease_id = lease_id or new_lease_id()
        fault = self._fault("acquire")
        self.calls.append(("acquire", lease_id))
        held = self._live()
        if held is not None:
            holder = LeaseHolder.parse(held)
            if holder.lease_id == lease_id:
                self.expires_mono = self.clock.monotonic() + ttl_ms / 1000
                return AcquireResult(True, value=held, token=holder.fencing_token, lease_id=lease_id)
            return AcquireResult(False, holder=holder, holder_pttl_ms=round((self.expires_mono - self.clock.monotonic()) * 1000))
        token = max(self.last_token + 1, self.time_ms_offset + round(self.clock.monotonic() * 1000))
        self.last_token = token
        self.value = json.dumps({
            "replica_id": identity.replica_id, "host": identity.host, "pid": identity.pid,
            "fencing_token": token, "lease_id": lease_id, "acquired_at": acquired_at,
        })
        self.expires_mono = self.clock.monotonic() + ttl_ms / 1000
        if fault == "lost_reply":
            raise StoreUnavailable("acquire: the reply was lost (the lease was taken)")
        if fault == "unreplicated":
            self.value = None
            return AcquireResult(False)
        return AcquireResult(True, value=self.value, token=token, lease_id=lease_id)

    async def renew(self, value: str, ttl_ms: int) -> bool:
        fault = self._fault("renew")
        self.calls.append(("renew", value))
        if self._live() != value:
            return False
        self.expires_mono = self.clock.monotonic() + ttl_ms / 1000
        if fault == "unreplicated":
            raise StoreNotReplicated("renew: injected short WAIT")
        if fault == "lost_reply":
            raise StoreUnavailable("renew: the reply was lost (the renew landed)")
        return True

    async def release(self, value: str) -> bool:
        self._fault("release")
        self.calls.append(("release", value))
        if self._live() != value:
            return False
        self.value = None
        self.released += 1
        return True

    async def read(self) -> tuple[LeaseHolder | None, int | None]:
        held = self._live()
        if held is None:
            return None, None
        return LeaseHolder.parse(held), round((self.expires_mono - self.clock.monotonic()) * 1000)

    async def listen(self, on_released: Any, on_handoff: Any, on_error: Any = None) -> None:
        await anyio.sleep_forever()

    async def request_handoff(self, fence: str) -> int:
        return 0

    async def aclose(self) -> None:
        return None
