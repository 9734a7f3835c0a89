"""The Celery bridge: send Celery tasks by name on lightsched's schedule, so Celery beat can go.

Two things:
- `celery_task()` registers a job that, on each slot, sends one task with
  `app.send_task()` (in a worker thread: the send blocks). Each send carries
  a task id derived from the deployment prefix, the job id and the slot's
  fire time (`slot_task_id()`), and the headers `lightsched_job_id`,
  `lightsched_fencing_token`, `lightsched_lease_id` and
  `lightsched_scheduled_time`, so workers can recognise a repeated send of
  one slot and check that the sending term is still current
  (`slot_is_current()`: token and lease id, never the number alone).
- `load_beat_schedule()` turns a Celery `beat_schedule` mapping into such
  jobs: crontab, timedelta, plain seconds and `schedule` entries; `solar` and
  unknown schedule types are refused naming the entry.

Guarantees: a send happens only after `ctx.still_current()` confirmed the
run's fencing token right before it (otherwise the run raises `FencedOut`
and sends nothing); a slot whose expiry has passed is not sent. Crontab
entries fire at the same instants Celery beat would compute, in the Celery
app's time zone. Interval entries fire at fixed multiples of the
interval since the Unix epoch (the same on every replica and after failover).
Does not guarantee: exactly-once delivery to workers. The broker is not
fenced, so a leader that loses its lease between the check and the publish can
still send, and a send retried after a broker error can reach the queue twice;
both repeats carry the same task id, which workers use to deduplicate (see
docs/CELERY_MIGRATION.md).

Celery is an optional extra: this module imports it only when used and
raises `CeleryNotInstalled` naming `pip install 'lightsched[celery]'`.
"""

from __future__ import annotations

import functools
import importlib
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from datetime import timezone as dt_timezone
from typing import TYPE_CHECKING, Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import anyio.to_thread
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from scheduler import FencedOut, JobContext
from scheduler.registry import JobDefinitionError, JobRegistry, JobSpec, parse_schedule

if TYPE_CHECKING:
    import celery

__all__ = [
    "HEADER_FENCING_TOKEN",
    "HEADER_JOB_ID",
    "HEADER_LEASE_ID",
    "HEADER_SCHEDULED_TIME",
    "SEND_OPTIONS",
    "UNTIL_NEXT_SLOT",
    "BeatScheduleError",
    "CeleryNotInstalled",
    "CeleryTaskJob",
    "SlotHeaders",
    "UnsupportedSchedule",
    "celery_task",
    "load_beat_schedule",
    "slot_headers",
    "slot_is_current",
    "slot_task_id",
    "trigger_from_celery",
]

HEADER_JOB_ID: Final = "lightsched_job_id"
HEADER_FENCING_TOKEN: Final = "lightsched_fencing_token"
HEADER_LEASE_ID: Final = "lightsched_lease_id"
HEADER_SCHEDULED_TIME: Final = "lightsched_scheduled_time"
_OUR_HEADERS: Final = frozenset({HEADER_JOB_ID, HEADER_FENCING_TOKEN, HEADER_LEASE_ID, HEADER_SCHEDULED_TIME})

#: `send_task()` options a job (or a beat entry's `options`) may pass through.
#: `task_id` and `eta` are the bridge's: the id names the slot, the slot is the time.
SEND_OPTIONS: Final = frozenset(
    {
        "exchange",
        "routing_key",
        "priority",
        "headers",
        "serializer",
        "compression",
        "time_limit",
        "soft_time_limit",
        "ignore_result",
        "countdown",
        "retry",
        "retry_policy",
        "shadow",
    }
)

#: Slot ids are named inside this namespace (uuid5), so they never collide with Celery's uuid4 ids.
_TASK_ID_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "urn:lightsched:celery-bridge")
#: Interval schedules are anchored here, so every replica computes the same slots.
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_DOW_NAMES: Final = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # Celery numbering: 0 = Sunday
_ID_UNSAFE_RE: Final = re.compile(r"[^A-Za-z0-9_.\-]+")
_ENTRY_KEYS: Final = frozenset({"task", "schedule", "args", "kwargs", "options", "relative"})


