"""The short form of the chaos suite on a replicated Redis (runs in `make test`): three replicas
with WAIT_REPLICAS=1 on a master whose one replica replicates through a cuttable link, running
the tick job and `slow`, a plain-function job longer than its interval. Each fault once; after
each, every invariant of `scenarios.check_invariants` holds over the whole history so far."""

from __future__ import annotations

import pytest

from .scenarios import ChaosFleet, InvariantReport, run_fault

pytestmark = pytest.mark.slow


def _ok(report: InvariantReport) -> None:
    assert report.problems() == []
    assert report.runs > 0


def test_lossy_failovers_after_the_replication_link_is_cut(replicated_fleet: ChaosFleet) -> None:
    """Twice: the promoted node is the master the second failover kills. The link is cut just
    before a slot falls due, so that slot's claim is the one no replica acknowledges."""
    unreplicated = 0
    for n in (1, 2):
        measured, report = run_fault(replicated_fleet, "redis_failover")
        _ok(report)
        assert measured["failover"] == n, measured
        assert report.failovers == n
        unreplicated += measured["unreplicated"]
    assert unreplicated >= 1, "no claim was left unacknowledged by the cut: the hole was not sampled"


def test_a_lease_lost_mid_thread_run_and_won_back_by_the_same_replica(replicated_fleet: ChaosFleet) -> None:
    measured, report = run_fault(replicated_fleet, "steal_lease", same_replica=True)
    _ok(report)
    assert measured["won_back_by"] == measured["victim"], measured
    assert measured["thread_running_when_won_back"], f"precondition: the old thread still ran: {measured}"
    assert measured["stolen_run_write_accepted"] is False, measured
    assert measured["next_run_after_thread_s"] is not None and measured["next_run_after_thread_s"] >= 0, measured


def test_manual_requests_during_scheduled_runs(replicated_fleet: ChaosFleet) -> None:
    measured, report = run_fault(replicated_fleet, "manual_requests", count=3, run_s=0.4)
    _ok(report)
    assert measured["states"] == {"done": measured["requests"]}, measured
    assert measured["outcomes"] == {"success": measured["requests"]}, measured
