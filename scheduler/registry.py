"""The job registry: what runs, when, and with which options.

Guarantees: every job is checked when it is registered; a duplicate id, a bad
crontab, a non-callable or an unknown option raises `JobDefinitionError`
naming the job. Specs are immutable; settings overrides make new ones.
Does not guarantee: anything about running; see `scheduler.runtime`.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings
from pydantic_settings import SettingsError as PydanticSettingsError

__all__ = ["JobDefinitionError", "JobFunc", "JobRegistry", "JobSpec", "parse_schedule"]

JobFunc = Callable[..., Awaitable[None] | None]

_INTERVAL_RE = re.compile(r"^\s*(?:every\s+)?(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
#: Interval schedules given as strings or timedeltas are anchored here, so every
#: replica computes the same slots (multiples of the interval since the epoch).
_EPOCH = datetime(1970, 1, 1, tzinfo=ZoneInfo("UTC"))
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class JobDefinitionError(ValueError):
    """A job that cannot be registered as written."""

    def __init__(self, job_id: str, problem: str) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id!r}: {problem}")


class JobOptions(BaseModel):
    """Per-job options; each documents its unit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout: float | None = Field(None, gt=0, description="seconds a run may take before it is cancelled")
    misfire_grace_time: float | None = Field(
        None, gt=0, description="seconds a late slot may still run; None: the deployment default"
    )
    coalesce: bool = Field(True, description="run missed slots once, for the latest, instead of each")
    jitter: float | None = Field(None, ge=0, description="seconds of random delay added to each fire time")
    enabled: bool = True
    retries: int = Field(0, ge=0, le=100, description="extra attempts after a failure, within the same slot")
    retry_backoff: float = Field(1.0, gt=0, description="seconds before the first retry; doubles each time")
    retry_backoff_max: float = Field(60.0, gt=0, description="cap of the retry backoff, in seconds")
    timezone: str = Field("UTC", description="time zone of a crontab string trigger")
    description: str = ""


def parse_schedule(expr: str, timezone: str = "UTC") -> BaseTrigger:
    """A trigger from a crontab line (`*/5 * * * *`) or an interval (`30s`, `5m`, `every 2h`)."""
    try:
        tz = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {timezone!r}") from exc
    m = _INTERVAL_RE.match(expr)
    if m:
        seconds = float(m.group(1)) * _UNIT_S[(m.group(2) or "s").lower()]
        if seconds <= 0:
            raise ValueError(f"interval {expr!r} must be positive")
        return IntervalTrigger(seconds=seconds, timezone=tz, start_date=_EPOCH)
    try:
        return CronTrigger.from_crontab(expr, timezone=tz)
    except ValueError as exc:
        raise ValueError(f"bad crontab {expr!r}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One registered job."""

    id: str
    func: JobFunc
    trigger: BaseTrigger
    options: JobOptions
    config_model: type[BaseSettings] | None = None
    schedule_source: str = field(default="code")

    @property
    def is_coroutine(self) -> bool:
        return _is_async(self.func)

    @property
    def enabled(self) -> bool:
        return self.options.enabled

    def describe_trigger(self) -> str:
        return str(self.trigger)

    def next_fire_time(self, previous: datetime | None, now: datetime) -> datetime | None:
        return self.trigger.get_next_fire_time(previous, now)

    def load_config(self) -> Any:
        """Build the job's settings model from the environment (at start, to fail early)."""
        if self.config_model is None:
            return None
        prefix = self.config_model.model_config.get("env_prefix", "")
        try:
            return self.config_model()
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err.get("loc", ())) or "settings"
            msg = err["msg"].removeprefix("Value error, ")
            raise JobDefinitionError(self.id, f"setting {prefix}{loc.upper()}: {msg}") from None
        except PydanticSettingsError as exc:  # an env value that is not valid JSON for a complex field
            raise JobDefinitionError(self.id, f"settings {prefix}*: {exc}") from None


def _is_async(func: Callable[..., Any]) -> bool:
    while isinstance(func, functools.partial):
        func = func.func
    return inspect.iscoroutinefunction(func) or asyncio.iscoroutinefunction(getattr(func, "__call__", None))