class CeleryNotInstalled(ImportError):
    def __init__(self) -> None:
        super().__init__("the Celery bridge needs Celery: pip install 'lightsched[celery]'")


class UnsupportedSchedule(ValueError):
    """A Celery schedule that has no lightsched trigger (e.g. `solar`)."""


class BeatScheduleError(ValueError):
    """A `beat_schedule` entry that cannot become a job; the message names the entry."""

    def __init__(self, entry: str, problem: str) -> None:
        self.entry = entry
        super().__init__(f"beat_schedule entry {entry!r}: {problem}")


class _UntilNextSlot:
    def __repr__(self) -> str:
        return "UNTIL_NEXT_SLOT"


#: Default expiry: a slot's task expires when the job's next slot is due, because
#: that slot sends a fresh one. Pass `expires=None` for beat's default (never).
UNTIL_NEXT_SLOT: Final = _UntilNextSlot()

Expiry = float | int | timedelta | _UntilNextSlot | None


def _celery() -> Any:
    try:
        return importlib.import_module("celery")
    except ImportError:
        raise CeleryNotInstalled() from None


def _celery_schedules() -> Any:
    _celery()
    return importlib.import_module("celery.schedules")


# --- slot identity ---------------------------------------------------------------------------


def slot_task_id(prefix: str, job_id: str, scheduled_time: datetime) -> str:
    """The Celery task id of one slot: the same for every send of that slot, by any replica."""
    if scheduled_time.tzinfo is None:
        raise ValueError("scheduled_time must be timezone-aware")
    slot_ms = round(scheduled_time.timestamp() * 1000)
    return str(uuid.uuid5(_TASK_ID_NAMESPACE, f"{prefix}\n{job_id}\n{slot_ms}"))


@dataclass(frozen=True, slots=True)
class SlotHeaders:
    """What a worker learns about the slot that sent a task."""

    job_id: str
    fencing_token: int
    scheduled_time: datetime
    lease_id: str | None = None  # None from a bridge older than lightsched 0.2

    @property
    def fence(self) -> str | None:
        """The sending term's identity, `<token>:<lease_id>`; None when the sender was too old to say."""
        return None if self.lease_id is None else f"{self.fencing_token}:{self.lease_id}"


def slot_is_current(redis_client: Any, prefix: str, headers: SlotHeaders) -> bool:
    """Whether the term that sent this task still holds the lease (a synchronous redis-py client).

    Compares token AND lease id with the leader key `{prefix}:leader`: the number alone can
    repeat after a failover. A lease id missing from the headers counts as not current.
    Check it right before a side effect that must not happen twice; it is a read, so the
    answer can be stale by the time the side effect lands (fence the side effect itself
    where the target system allows it).
    """
    from leader import LeaseHolder

    raw = redis_client.get("{" + prefix + "}:leader")
    if raw is None or headers.lease_id is None:
        return False
    holder = LeaseHolder.parse(raw)
    return holder.fencing_token == headers.fencing_token and holder.lease_id == headers.lease_id


def slot_headers(request: Any) -> SlotHeaders | None:
    """Read the bridge's headers from a Celery task request (`self.request` in a bound task).

    None when the task was not sent by the bridge.
    """
    headers = getattr(request, "headers", None)
    headers = headers if isinstance(headers, Mapping) else {}

    def read(name: str) -> Any:
        # Celery puts custom headers in `request.headers` and also copies them onto the request.
        return headers.get(name, getattr(request, name, None))

    job_id, token, when = read(HEADER_JOB_ID), read(HEADER_FENCING_TOKEN), read(HEADER_SCHEDULED_TIME)
    if job_id is None or token is None or when is None:
        return None
    lease_id = read(HEADER_LEASE_ID)
    return SlotHeaders(
        str(job_id), int(token), datetime.fromisoformat(str(when)), None if lease_id is None else str(lease_id)
    )


