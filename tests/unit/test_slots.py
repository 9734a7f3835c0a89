"""Slot arithmetic: where a schedule continues on a new leader, and DST."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.runtime import schedule_trigger
from scheduler.slots import FoldSafeTrigger, from_ms, plan_resume, to_ms

BERLIN = ZoneInfo("Europe/Berlin")
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def interval(seconds: float) -> IntervalTrigger:
    return IntervalTrigger(seconds=seconds, start_date=T0, timezone=UTC)


@pytest.mark.parametrize(
    ("last_offset_s", "now_offset_s", "grace_s", "next_offset_s", "missed"),
    [
        (None, 30.5, 60, 40, 0),  # never ran: first slot after now
        (30, 31, 60, 40, 0),  # takeover right after a run: the next slot, not "now"
        (30, 45, 60, 40, 0),  # slot 40 fell due during the takeover: still runs (within grace)
        (30, 200, 60, 140, 10),  # 40..130 are older than the grace: 10 missed, 140.. still run
        (30, 95, 5, 90, 5),  # small grace: 40..80 missed
    ],
)
def test_plan_resume_continues_from_the_last_claimed_slot(
    last_offset_s: float | None, now_offset_s: float, grace_s: float, next_offset_s: float, missed: int
) -> None:
    last = T0 + timedelta(seconds=last_offset_s) if last_offset_s is not None else None
    plan = plan_resume(interval(10), last, T0 + timedelta(seconds=now_offset_s), grace_s)
    assert plan.next_run_time == T0 + timedelta(seconds=next_offset_s)
    assert plan.missed == missed


@given(
    last=st.integers(min_value=0, max_value=10_000),
    gap=st.floats(min_value=0, max_value=5_000),
    grace=st.floats(min_value=0.5, max_value=600),
    step=st.integers(min_value=1, max_value=120),
)
@settings(max_examples=200, deadline=None)
def test_plan_resume_never_repeats_a_slot_and_loses_none_within_grace(last: int, gap: float, grace: float, step: int) -> None:
    last_slot = T0 + timedelta(seconds=last * step)
    now = last_slot + timedelta(seconds=gap)
    plan = plan_resume(interval(step), last_slot, now, grace)
    assert plan.next_run_time is not None
    assert plan.next_run_time > last_slot, "never a slot at or before the last claimed one"
    skipped = [last_slot + timedelta(seconds=step * (i + 1)) for i in range(plan.missed)]
    assert all(now - s > timedelta(seconds=grace) for s in skipped), "only slots past the grace are missed"
    assert plan.next_run_time == last_slot + timedelta(seconds=step * (plan.missed + 1)), "no gap in the walk"


def _walk(trigger, start: datetime, until: datetime) -> list[datetime]:
    out, prev = [], start
    while True:
        nxt = trigger.get_next_fire_time(prev, prev)
        if nxt is None or nxt > until:
            return out
        out.append(nxt)
        prev = nxt


@pytest.mark.parametrize("expr", ["30 2 * * *", "0 * * * *", "*/15 * * * *", "0 2 * * *"])
def test_dst_end_runs_no_wall_clock_slot_twice(expr: str) -> None:
    trigger = schedule_trigger(CronTrigger.from_crontab(expr, timezone=BERLIN))
    fires = _walk(trigger, datetime(2026, 10, 24, 12, tzinfo=BERLIN), datetime(2026, 10, 26, 12, tzinfo=BERLIN))
    walls = [f.astimezone(UTC).astimezone(BERLIN).replace(tzinfo=None) for f in fires]
    assert len(walls) == len(set(walls)), "a wall-clock slot ran twice in the repeated hour"
    assert walls == sorted(walls)
    instants = [to_ms(f) for f in fires]
    assert instants == sorted(set(instants))


def test_plain_apscheduler_would_run_the_repeated_slot_twice() -> None:
    """The reason FoldSafeTrigger exists (APScheduler 3.11 behaviour)."""
    raw = CronTrigger.from_crontab("30 2 * * *", timezone=BERLIN)
    fires = _walk(raw, datetime(2026, 10, 24, 12, tzinfo=BERLIN), datetime(2026, 10, 26, 12, tzinfo=BERLIN))
    walls = [f.astimezone(UTC).astimezone(BERLIN).replace(tzinfo=None) for f in fires]
    assert len(walls) != len(set(walls))


@pytest.mark.parametrize("expr", ["30 2 * * *", "0 * * * *", "*/15 * * * *"])
def test_dst_start_invents_no_slot_in_the_skipped_hour(expr: str) -> None:
    trigger = schedule_trigger(CronTrigger.from_crontab(expr, timezone=BERLIN))
    fires = _walk(trigger, datetime(2026, 3, 28, 12, tzinfo=BERLIN), datetime(2026, 3, 30, 12, tzinfo=BERLIN))
    for f in fires:
        local = f.astimezone(UTC).astimezone(BERLIN)
        assert not (local.date().isoformat() == "2026-03-29" and local.hour == 2), f"slot invented at {local}"
    instants = [to_ms(f) for f in fires]
    assert instants == sorted(set(instants)), "two slots at one instant"
    if expr == "30 2 * * *":
        days = [f.astimezone(UTC).astimezone(BERLIN).date() for f in fires]
        assert len(days) == len(set(days)) == 2, "exactly one run per day, the DST day included"


def test_resume_across_dst_end_with_injected_now() -> None:
    """A leader that took over inside the repeated hour does not re-run the 02:30 slot."""
    trigger = schedule_trigger(CronTrigger.from_crontab("30 2 * * *", timezone=BERLIN))
    ran = datetime(2026, 10, 25, 2, 30, tzinfo=BERLIN)  # first 02:30 (CEST), claimed and stored as ms
    last = from_ms(to_ms(ran))
    now = datetime(2026, 10, 25, 2, 45, fold=1, tzinfo=BERLIN)  # second 02:45 (CET), an hour later
    plan = plan_resume(trigger, last, now, grace_s=7200)
    assert plan.next_run_time is not None
    assert plan.next_run_time.astimezone(BERLIN).date().isoformat() == "2026-10-26"
    assert plan.missed == 0


def test_fold_safe_trigger_wraps_only_cron() -> None:
    assert isinstance(schedule_trigger(CronTrigger.from_crontab("* * * * *")), FoldSafeTrigger)
    it = interval(5)
    assert schedule_trigger(it) is it
