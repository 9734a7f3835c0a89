"""The Celery bridge against a real Celery worker on a real Redis broker, and against Celery's own schedule maths."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from datetime import timezone as dt_timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from celery import Celery
from celery.beat import ScheduleEntry
from celery.schedules import crontab, schedule, solar
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from jobs import FencedOut
from jobs.celery_bridge import (
    HEADER_FENCING_TOKEN,
    HEADER_JOB_ID,
    HEADER_LEASE_ID,
    HEADER_SCHEDULED_TIME,
    BeatScheduleError,
    CeleryTaskJob,
    celery_task,
    load_beat_schedule,
    slot_task_id,
)
from leader import Identity, RedisLeaseStore
from scheduler.context import JobContext
from scheduler.keys import Keyspace
from scheduler.registry import JobDefinitionError, JobRegistry
from tests.support.celery_app import BROKER_ENV, RECORD_TASK
from tests.support.redis_servers import ServerLike
from tests.support.replicas import wait_for

REPO = Path(__file__).resolve().parents[2]
WORKER_DEADLINE_S = 60.0  # worker boot + one task, on 2 noisy cores




@pytest.fixture
def queue() -> str:
    return f"lightsched-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def worker(redis_server: ServerLike, queue: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real `celery worker` consuming `queue` from the test's Redis; SIGTERM (warm shutdown) at the end."""
    env = {**os.environ, BROKER_ENV: redis_server.url, "PYTHONPATH": str(REPO)}
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "celery", "-A", "tests.support.celery_app", "worker",
            "--pool", "solo", "--concurrency", "1", "-Q", queue, "--loglevel", "warning",
            "-n", f"{queue}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
        ],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


async def lease_token(client: Redis, keys: Keyspace, replica_id: str) -> tuple[tuple[int, str], str]:
    """Acquire the lease: ((token, lease id), the stored value)."""
    store = RedisLeaseStore(client, keys)
    res = await store.try_acquire(Identity(replica_id, "test-host", os.getpid()), 60_000, datetime.now(UTC).isoformat())
    assert res.acquired and res.token is not None and res.value is not None and res.lease_id is not None
    return (res.token, res.lease_id), res.value


def make_ctx(client: Redis, keys: Keyspace, job_id: str, lease: tuple[int, str], slot: datetime) -> JobContext:
    return JobContext(
        job_id=job_id,
        replica_id="replica-a",
        fencing_token=lease[0],
        lease_id=lease[1],
        scheduled_time=slot,
        redis=client,
        keys=keys,
        log=logging.LoggerAdapter(logging.getLogger("test.celery_bridge"), {}),
    )


def queued_messages(server: ServerLike, queue: str) -> list[dict[str, Any]]:
    """The task messages waiting in a kombu Redis queue (a list named after the queue)."""
    with SyncRedis.from_url(server.url) as client:
        return [json.loads(raw) for raw in client.lrange(queue, 0, -1)]


# --- sends -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_scheduled_send_runs_on_a_real_worker_once_per_slot(
    redis_server: ServerLike, worker: subprocess.Popen[bytes], queue: str, key_prefix: str, tmp_path: Path
) -> None:
    registry = JobRegistry()
    record_key = f"rec-{key_prefix}"
    spec = celery_task(
        registry, "celery.record", RECORD_TASK, app=redis_server.url, trigger=timedelta(minutes=5),
        args=(record_key,), kwargs={"payload": {"n": 1}}, queue=queue,
    )  # fmt: skip
    now = datetime.now(UTC)
    # A future slot, so the default expiry (the slot after it) is 5-10 minutes away.
    slot = spec.trigger.get_next_fire_time(None, now)
    next_slot = slot + timedelta(minutes=5)
    keys = Keyspace(key_prefix)
    sync = SyncRedis.from_url(redis_server.url)
    async with Redis.from_url(redis_server.url) as client:
        token, _ = await lease_token(client, keys, "replica-a")
        # Two sends of one slot (a retried send) and one of the next slot.
        await spec.func(make_ctx(client, keys, spec.id, token, slot))
        await spec.func(make_ctx(client, keys, spec.id, token, slot))
        await spec.func(make_ctx(client, keys, spec.id, token, next_slot))
    try:
        wait_for(
            lambda: int(sync.get(f"{record_key}:received") or 0) >= 3 or worker.poll() is not None,
            WORKER_DEADLINE_S,
            what="the worker to run three deliveries",
        )
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()
        executed = [json.loads(raw) for raw in sync.lrange(f"{record_key}:executed", 0, -1)]
    finally:
        sync.close()
    assert len(executed) == 2, "the repeated send of one slot must carry the same task id"
    by_slot = {datetime.fromisoformat(rec["scheduled_time"]): rec for rec in executed}
    assert set(by_slot) == {slot, next_slot}
    first = by_slot[slot]
    assert first["task_id"] == slot_task_id(key_prefix, spec.id, slot)
    assert first["task_id"] != by_slot[next_slot]["task_id"]
    assert first["fencing_token"] == token[0]
    assert first["job_id"] == spec.id
    assert first["payload"] == {"n": 1}
    assert first["routing_key"] == queue
    assert datetime.fromisoformat(first["expires"]) == next_slot  # default: until the next slot