# --- schedules -------------------------------------------------------------------------------


def _resolve_tz(timezone: str | tzinfo | None, app: Any) -> tzinfo:
    """Explicit time zone, else the Celery app's (as beat uses it), else UTC."""
    if timezone is None and app is not None and not isinstance(app, str):
        timezone = app.timezone
    if timezone is None:
        return UTC
    if isinstance(timezone, str):
        try:
            return UTC if timezone == "UTC" else ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {timezone!r}") from None
    if isinstance(timezone, ZoneInfo):
        return timezone
    if isinstance(timezone, dt_timezone) and timezone.utcoffset(None) == timedelta(0):
        return UTC
    key = getattr(timezone, "key", None) or getattr(timezone, "zone", None)
    if key:
        return _resolve_tz(str(key), None)
    # A fixed offset (or any zone without an IANA name) would silently ignore daylight saving time.
    raise ValueError(
        f"time zone {timezone!r} has no IANA name: set the Celery app's `timezone` setting "
        "or pass timezone='Area/City'"
    )


def _interval_trigger(seconds: float, tz: tzinfo) -> IntervalTrigger:
    if seconds <= 0:
        raise UnsupportedSchedule(f"interval must be positive, got {seconds:g} s")
    return IntervalTrigger(seconds=seconds, start_date=_EPOCH, timezone=tz)


def _cron_field(values: set[int], full: range) -> str:
    if set(values) >= set(full):
        return "*"
    return ",".join(str(v) for v in sorted(values))


def trigger_from_celery(schedule: Any, *, timezone: tzinfo) -> BaseTrigger:
    """An APScheduler trigger firing when Celery beat would run `schedule`.

    `schedule` is a `celery.schedules.crontab`, a `celery.schedules.schedule`,
    a `timedelta` or a number of seconds. Crontab fields are taken from
    Celery's own parse (so names, ranges and steps mean what they meant to
    beat) and evaluated in `timezone`; Celery's day_of_week counts from
    0 = Sunday and is passed to APScheduler by name. Both require every field
    to match (not cron(8)'s day-of-month OR day-of-week).
    Raises `UnsupportedSchedule` for `solar` and anything else.
    """
    if isinstance(schedule, bool):
        raise UnsupportedSchedule("a schedule cannot be a bool")
    if isinstance(schedule, int | float):
        return _interval_trigger(float(schedule), timezone)
    if isinstance(schedule, timedelta):
        return _interval_trigger(schedule.total_seconds(), timezone)
    schedules = _celery_schedules()
    if isinstance(schedule, schedules.solar):
        raise UnsupportedSchedule(
            f"solar schedules ({schedule.event!r} at {schedule.lat}, {schedule.lon}) are not supported; "
            "use a crontab near the event's time instead"
        )
    if isinstance(schedule, schedules.crontab):
        dow = set(schedule.day_of_week)
        return CronTrigger(
            month=_cron_field(schedule.month_of_year, range(1, 13)),
            day=_cron_field(schedule.day_of_month, range(1, 32)),
            day_of_week="*" if dow >= set(range(7)) else ",".join(_DOW_NAMES[d] for d in sorted(dow)),
            hour=_cron_field(schedule.hour, range(24)),
            minute=_cron_field(schedule.minute, range(60)),
            second="0",
            timezone=timezone,
        )
    if isinstance(schedule, schedules.schedule):
        return _interval_trigger(schedule.run_every.total_seconds(), timezone)
    raise UnsupportedSchedule(
        f"unsupported schedule type {type(schedule).__module__}.{type(schedule).__qualname__} "
        "(supported: crontab, schedule, timedelta, seconds)"
    )


# --- the job ---------------------------------------------------------------------------------


