from datetime import UTC, datetime, timedelta

import pytest
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from scheduler import JobContext, JobDefinitionError, JobRegistry
from scheduler.registry import parse_schedule


async def job(ctx: JobContext) -> None:
    return None


def test_decorator_registers_and_returns_the_function() -> None:
    reg = JobRegistry()
    decorated = reg.job("probe", trigger=IntervalTrigger(seconds=60), timeout=10)(job)
    assert decorated is job
    spec = reg.get("probe")
    assert spec.options.timeout == 10 and spec.is_coroutine and spec.enabled
    assert reg.ids == ["probe"]


def test_plain_function_is_not_a_coroutine() -> None:
    reg = JobRegistry()
    spec = reg.add("sync", lambda ctx: None, trigger="5s")
    assert not spec.is_coroutine


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"trigger": "61 * * * *"}, "bad crontab"),
        ({"trigger": "not a schedule"}, "bad crontab"),
        ({"trigger": "5s", "timout": 3}, "unknown option 'timout'"),
        ({"trigger": "5s", "retries": -1}, "option 'retries'"),
        ({"trigger": "5s", "timeout": 0}, "option 'timeout'"),
        ({"trigger": 42}, "trigger must be"),
        ({"trigger": "0 3 * * *", "timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"trigger": timedelta(0)}, "interval must be positive"),
    ],
)
def test_bad_definitions_name_the_job(kwargs: dict, fragment: str) -> None:
    reg = JobRegistry()
    with pytest.raises(JobDefinitionError) as info:
        reg.add("cleanup", job, **kwargs)
    assert "'cleanup'" in str(info.value)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)
    assert "cleanup" not in reg


def test_duplicate_and_non_callable_are_refused() -> None:
    reg = JobRegistry()
    reg.add("a", job, trigger="1m")
    with pytest.raises(JobDefinitionError, match="'a': already registered"):
        reg.add("a", job, trigger="1m")
    with pytest.raises(JobDefinitionError, match="'b': 3 is not callable"):
        reg.add("b", 3, trigger="1m")  # type: ignore[arg-type]
    with pytest.raises(JobDefinitionError, match="id must be"):
        reg.add("bad id", job, trigger="1m")


@pytest.mark.parametrize(
    ("expr", "kind", "seconds"),
    [("30s", IntervalTrigger, 30), ("5m", IntervalTrigger, 300), ("every 2h", IntervalTrigger, 7200),
     ("250ms", IntervalTrigger, 0.25), ("*/5 * * * *", CronTrigger, None)],
)
def test_schedule_strings(expr: str, kind: type, seconds: float | None) -> None:
    trigger = parse_schedule(expr)
    assert isinstance(trigger, kind)
    if seconds is not None:
        assert trigger.interval.total_seconds() == seconds  # type: ignore[attr-defined]


def test_crontab_string_honours_timezone() -> None:
    reg = JobRegistry()
    spec = reg.add("nightly", job, trigger="0 3 * * *", timezone="Europe/Berlin")
    nxt = spec.trigger.get_next_fire_time(None, datetime(2026, 7, 1, 12, tzinfo=UTC))
    assert nxt is not None and nxt.astimezone(UTC).hour == 1  # 03:00 CEST


def test_settings_overrides_replace_schedules_and_disable() -> None:
    reg = JobRegistry()
    reg.add("a", job, trigger="1m")
    reg.add("b", job, trigger="1m")
    out = reg.configured({"a": "10s"}, frozenset({"b"}))
    assert out.get("a").trigger.interval.total_seconds() == 10  # type: ignore[attr-defined]
    assert out.get("a").schedule_source == "settings"
    assert not out.get("b").enabled
    assert reg.get("b").enabled, "the original registry is unchanged"
    with pytest.raises(LookupError, match="unknown jobs: typo"):
        reg.configured({}, frozenset({"typo"}))
    with pytest.raises(JobDefinitionError, match="'a': bad crontab"):
        reg.configured({"a": "nope nope"}, frozenset())


def test_unknown_job_lookup_lists_known() -> None:
    reg = JobRegistry()
    reg.add("a", job, trigger="1m")
    with pytest.raises(LookupError, match=r"unknown job 'zz' \(known: a\)"):
        reg.get("zz")


class _Cfg(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LIGHTSCHED_TESTJOB_")
    limit: int = Field(3, gt=0)


def test_job_config_is_validated_with_the_variable_named(monkeypatch: pytest.MonkeyPatch) -> None:
    reg = JobRegistry()
    spec = reg.add("cfg", job, trigger="1m", config=_Cfg)
    assert spec.load_config().limit == 3
    monkeypatch.setenv("LIGHTSCHED_TESTJOB_LIMIT", "-1")
    with pytest.raises(JobDefinitionError, match="'cfg': setting LIGHTSCHED_TESTJOB_LIMIT: "):
        spec.load_config()