@pytest.mark.anyio
async def test_stale_token_sends_nothing(redis_server: ServerLike, queue: str, key_prefix: str) -> None:
    app = Celery("bridge-test", broker=redis_server.url, set_as_current=False)
    registry = JobRegistry()
    spec = celery_task(registry, "celery.stale", RECORD_TASK, app=app, trigger="*/5 * * * *", args=("x",), queue=queue)
    slot = spec.trigger.get_next_fire_time(None, datetime.now(UTC))
    keys = Keyspace(key_prefix)
    async with Redis.from_url(redis_server.url) as client:
        old_token, old_value = await lease_token(client, keys, "replica-a")
        assert await RedisLeaseStore(client, keys).release(old_value)
        new_token, _ = await lease_token(client, keys, "replica-b")
        assert new_token[0] > old_token[0]

        with pytest.raises(FencedOut, match=f"fencing token {old_token[0]} is no longer current"):
            await spec.func(make_ctx(client, keys, spec.id, old_token, slot))
        assert queued_messages(redis_server, queue) == []

        # Control: the same job with the current token does publish, with the slot's headers.
        await spec.func(make_ctx(client, keys, spec.id, new_token, slot))
    [message] = queued_messages(redis_server, queue)
    headers = message["headers"]
    assert headers["id"] == slot_task_id(key_prefix, spec.id, slot)
    assert headers["task"] == RECORD_TASK
    assert headers[HEADER_FENCING_TOKEN] == new_token[0]
    assert headers[HEADER_LEASE_ID] == new_token[1]
    assert headers[HEADER_JOB_ID] == spec.id
    assert datetime.fromisoformat(headers[HEADER_SCHEDULED_TIME]) == slot


@pytest.mark.anyio
async def test_a_slot_past_its_expiry_is_not_sent(redis_server: ServerLike, queue: str, key_prefix: str) -> None:
    registry = JobRegistry()
    spec = celery_task(
        registry, "celery.late", RECORD_TASK, app=redis_server.url, trigger="1m", args=("x",), queue=queue, expires=60
    )
    keys = Keyspace(key_prefix)
    async with Redis.from_url(redis_server.url) as client:
        token, _ = await lease_token(client, keys, "replica-a")
        late_slot = spec.trigger.get_next_fire_time(None, datetime.now(UTC)) - timedelta(minutes=10)
        await spec.func(make_ctx(client, keys, spec.id, token, late_slot))
        assert queued_messages(redis_server, queue) == []
        await spec.func(make_ctx(client, keys, spec.id, token, late_slot + timedelta(minutes=10)))
    [message] = queued_messages(redis_server, queue)
    assert datetime.fromisoformat(message["headers"]["expires"]) == late_slot + timedelta(minutes=11)


def test_without_celery_the_module_imports_and_use_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['celery'] = None\n"
        "import jobs.celery_bridge as b\n"
        "from scheduler.registry import JobRegistry\n"
        "try:\n"
        "    b.celery_task(JobRegistry(), 'j', 't', app='redis://127.0.0.1:1/0', trigger='1m')\n"
        "except b.CeleryNotInstalled as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "the Celery bridge needs Celery: pip install 'lightsched[celery]'"


def test_broker_url_never_appears_in_reprs_or_errors() -> None:
    url = "redis://:hunter2-secret@127.0.0.1:1/0"
    registry = JobRegistry()
    spec = celery_task(registry, "celery.secret", "t.x", app=url, trigger="1m")
    assert "hunter2" not in repr(spec) and "hunter2" not in repr(spec.func)
    with pytest.raises(JobDefinitionError, match="broker URL") as err:
        celery_task(registry, "celery.bad", "t.x", app=url.replace("://", ":"), trigger="1m")
    assert "hunter2" not in str(err.value)


