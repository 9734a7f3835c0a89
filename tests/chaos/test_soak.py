"""The long chaos soak (`make chaos`): a randomized fault schedule on four replicas
for `LIGHTSCHED_CHAOS_MINUTES` (default 3) minutes. The seed is printed first;
`LIGHTSCHED_CHAOS_SEED=N make chaos` replays the same schedule (the faults and
their parameters; the timing of the processes is the machine's).

The fleet runs in the safety-first configuration: Redis is a master with one
replica (`tests.support.topologies.ReplicatedRedis`) and every replica waits
for it (`WAIT_REPLICAS=1`), so lossy failovers are among the faults; the
faults that kill, pause or restart Redis act on the current master. Besides
the tick job the replicas run `slow`, a plain-function job longer than its
interval, and manual run requests are made. Every invariant is checked after
each fault, and the run ends with zero duplicates, zero overlapping runs, zero
stale writes accepted, zero slots lost within the grace and no manual request
run twice."""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from .conftest import chaos_replicated_redis
from .scenarios import ChaosFleet, check_invariants, run_fault, wait_healthy

pytestmark = pytest.mark.chaos

#: Wall-clock steps of the skewed replica, in seconds: within and beyond MAX_CLOCK_SKEW_MS (1 s),
#: and beyond the misfire grace (10 s), either way.
CLOCK_JUMPS_S = (0.5, 1.5, 3.0, 6.0, 12.0)

# (fault, weight, kwargs drawn from the rng)
SCHEDULE = [
    ("kill_leader", 3, lambda rng: {}),
    ("sigstop_leader", 3, lambda rng: {"stop_s": rng.uniform(0.5, 4.0)}),
    ("partition_leader", 3, lambda rng: {"hold_s": rng.uniform(2.0, 5.0)}),
    ("delay_leader", 2, lambda rng: {"delay_s": rng.uniform(0.05, 0.6), "hold_s": rng.uniform(1.0, 4.0)}),
    ("redis_restart_empty", 2, lambda rng: {}),
    ("redis_down", 1, lambda rng: {"down_s": rng.uniform(1.0, 6.0)}),
    ("redis_freeze", 1, lambda rng: {"frozen_s": rng.uniform(0.5, 4.0)}),
    # Each handoff drains the slow job's thread run (up to its 2 s): fewer than on one Redis.
    ("handoffs", 2, lambda rng: {"count": rng.randint(3, 12)}),
    ("clock_jump", 2, lambda rng: {"jump_s": rng.choice((-1, 1)) * rng.choice(CLOCK_JUMPS_S)}),
    ("redis_failover", 3, lambda rng: {"cut_s": rng.uniform(0.3, 3.0), "cut_before_slot_s": rng.uniform(0.0, 0.5)}),
    ("redis_pause", 2, lambda rng: {"pause_x": rng.uniform(1.2, 1.8)}),
    ("steal_lease", 2, lambda rng: {"hold_s": rng.uniform(0.2, 1.0), "same_replica": rng.random() < 0.6}),
    ("manual_requests", 2, lambda rng: {"count": rng.randint(1, 5), "run_s": rng.uniform(0.1, 0.8)}),
]


@pytest.mark.timeout(3600)
def test_randomized_fault_soak(tmp_path: Path) -> None:
    seed = int(os.environ.get("LIGHTSCHED_CHAOS_SEED") or random.SystemRandom().randrange(1, 2**31))
    minutes = float(os.environ.get("LIGHTSCHED_CHAOS_MINUTES", "3"))
    print(f"\nchaos soak: LIGHTSCHED_CHAOS_SEED={seed} LIGHTSCHED_CHAOS_MINUTES={minutes}", flush=True)
    rng = random.Random(seed)
    names = [name for name, _, _ in SCHEDULE]
    weights = [w for _, w, _ in SCHEDULE]
    params = {name: draw for name, _, draw in SCHEDULE}
    topology = chaos_replicated_redis()
    done: list[str] = []
    try:
        with ChaosFleet(topology, tmp_path, n=4, skew="r3", slow_sync=True) as fleet:
            fleet.wait_for_leader(timeout_s=60)
            wait_healthy(fleet)
            fleet.wait_for_runs(2, timeout_s=30)
            deadline = time.monotonic() + minutes * 60
            while time.monotonic() < deadline or not done:
                name = rng.choices(names, weights)[0]
                kwargs = params[name](rng)
                at = datetime.now(UTC).isoformat(timespec="milliseconds")  # to find it in the replicas' logs
                print(f"fault {len(done) + 1} at {at}: {name} {kwargs}", flush=True)
                _, report = run_fault(fleet, name, **kwargs)
                done.append(name)
                assert report.problems() == [], f"seed {seed}, after {done}: {report.problems()}"
                time.sleep(rng.uniform(0.0, 2.0))  # quiet time between faults is part of the schedule
            wait_healthy(fleet)
            final = check_invariants(fleet)
            print(json.dumps({"seed": seed, "faults": len(done), "by_fault": dict(Counter(done)),
                              "final": final.summary()}), flush=True)
            assert final.problems() == [], f"seed {seed}: {final.problems()}"
    finally:
        topology.stop()
