"""Leader election over one renewable lease with fencing tokens.

Knows nothing of APScheduler or of what the leader does: `leader.timing` is
pure, `leader.redis_store` is the only module that talks to Redis, and
`leader.elector` runs the contest with anyio.
"""

from .elector import (
    AcquireFailed,
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
from .fence import FENCE_CHECK_LUA, fence_arg, fenced_script, new_lease_id
from .keys import LeaseKeys
from .lag import LoopLagMonitor
from .redis_scripts import run_scripts
from .redis_store import RedisLeaseStore
from .store import (
    AcquireResult,
    Identity,
    LeaseHolder,
    LeaseStore,
    StoreError,
    StoreNotReplicated,
    StoreRejected,
    StoreUnavailable,
)
from .timing import Clock, FakeClock, InvalidTimings, LeaseTerm, LeaseTimings, SystemClock

__all__ = [
    "FENCE_CHECK_LUA",
    "AcquireFailed",
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
    "StoreNotReplicated",
    "StoreRejected",
    "StoreUnavailable",
    "SystemClock",
    "fence_arg",
    "fenced_script",
    "new_lease_id",
    "run_scripts",
]