# --- beat_schedule -> the fire times Celery computes -----------------------------------------


def celery_app(tz: str | None) -> Celery:
    app = Celery("beat-test", set_as_current=False)
    if tz:
        app.conf.timezone = tz
    return app


def celery_next(app: Celery, name: str, entry: dict[str, Any], last_run_at: datetime) -> datetime:
    """When beat runs `entry` next after a run at `last_run_at`: beat's own entry, schedule and maths."""
    beat_entry = ScheduleEntry(**dict(entry, name=name, app=app))
    sched = beat_entry.schedule
    sched.nowfun = lambda: last_run_at
    # remaining_estimate is real elapsed time (it compares in UTC), so add it in UTC.
    return last_run_at.astimezone(UTC) + sched.remaining_estimate(last_run_at)


CRONTAB_CASES = {
    "every quarter hour (*/15)": (crontab(minute="*/15"), None),
    "weekdays at 09:00 (day_of_week mon-fri)": (crontab(minute=0, hour=9, day_of_week="mon-fri"), None),
    "sundays as 0 (day_of_week=0)": (crontab(minute=30, hour=4, day_of_week=0), None),
    "first monday of the month (both day fields)": (crontab(minute=0, hour=9, day_of_week=1, day_of_month="1-7"), None),
    "New York across DST changes": (crontab(minute=30, hour="1,2,3"), "America/New_York"),
    "Kolkata half-hour offset, saturdays": (crontab(minute="5,35", hour="*/6", day_of_week="sat"), "Asia/Kolkata"),
    "31st of the month in Berlin": (crontab(minute=5, hour=3, day_of_month=31), "Europe/Berlin"),
}


@pytest.mark.parametrize("case", list(CRONTAB_CASES))
def test_crontab_entries_fire_when_celery_beat_would(case: str) -> None:
    cron, tz = CRONTAB_CASES[case]
    app = celery_app(tz)
    entry = {"task": "t.x", "schedule": cron}
    registry = JobRegistry()
    [spec] = load_beat_schedule(registry, {"entry": entry}, app=app)
    trigger = spec.trigger

    # Compared in UTC: Python never calls an ambiguous local time equal to a time in another zone.
    # A chain of 400 consecutive fire times, from a start in the zone through both 2024 DST changes.
    t = datetime(2024, 3, 1, 0, 7, 13, tzinfo=ZoneInfo(tz or "UTC")).astimezone(UTC)
    for _ in range(400):
        ours = trigger.get_next_fire_time(t, t).astimezone(UTC)
        assert ours == celery_next(app, "entry", entry, t), f"after {t.isoformat()}"
        t = ours
    # And from 300 reference times that are not fire times, spread over a year.
    t = datetime(2024, 1, 1, tzinfo=UTC)
    for _ in range(300):
        ours = trigger.get_next_fire_time(None, t + timedelta(microseconds=1)).astimezone(UTC)
        assert ours == celery_next(app, "entry", entry, t), f"after {t.isoformat()}"
        t += timedelta(hours=29, minutes=13, seconds=7, microseconds=500_000)


def test_celery_sunday_zero_becomes_sunday() -> None:
    registry = JobRegistry()
    [spec] = load_beat_schedule(registry, {"sun": {"task": "t", "schedule": crontab(0, 0, day_of_week=0)}}, app=celery_app(None))
    t = datetime(2024, 5, 1, tzinfo=UTC)
    for _ in range(5):
        t = spec.trigger.get_next_fire_time(None, t + timedelta(microseconds=1))
        assert t.strftime("%A %H:%M") == "Sunday 00:00"


def test_intervals_keep_beats_spacing_and_are_anchored_to_fixed_slots() -> None:
    app = celery_app("Europe/Berlin")
    beat_schedule = {
        "seconds": {"task": "t.a", "schedule": 30.0},
        "timedelta": {"task": "t.b", "schedule": timedelta(minutes=5)},
        "schedule": {"task": "t.c", "schedule": schedule(timedelta(hours=1))},
    }
    specs = {s.id: s for s in load_beat_schedule(JobRegistry(), beat_schedule, app=app)}
    for name, entry in beat_schedule.items():
        trigger = specs[f"celery.{name}"].trigger
        first = trigger.get_next_fire_time(None, datetime(2024, 3, 31, 0, 59, 59, 123456, tzinfo=UTC))
        period_s = trigger.interval_length
        # Anchored: a slot is a whole multiple of the interval since the epoch, whatever "now" was.
        assert first.timestamp() % period_s == 0
        # From a run at a slot, beat's next run (last run + interval) is our next slot, across DST too.
        t = first
        for _ in range(200):
            ours = trigger.get_next_fire_time(t, t + timedelta(microseconds=1))
            assert ours == celery_next(app, name, entry, t)
            t = ours


