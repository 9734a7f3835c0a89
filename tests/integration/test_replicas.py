"""Three real replica processes (`python -m scheduler.cli run`) on a real redis-server."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.support.redis_servers import ServerLike
from tests.support.replicas import Fleet, wait_for

pytestmark = pytest.mark.slow
INTERVAL_S = 0.5
GRACE_S = 10.0


def metric(replica, name: str) -> float:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{replica.http_port}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} not in /metrics")


def assert_no_slot_twice(fleet: Fleet) -> None:
    slots = [r["slot_ms"] for r in fleet.runs()]
    dupes = sorted({s for s in slots if slots.count(s) > 1})
    assert not dupes, f"slots run twice: {dupes}"


def assert_none_lost_beyond_grace(fleet: Fleet) -> None:
    """Every grid slot between the first and last run either ran or was coalesced into a run within the grace."""
    runs = fleet.runs()
    step_ms = round(INTERVAL_S * 1000)
    for before, after in zip(runs, runs[1:]):
        missing = range(before["slot_ms"] + step_ms, after["slot_ms"], step_ms)
        for slot in missing:
            waited_s = after["start"] - slot / 1000
            assert waited_s <= GRACE_S, f"slot {slot} skipped and not covered within the grace ({waited_s:.1f}s)"


def test_only_the_leader_runs_and_a_kill_9_continues_the_schedule(redis_server: ServerLike, tmp_path: Path) -> None:
    with Fleet(redis_server.url, tmp_path, 3, interval_s=INTERVAL_S) as fleet:
        first = fleet.wait_for_leader()
        fleet.wait_for_runs(4)
        assert {r["replica"] for r in fleet.runs()} == {first.name}, "only the leader runs jobs"
        for other in fleet.replicas:
            if other is not first:
                code, body = other.health("/v1/health/scheduler/status")
                assert code == 200 and body["is_leader"] is False and body["leader"]["replica_id"] == first.name
        code, body = first.health("/v1/health/scheduler/status")
        assert code == 200 and body["is_leader"] is True and body["scheduler_running"] is True
        assert body["fencing_token"] == fleet.leader_record()["fencing_token"] and body["lease_left_s"] > 0
        assert body["jobs"][0]["id"] == "tick" and body["jobs"][0]["last_outcome"] == "success"
        assert "redis://" not in str(body)
        for replica, expected in ((first, 1.0), (next(r for r in fleet.replicas if r is not first), 0.0)):
            assert replica.health("/readyz")[0] == 200
            assert metric(replica, "lightsched_is_leader") == expected
        first.kill()
        killed_at = time.time()
        second = fleet.wait_for_leader(exclude={first.name})
        fleet.wait_for_runs(1, where=lambda r: r["replica"] == second.name)
        after = [r for r in fleet.runs() if r["start"] > killed_at]
        assert after and {r["replica"] for r in after} == {second.name}
        assert all(r["token"] > max(x["token"] for x in fleet.runs() if x["replica"] == first.name) for r in after)
        fleet.wait_for_runs(len(fleet.runs()) + 3)
        assert_no_slot_twice(fleet)
        assert_none_lost_beyond_grace(fleet)
        assert all(r["fenced_write"] for r in fleet.runs())
        assert not fleet.unhandled_errors()


def test_sigterm_hands_off_within_200ms_plus_the_interval(redis_server: ServerLike, tmp_path: Path) -> None:
    with Fleet(redis_server.url, tmp_path, 3, interval_s=INTERVAL_S) as fleet:
        first = fleet.wait_for_leader()
        fleet.wait_for_runs(3)
        first.signal(signal.SIGTERM)
        assert first.proc is not None and first.proc.wait(20) == 0, "graceful stop exits 0"
        second = fleet.wait_for_leader(exclude={first.name}, timeout_s=10)
        fleet.wait_for_runs(1, where=lambda r: r["replica"] == second.name)
        runs = fleet.runs()
        last_old = max(r["end"] for r in runs if r["replica"] == first.name)
        first_new = min(r["start"] for r in runs if r["replica"] == second.name)
        gap_s = first_new - last_old
        assert gap_s < 0.2 + INTERVAL_S, f"handoff gap {gap_s:.3f}s"
        released = [e for e in first.events("stopped_leading") if e.get("reason") == "released"]
        assert len(released) == 1
        assert_no_slot_twice(fleet)
        assert not fleet.unhandled_errors()


def test_a_frozen_leader_runs_nothing_after_it_wakes(redis_server: ServerLike, tmp_path: Path) -> None:
    ttl_s = 2.0
    with Fleet(redis_server.url, tmp_path, 3, interval_s=INTERVAL_S, ttl_s=ttl_s) as fleet:
        first = fleet.wait_for_leader()
        fleet.wait_for_runs(2)
        first.signal(signal.SIGSTOP)
        stopped_at = time.time()
        second = fleet.wait_for_leader(exclude={first.name}, timeout_s=15)
        wait_for(lambda: time.time() - stopped_at > ttl_s + 1, 10, what="past the TTL")
        first.signal(signal.SIGCONT)
        woke_at = time.time()
        fleet.wait_for_runs(4, where=lambda r: r["replica"] == second.name and r["start"] > woke_at)
        late = [r for r in fleet.runs() if r["replica"] == first.name and r["start"] > stopped_at]
        assert not late, f"the frozen leader ran after its lease was gone: {late}"
        wait_for(lambda: first.events("stopped_leading"), 10, what="the frozen leader stepping down")
        reason = first.events("stopped_leading")[-1]["reason"]
        assert reason in ("stalled", "lost", "renew_deadline_passed")
        refused_or_skipped = first.events("slot_claim_refused") + first.events("slot_not_started")
        for event in refused_or_skipped:
            assert event.get("reason", "fenced") == "fenced"
        assert fleet.leader_record()["replica_id"] == second.name
        assert first.alive and first.health()[0] == 200, "it goes back to standing by"
        assert_no_slot_twice(fleet)
        assert not fleet.unhandled_errors()
