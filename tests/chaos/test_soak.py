"""The long chaos soak (`make chaos`): a randomized fault schedule on four replicas
for `LIGHTSCHED_CHAOS_MINUTES` (default 3) minutes. The seed is printed first;
`LIGHTSCHED_CHAOS_SEED=N make chaos` replays the same schedule. Every invariant
is checked after each fault, and the run ends with zero duplicates, zero stale
writes accepted and zero slots lost within the grace."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest

from .conftest import chaos_redis
from .scenarios import ChaosFleet, run_fault, wait_healthy

pytestmark = pytest.mark.chaos

# (fault, weight, kwargs drawn from the rng)
SCHEDULE = [
    ("kill_leader", 3, lambda rng: {}),
    ("sigstop_leader", 3, lambda rng: {"stop_s": rng.uniform(0.5, 4.0)}),
    ("partition_leader", 3, lambda rng: {"hold_s": rng.uniform(2.0, 5.0)}),
    ("delay_leader", 2, lambda rng: {"delay_s": rng.uniform(0.05, 0.6), "hold_s": rng.uniform(1.0, 4.0)}),
    ("redis_restart_empty", 2, lambda rng: {}),
    ("redis_down", 1, lambda rng: {"down_s": rng.uniform(1.0, 6.0)}),
    ("redis_freeze", 1, lambda rng: {"frozen_s": rng.uniform(0.5, 4.0)}),
    ("handoffs", 2, lambda rng: {"count": rng.randint(5, 30)}),
    ("clock_jump", 1, lambda rng: {"jump_s": rng.choice([-5.0, -2.0, 2.0, 5.0])}),
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
    server = chaos_redis()
    done: list[str] = []
    try:
        with ChaosFleet(server, tmp_path, n=4, skew="r3") as fleet:
            fleet.wait_for_leader(timeout_s=60)
            wait_healthy(fleet)
            fleet.wait_for_runs(2, timeout_s=30)
            deadline = time.monotonic() + minutes * 60
            while time.monotonic() < deadline or not done:
                name = rng.choices(names, weights)[0]
                kwargs = params[name](rng)
                print(f"fault {len(done) + 1}: {name} {kwargs}", flush=True)
                _, report = run_fault(fleet, name, **kwargs)
                done.append(name)
                assert report.problems() == [], f"seed {seed}, after {done}: {report.problems()}"
                time.sleep(rng.uniform(0.0, 2.0))  # quiet time between faults is part of the schedule
            wait_healthy(fleet)
            from .scenarios import check_invariants

            final = check_invariants(fleet)
            print(json.dumps({"seed": seed, "faults": len(done), "by_fault": {n: done.count(n) for n in set(done)},
                              "final": final.summary()}), flush=True)
            assert final.problems() == [], f"seed {seed}: {final.problems()}"
    finally:
        server.stop()