@functools.cache
def _app_for_url(broker_url: str) -> Any:
    # One app (and so one producer pool) per broker URL in this process.
    return _celery().Celery("lightsched-bridge", broker=broker_url, set_as_current=False)


def _resolve_app(app: Any) -> Any:
    celery_mod = _celery()
    if isinstance(app, celery_mod.Celery):
        return app
    if isinstance(app, str) and "://" in app:
        return _app_for_url(app)
    # Never echo the value: a broker URL may hold a password.
    raise TypeError(f"app must be a celery.Celery or a broker URL such as redis://host:6379/0, not {type(app).__name__}")


def _check_expires(expires: Any) -> Expiry:
    if expires is None or expires is UNTIL_NEXT_SLOT:
        return expires  # type: ignore[no-any-return]
    if isinstance(expires, timedelta):
        expires = expires.total_seconds()
    if isinstance(expires, bool) or not isinstance(expires, int | float):
        raise ValueError(
            f"expires must be seconds, a timedelta, None or UNTIL_NEXT_SLOT, not {type(expires).__name__}"
        )
    if expires <= 0:
        raise ValueError(f"expires must be positive, got {expires:g} s")
    return float(expires)


def _check_send_options(send_options: Mapping[str, Any] | None) -> dict[str, Any]:
    opts = dict(send_options or {})
    unknown = set(opts) - SEND_OPTIONS
    if unknown:
        raise ValueError(
            f"unknown send option(s) {', '.join(sorted(unknown))} (valid: {', '.join(sorted(SEND_OPTIONS))}, "
            "plus queue and expires; task_id and eta belong to the bridge)"
        )
    headers = opts.get("headers")
    if headers is not None:
        if not isinstance(headers, Mapping):
            raise ValueError("send option headers must be a mapping")
        taken = _OUR_HEADERS & set(headers)
        if taken:
            raise ValueError(f"headers {', '.join(sorted(taken))} are set by the bridge")
    return opts


