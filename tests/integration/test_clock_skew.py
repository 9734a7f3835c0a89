"""A leader whose wall clock steps ahead (real processes, `tests.chaos.clockskew`).

Its scheduler then believes slots up to the step are due. Claimed, they would
run early and, worse, raise the job's high-water mark into the future: after
the clock is corrected (or another replica takes over) every replica would
refuse the real slots as already claimed, without counting them missed. The
claim refuses slots beyond `MAX_CLOCK_SKEW_MS` of Redis' own clock, and a
burst of such slots waits for Redis time instead.

Checked through the audit stream, whose entry ids are Redis' own clock at the
moment each run wrote: no run earlier than its slot (beyond the bound), and no
hole in the slot grid.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.chaos.clockskew import CLOCK_FILE_ENV
from tests.support.redis_servers import ServerLike
from tests.support.replicas import Fleet, wait_for

pytestmark = pytest.mark.slow

INTERVAL_S = 0.5
JUMP_S = 15.0
MAX_SKEW_MS = 1000


def test_a_leader_whose_clock_jumps_ahead_neither_runs_early_nor_blocks_its_successor(
    redis_server: ServerLike, tmp_path: Path
) -> None:
    clock_file = tmp_path / "offset-s"
    clock_file.write_text("0")
    env = {"LIGHTSCHED_RECORDING_AUDIT": "1", "LIGHTSCHED_RECORDING_COALESCE": "false",
           "LIGHTSCHED_MAX_CLOCK_SKEW_MS": str(MAX_SKEW_MS), "LIGHTSCHED_MISFIRE_GRACE_TIME": "30"}
    with Fleet(redis_server.url, tmp_path, 2, http=False, interval_s=INTERVAL_S, run_s=0.01, extra_env=env) as fleet:
        skewed, other = fleet.replicas
        # Only the skewed replica runs at first, so it leads; then its standby joins.
        other.stop()
        skewed.stop()
        skewed.module = "tests.chaos.clockskew"
        skewed.env[CLOCK_FILE_ENV] = str(clock_file)
        skewed.start()
        fleet.wait_for_leader()
        fleet.wait_for_runs(3)
        other.start()

        clock_file.write_text(repr(JUMP_S))
        skewed.signal(signal.SIGUSR2)
        before = len(fleet.runs())
        fleet.wait_for_runs(before + 6, timeout_s=30)  # it keeps running, in step with real time
        clock_file.write_text("0")  # the clock is corrected (NTP) ...
        skewed.signal(signal.SIGUSR2)
        rec = fleet.leader_record()
        assert rec is not None and rec["replica_id"] == skewed.name
        # ... and the standby takes over: it must run the next slots, not find them claimed.
        fleet.client.publish("{lightsched}:handoff", str(rec["fencing_token"]))
        wait_for(lambda: (fleet.leader_record() or {}).get("replica_id") == other.name, 20, what="the handoff")
        after = len(fleet.runs())
        fleet.wait_for_runs(after + 6, timeout_s=30, where=lambda r: r["replica"] == other.name)

        audit = fleet.client.xrange("{lightsched}:data:tick:audit")
        refused = [line for line in other.events("slot_claim_refused") if line.get("reason") == "claimed"]
        missed = sum(int(line.get("count", 1)) for r in fleet.replicas for line in r.events("slot_missed"))
    written = sorted((int(f[b"slot_ms"]), int(eid.split(b"-")[0])) for eid, f in audit)
    early = [(slot, at) for slot, at in written if at < slot - MAX_SKEW_MS]
    assert early == [], f"runs started before their slot by Redis' clock: {early[:5]}"
    assert refused == [], f"the successor found real slots claimed already: {json.dumps(refused[:3])}"
    slots = [slot for slot, _ in written]
    step = round(INTERVAL_S * 1000)
    holes = [s for s in range(slots[0], slots[-1], step) if s not in set(slots)]
    assert len(holes) <= missed, f"slots neither run nor counted missed: {holes[:10]} (missed counted: {missed})"
