"""Leader election over one renewable lease with fencing tokens.

Knows nothing of APScheduler or of what the leader does: `leader.timing` is
pure, `leader.redis_store` is the only module that talks to Redis, and
`leader.elector` runs the contest with anyio.
"""

from .elector import (
    ElectionEvent,
    Elector,
    ElectorStatus,
    HandoffRequested,
    LeaderObserved,
    RenewedLate,
    RenewFailed,
    StartedLeading,
    StepDownReason,
    StoppedLeading,
)
from .keys import LeaseKeys
from .lag import LoopLagMonitor
from .redis_store import RedisLeaseStore
from .store import AcquireResult, Identity, LeaseHolder, LeaseStore, StoreError, StoreRejected, StoreUnavailable
from .timing import Clock, FakeClock, InvalidTimings, LeaseTerm, LeaseTimings, SystemClock

__all__ = [
    "AcquireResult",
    "Clock",
    "ElectionEvent",
    "Elector",
    "ElectorStatus",
    "FakeClock",
    "HandoffRequested",
    "Identity",
    "InvalidTimings",
    "LeaderObserved",
    "LeaseHolder",
    "LeaseKeys",
    "LeaseStore",
    "LeaseTerm",
    "LeaseTimings",
    "LoopLagMonitor",
    "RedisLeaseStore",
    "RenewFailed",
    "RenewedLate",
    "StartedLeading",
    "StepDownReason",
    "StoppedLeading",
    "StoreError",
    "StoreRejected",
    "StoreUnavailable",
    "SystemClock",
]