_ID_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")


class JobRegistry:
    """An ordered set of jobs; `job()` decorates, `add()` registers directly."""

    def __init__(self) -> None:
        self._jobs: dict[str, JobSpec] = {}

    def __repr__(self) -> str:
        return f"JobRegistry({list(self._jobs)})"

    def __iter__(self) -> Iterator[JobSpec]:
        return iter(self._jobs.values())

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def get(self, job_id: str) -> JobSpec:
        try:
            return self._jobs[job_id]
        except KeyError:
            known = ", ".join(sorted(self._jobs)) or "none"
            raise LookupError(f"unknown job {job_id!r} (known: {known})") from None

    @property
    def ids(self) -> list[str]:
        return list(self._jobs)

    def job(
        self,
        job_id: str,
        *,
        trigger: BaseTrigger | str | timedelta,
        config: type[BaseSettings] | None = None,
        **options: Any,
    ) -> Callable[[JobFunc], JobFunc]:
        """Register the decorated function as job `job_id`; returns it unchanged."""

        def decorate(func: JobFunc) -> JobFunc:
            self.add(job_id, func, trigger=trigger, config=config, **options)
            return func

        return decorate

    def add(
        self,
        job_id: str,
        func: JobFunc,
        *,
        trigger: BaseTrigger | str | timedelta,
        config: type[BaseSettings] | None = None,
        **options: Any,
    ) -> JobSpec:
        if not isinstance(job_id, str) or not _ID_RE.match(job_id):
            raise JobDefinitionError(str(job_id), "id must be 1-100 letters, digits, '_', '.' or '-'")
        if job_id in self._jobs:
            raise JobDefinitionError(job_id, "already registered")
        if not callable(func):
            raise JobDefinitionError(job_id, f"{func!r} is not callable")
        try:
            opts = JobOptions(**options)
        except ValidationError as exc:
            err = exc.errors()[0]
            name = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                valid = ", ".join(JobOptions.model_fields)
                raise JobDefinitionError(job_id, f"unknown option {name!r} (valid: {valid})") from None
            raise JobDefinitionError(job_id, f"option {name!r}: {err['msg']}") from None
        spec = JobSpec(job_id, func, _to_trigger(job_id, trigger, opts.timezone), opts, config)
        self._jobs[job_id] = spec
        return spec

    def configured(self, schedules: Mapping[str, str], disabled: set[str] | frozenset[str]) -> JobRegistry:
        """A copy with schedules replaced and jobs disabled from settings.

        Unknown job ids in either are refused: a typo must not silently leave a job on.
        """
        unknown = (set(schedules) | set(disabled)) - set(self._jobs)
        if unknown:
            raise LookupError(
                f"settings name unknown jobs: {', '.join(sorted(unknown))} (known: {', '.join(self._jobs)})"
            )
        out = JobRegistry()
        for spec in self:
            if spec.id in schedules:
                trigger = _to_trigger(spec.id, schedules[spec.id], spec.options.timezone)
                spec = replace(spec, trigger=trigger, schedule_source="settings")
            if spec.id in disabled:
                spec = replace(spec, options=spec.options.model_copy(update={"enabled": False}))
            out._jobs[spec.id] = spec
        return out


def _to_trigger(job_id: str, trigger: BaseTrigger | str | timedelta, timezone: str) -> BaseTrigger:
    if isinstance(trigger, BaseTrigger):
        return trigger
    if isinstance(trigger, timedelta):
        if trigger.total_seconds() <= 0:
            raise JobDefinitionError(job_id, "interval must be positive")
        return IntervalTrigger(seconds=trigger.total_seconds(), timezone=ZoneInfo("UTC"), start_date=_EPOCH)
    if isinstance(trigger, str):
        try:
            return parse_schedule(trigger, timezone)
        except ValueError as exc:
            raise JobDefinitionError(job_id, str(exc)) from None
    raise JobDefinitionError(job_id, f"trigger must be an APScheduler trigger, a crontab string or a timedelta, not {type(trigger).__name__}")