class CeleryTaskJob:
    """The job function `celery_task()` registers: one `send_task()` per slot."""

    def __init__(
        self,
        app: Any,
        task_name: str,
        *,
        trigger: BaseTrigger,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        queue: Any = None,
        expires: Expiry = UNTIL_NEXT_SLOT,
        send_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(task_name, str) or not task_name:
            raise ValueError("task_name must be a non-empty string")
        if isinstance(args, str | bytes) or not isinstance(args, Sequence):
            raise ValueError(f"args must be a list or tuple, not {type(args).__name__}")
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise ValueError(f"kwargs must be a mapping, not {type(kwargs).__name__}")
        self.app = _resolve_app(app)
        self.task_name = task_name
        self.trigger = trigger
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.queue = queue
        self.expires = _check_expires(expires)
        self.send_options = _check_send_options(send_options)

    def __repr__(self) -> str:
        # No app or broker URL here: reprs end up in logs and status pages.
        return f"CeleryTaskJob(task={self.task_name!r}, queue={self.queue!r}, expires={self.expires!r})"

    def expires_at(self, scheduled_time: datetime) -> datetime | None:
        """When the task of the slot at `scheduled_time` stops being worth running.

        Relative expiries count from the slot's fire time, not from the send, so
        a late send does not stretch them. The default is the next slot of the
        trigger this job was registered with.
        """
        if self.expires is None:
            return None
        if isinstance(self.expires, _UntilNextSlot):
            return self.trigger.get_next_fire_time(scheduled_time, scheduled_time)  # type: ignore[no-any-return]
        # In UTC: local wall-clock arithmetic would be an hour off from an ambiguous (fold=1) slot.
        return scheduled_time.astimezone(UTC) + timedelta(seconds=self.expires)

    def _headers(self, ctx: JobContext) -> dict[str, Any]:
        return {
            **self.send_options.get("headers", {}),
            HEADER_JOB_ID: ctx.job_id,
            HEADER_FENCING_TOKEN: ctx.fencing_token,
            HEADER_LEASE_ID: ctx.lease_id,
            HEADER_SCHEDULED_TIME: ctx.scheduled_time.astimezone(UTC).isoformat(),
        }

    async def __call__(self, ctx: JobContext) -> None:
        task_id = slot_task_id(ctx.keys.prefix, ctx.job_id, ctx.scheduled_time)
        expires_at = self.expires_at(ctx.scheduled_time)
        if expires_at is not None and expires_at <= datetime.now(UTC):
            ctx.log.warning(
                "celery task %s for slot %s not sent: it expired at %s",
                self.task_name,
                ctx.scheduled_time.isoformat(),
                expires_at.isoformat(),
                extra={"event": "celery_send_expired", "task_id": task_id},
            )
            return
        options = {**self.send_options, "headers": self._headers(ctx)}
        if self.queue is not None:
            options["queue"] = self.queue
        send = functools.partial(
            self.app.send_task,
            self.task_name,
            args=list(self.args),
            kwargs=dict(self.kwargs),
            task_id=task_id,
            expires=expires_at,
            **options,
        )
        with ctx.span("celery.send_task", task=self.task_name, task_id=task_id):
            # Checked last, so the window in which a deposed leader can still send is one publish.
            if not await ctx.still_current():
                raise FencedOut(ctx.job_id, ctx.fencing_token, f"sending Celery task {self.task_name}")
            # Not abandoned on cancel: the outcome of a started publish is known before the
            # run ends; kombu's publish retry policy bounds how long that takes.
            await anyio.to_thread.run_sync(send)
        ctx.log.info(
            "sent celery task %s id %s queue %s",
            self.task_name,
            task_id,
            self.queue or "(routed)",
            extra={"event": "celery_task_sent", "task_id": task_id},
        )


def _job_trigger(trigger: Any, app: Any, timezone: str | None) -> BaseTrigger:
    if isinstance(trigger, BaseTrigger):
        return trigger
    if isinstance(trigger, str):
        parsed = parse_schedule(trigger, timezone or "UTC")
        if isinstance(parsed, IntervalTrigger):
            return _interval_trigger(parsed.interval_length, parsed.timezone)
        return parsed
    return trigger_from_celery(trigger, timezone=_resolve_tz(timezone, app))


def celery_task(
    registry: JobRegistry,
    job_id: str,
    task_name: str,
    *,
    app: celery.Celery | str,
    trigger: Any,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    queue: Any = None,
    expires: Expiry = UNTIL_NEXT_SLOT,
    send_options: Mapping[str, Any] | None = None,
    **job_options: Any,
) -> JobSpec:
    """Register job `job_id` that sends Celery task `task_name` on each slot of `trigger`.

    `app`: a Celery app (its routes and task options apply) or a broker URL.
    `trigger`: an APScheduler trigger (used as is); a crontab or interval
    string (in the `timezone` job option, as the registry reads it); a
    `timedelta` or seconds; or a Celery `crontab`/`schedule` (in the
    `timezone` job option, else the app's). Intervals are anchored to the epoch.
    `expires`: seconds (or timedelta) after the slot's fire time, None for
    never, or `UNTIL_NEXT_SLOT` (default). `send_options`: more
    `send_task()` options, see `SEND_OPTIONS`. `job_options`: registry options
    (timeout, retries, misfire_grace_time, ...).
    Raises `JobDefinitionError` naming the job for anything it cannot use.
    """
    try:
        job = CeleryTaskJob(
            app,
            task_name,
            trigger=_job_trigger(trigger, app, job_options.get("timezone")),
            args=args,
            kwargs=kwargs,
            queue=queue,
            expires=expires,
            send_options=send_options,
        )
    except (ValueError, TypeError) as exc:
        raise JobDefinitionError(str(job_id), str(exc)) from None
    job_options.setdefault("description", f"sends Celery task {task_name}")
    return registry.add(job_id, job, trigger=job.trigger, **job_options)


# --- beat_schedule ---------------------------------------------------------------------------


def _job_id_for(prefix: str, name: str) -> str:
    return prefix + _ID_UNSAFE_RE.sub("_", name).strip("_")


def load_beat_schedule(
    registry: JobRegistry,
    beat_schedule: Mapping[str, Mapping[str, Any]],
    *,
    app: celery.Celery | str,
    prefix: str = "celery.",
    timezone: str | tzinfo | None = None,
    expires: Expiry = UNTIL_NEXT_SLOT,
    **job_options: Any,
) -> list[JobSpec]:
    """Register one `celery_task` job per entry of a Celery `beat_schedule`; all or nothing.

    Job ids are `prefix` + the entry name (characters a job id cannot hold
    become `_`). Crontabs are evaluated in `timezone`, else the app's time
    zone as beat would, else UTC. An entry's `options` may set `queue`,
    `expires` (overriding `expires` here) and any of `SEND_OPTIONS`.
    `job_options` apply to every job. Raises `BeatScheduleError` naming the
    first entry that cannot be migrated, before registering anything.
    """
    if not isinstance(beat_schedule, Mapping):
        raise TypeError(f"beat_schedule must be a mapping of entry name to entry, not {type(beat_schedule).__name__}")
    resolved_app = _resolve_app(app)
    tz = _resolve_tz(timezone, resolved_app)
    planned: list[tuple[str, CeleryTaskJob, dict[str, Any]]] = []
    seen: dict[str, str] = {}
    for name, entry in beat_schedule.items():
        name = str(name)
        job_id = _job_id_for(prefix, name)
        if job_id in seen:
            raise BeatScheduleError(name, f"job id {job_id!r} is also the id of entry {seen[job_id]!r}; rename one")
        if job_id in registry:
            raise BeatScheduleError(name, f"job id {job_id!r} is already registered")
        seen[job_id] = name
        planned.append((job_id, *_plan_entry(name, entry, resolved_app, tz, expires, job_options)))
    specs = []
    for job_id, job, options in planned:
        try:
            specs.append(registry.add(job_id, job, trigger=job.trigger, **options))
        except ValueError as exc:
            raise BeatScheduleError(seen[job_id], str(exc)) from None
    return specs


def _plan_entry(
    name: str,
    entry: Any,
    app: Any,
    tz: tzinfo,
    default_expires: Expiry,
    job_options: Mapping[str, Any],
) -> tuple[CeleryTaskJob, dict[str, Any]]:
    if not isinstance(entry, Mapping):
        raise BeatScheduleError(name, f"an entry must be a mapping, not {type(entry).__name__}")
    unknown = set(entry) - _ENTRY_KEYS
    if unknown:
        raise BeatScheduleError(
            name, f"unknown key(s) {', '.join(sorted(map(str, unknown)))} (valid: {', '.join(sorted(_ENTRY_KEYS))})"
        )
    if "task" not in entry or "schedule" not in entry:
        raise BeatScheduleError(name, "needs both 'task' and 'schedule'")
    options = entry.get("options") or {}
    if not isinstance(options, Mapping):
        raise BeatScheduleError(name, f"options must be a mapping, not {type(options).__name__}")
    send_options = dict(options)
    queue = send_options.pop("queue", None)
    expires = send_options.pop("expires", default_expires)
    try:
        trigger = trigger_from_celery(entry["schedule"], timezone=tz)
        job = CeleryTaskJob(
            app,
            entry["task"],
            trigger=trigger,
            args=entry.get("args") or (),
            kwargs=entry.get("kwargs"),
            queue=queue,
            expires=expires,
            send_options=send_options,
        )
    except (ValueError, TypeError) as exc:
        raise BeatScheduleError(name, str(exc)) from None
    opts = {"description": f"Celery beat entry {name!r}: task {entry['task']}", **job_options}
    return job, opts