def test_entry_options_args_and_kwargs_carry_over() -> None:
    app = celery_app(None)
    registry = JobRegistry()
    [spec] = load_beat_schedule(
        registry,
        {
            "send report": {
                "task": "reports.send",
                "schedule": crontab(minute=0, hour=7),
                "args": [1, 2],
                "kwargs": {"to": "ops"},
                "options": {"queue": "reports", "expires": 120, "priority": 5},
            }
        },
        app=app,
        prefix="beat.",
        timeout=30,
    )
    job = spec.func
    assert isinstance(job, CeleryTaskJob)
    assert spec.id == "beat.send_report"
    assert (job.task_name, job.args, job.kwargs, job.queue, job.expires) == ("reports.send", (1, 2), {"to": "ops"}, "reports", 120.0)
    assert job.send_options == {"priority": 5}
    assert spec.options.timeout == 30
    assert job.app is app


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"task": "t", "schedule": "every day"}, "unsupported schedule type builtins.str"),
        ({"task": "t"}, "needs both 'task' and 'schedule'"),
        ({"task": "t", "schedule": 10, "every": 3}, "unknown key(s) every"),
        ({"task": "t", "schedule": 10, "options": {"eta": 1}}, "unknown send option(s) eta"),
        ({"task": "t", "schedule": 10, "options": {"expires": -5}}, "expires must be positive"),
        ({"task": "t", "schedule": 0}, "interval must be positive"),
        ({"task": "t", "schedule": 10, "args": "abc"}, "args must be a list or tuple"),
    ],
)
def test_bad_entries_are_refused_naming_the_entry(entry: dict[str, Any], message: str) -> None:
    registry = JobRegistry()
    with pytest.raises(BeatScheduleError) as err:
        load_beat_schedule(registry, {"ok": {"task": "t", "schedule": 5}, "broken-one": entry}, app=celery_app(None))
    assert str(err.value).startswith("beat_schedule entry 'broken-one': ")
    assert message in str(err.value)
    assert len(registry) == 0, "all or nothing: the good entry must not be registered either"


def test_solar_is_refused_naming_the_entry() -> None:
    # solar's constructor needs the `ephem` package; the bridge only looks at the type.
    sunset = solar.__new__(solar)
    sunset.event, sunset.lat, sunset.lon = "sunset", 52.5, 13.4
    with pytest.raises(BeatScheduleError, match=r"^beat_schedule entry 'lights-on': solar schedules .* not supported"):
        load_beat_schedule(JobRegistry(), {"lights-on": {"task": "t", "schedule": sunset}}, app=celery_app(None))


def test_entry_names_that_clash_after_cleaning_are_refused() -> None:
    beat_schedule = {"a b": {"task": "t", "schedule": 5}, "a/b": {"task": "t", "schedule": 5}}
    with pytest.raises(BeatScheduleError, match="'a/b': job id 'celery.a_b' is also the id of entry 'a b'"):
        load_beat_schedule(JobRegistry(), beat_schedule, app=celery_app(None))


def test_time_zones_must_be_named_zones() -> None:
    entries = {"x": {"task": "t", "schedule": crontab(minute=0, hour=12)}}
    app = celery_app("Asia/Tokyo")
    # A fixed offset would silently drop daylight saving time.
    with pytest.raises(ValueError, match="has no IANA name"):
        load_beat_schedule(JobRegistry(), entries, app=app, timezone=dt_timezone(timedelta(hours=2)))
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        load_beat_schedule(JobRegistry(), entries, app=app, timezone="Mars/Olympus")
    [spec] = load_beat_schedule(JobRegistry(), entries, app=app, timezone="Europe/Paris")
    assert str(spec.trigger.timezone) == "Europe/Paris"
    [spec] = load_beat_schedule(JobRegistry(), entries, app=app)
    assert str(spec.trigger.timezone) == "Asia/Tokyo"
