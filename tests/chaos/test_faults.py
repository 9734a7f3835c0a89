"""The short form of the chaos suite (runs in `make test`): every fault once,
briefly, on one fleet of three real replicas on one Redis; after each, every
invariant of `scenarios.check_invariants` holds over the whole history so far.
The faults that need a replicated Redis (lossy failover with WAIT_REPLICAS=1)
or the plain-function job (a lease lost mid thread run), and manual requests,
run on a second fleet: test_failover_faults.py."""

from __future__ import annotations

import pytest

from .scenarios import ChaosFleet, InvariantReport, run_fault

pytestmark = pytest.mark.slow


def _ok(report: InvariantReport) -> None:
    assert report.problems() == []
    assert report.runs > 0


def test_kill_leader(fleet: ChaosFleet) -> None:
    measured, report = run_fault(fleet, "kill_leader")
    _ok(report)
    assert measured["new_leader"] != measured["killed"]


def test_sigstop_leader_past_ttl(fleet: ChaosFleet) -> None:
    measured, report = run_fault(fleet, "sigstop_leader")
    _ok(report)
    assert measured["new_leader"] != measured["stopped"]
    assert measured["its_writes_accepted"] == 0
    assert measured["old_leader_step_down"], "the frozen leader never logged its step-down"


def test_partition_of_the_leader_only(fleet: ChaosFleet) -> None:
    measured, report = run_fault(fleet, "partition_leader")
    _ok(report)
    assert measured["new_leader"] != measured["partitioned"]
    assert measured["old_leader_step_down"], "the partitioned leader never stepped down"


def test_redis_restarted_empty(fleet: ChaosFleet) -> None:
    _, report = run_fault(fleet, "redis_restart_empty")
    _ok(report)


def test_redis_down_for_three_ttls(fleet: ChaosFleet) -> None:
    measured, report = run_fault(fleet, "redis_down")
    _ok(report)
    assert measured["leaders_stepped_down"], "nobody stepped down while Redis was gone"


def test_redis_paused_just_past_the_socket_timeout(fleet: ChaosFleet) -> None:
    """Replies lost after their commands ran; redis-py re-sends them."""
    measured, report = run_fault(fleet, "redis_pause", pause_x=1.6)
    _ok(report)
    assert measured["slot_runs"] <= 1, measured


def test_rapid_graceful_handoffs(fleet: ChaosFleet) -> None:
    measured, report = run_fault(fleet, "handoffs", count=20)
    _ok(report)
    assert measured["samples"] >= 15


def test_wall_clock_jump_of_the_leader(fleet: ChaosFleet) -> None:
    """Forward beyond MAX_CLOCK_SKEW_MS (1 s: slots ahead of Redis' clock are deferred), then back."""
    measured, report = run_fault(fleet, "clock_jump", jump_s=3.0)
    _ok(report)
    assert "skipped" not in measured, measured
    assert measured["kept_lead_forward"] and measured["kept_lead_back"], measured
