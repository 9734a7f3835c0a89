"""The `lightsched` command line.

Exit codes: 0 success; 1 a runtime failure (Redis unreachable, wrong password,
a job run failed, no leader to hand off); 2 bad input (settings, unknown job,
bad --jobs). Every failure prints one line naming the cause, never a
traceback and never a password.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn, TypeVar

import anyio
import typer
from redis.exceptions import RedisError

from .registry import JobDefinitionError, JobRegistry
from .settings import Settings, SettingsError, load_settings

app = typer.Typer(
    name="lightsched",
    help="Run periodic light jobs in exactly one replica, behind one renewable Redis lease.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _console(stderr: bool = False) -> Any:
    """A rich console, imported only by the commands that print tables (a replica never does)."""
    from rich.console import Console

    return Console(stderr=stderr)


def _say_err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)

F = TypeVar("F", bound=Callable[..., Any])


class CliExit(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _fail(code: int, message: str) -> NoReturn:
    raise CliExit(code, message)


def _one_line_errors(func: F) -> F:
    """Turn known failures into one line on stderr and an exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        settings: Settings | None = None
        try:
            return func(*args, **kwargs)
        except CliExit as exc:
            _say_err(f"lightsched: {exc}")
            raise typer.Exit(exc.code) from None
        except SettingsError as exc:
            _say_err(f"lightsched: bad setting: {exc}")
            raise typer.Exit(2) from None
        except (JobDefinitionError, LookupError, ImportError) as exc:
            _say_err(f"lightsched: {exc}")
            raise typer.Exit(2) from None
        except (RedisError, OSError, TimeoutError) as exc:
            from .errors import describe_redis_error

            try:
                settings = load_settings()
            except SettingsError:
                settings = None
            _say_err(f"lightsched: {describe_redis_error(exc, settings)}")
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _settings(**overrides: Any) -> Settings:
    return load_settings(**{k: v for k, v in overrides.items() if v is not None})


def _setup_observability(settings: Settings) -> Any:
    from observability.logs import configure_logging
    from observability.tracing import instrument_redis, setup_tracing

    configure_logging(settings.log_format, settings.log_level, settings.replica_id)
    try:
        handle = setup_tracing(settings.replica_id)
    except ValueError as exc:  # an unsupported OTEL_* value: a bad setting, named in the message
        raise SettingsError(str(exc)) from None
    instrument_redis(settings.trace_redis and handle.enabled)
    return handle


async def _check_redis(settings: Settings) -> None:
    """Fail fast on what retrying cannot fix (auth, ACL); tolerate an unreachable server."""
    from redis.exceptions import AuthenticationError, AuthorizationError, NoPermissionError, ResponseError

    from .connection import make_client

    client = make_client(settings, "cli")
    try:
        with anyio.fail_after(settings.redis_socket_timeout + 1):
            await client.ping()
    except (AuthenticationError, AuthorizationError, NoPermissionError) as exc:
        raise exc
    except ResponseError as exc:
        if "WRONGPASS" in str(exc) or "NOAUTH" in str(exc) or "NOPERM" in str(exc):
            raise
    except (RedisError, OSError, TimeoutError) as exc:
        from .errors import describe_redis_error

        _say_err(f"lightsched: warning: {describe_redis_error(exc, settings)}; will keep trying")
    finally:
        await client.aclose()


@app.command()
@_one_line_errors
def run(
    jobs: Annotated[str | None, typer.Option(help="MODULE:ATTR of the JobRegistry (env LIGHTSCHED_JOBS)")] = None,
) -> None:
    """Start a replica: contend for the lease, run the jobs while leading."""
    from .embed import load_registry
    from .runtime import Replica

    settings = _settings(jobs=jobs)
    registry = load_registry(settings.jobs)
    tracing = _setup_observability(settings)
    replica = Replica(settings, registry)

    async def main() -> None:
        await _check_redis(settings)
        await replica.run(handle_signals=True)

    try:
        anyio.run(main)
    finally:
        tracing.shutdown()


async def _cluster_status(settings: Settings) -> Any:
    from .connection import make_client
    from .keys import Keyspace
    from .status import read_cluster_status

    client = make_client(settings, "cli")
    try:
        with anyio.fail_after(settings.redis_socket_timeout + 1):
            return await read_cluster_status(client, Keyspace(settings.key_prefix))
    finally:
        await client.aclose()


def _age(iso: str | None, now: datetime) -> str:
    if not iso:
        return "-"
    dt = datetime.fromisoformat(iso)
    delta = (dt - now).total_seconds()
    return f"{iso} ({'in ' if delta >= 0 else ''}{abs(delta):.1f}s{'' if delta >= 0 else ' ago'})"


@app.command()
@_one_line_errors
def status(json_out: Annotated[bool, typer.Option("--json", help="print the stable JSON shape")] = False) -> None:
    """Who leads, the fencing token, lease left, and each job's last and next run (from Redis only)."""
    settings = _settings()
    cluster = anyio.run(_cluster_status, settings)
    if json_out:
        print(json.dumps(cluster.stable_json(), indent=2))
        return
    from rich.table import Table

    out = _console()
    now = datetime.now(UTC)
    leader = cluster.leader
    if leader is None:
        out.print("[bold red]no leader[/]")
    elif leader.foreign:
        out.print("[bold red]leader key holds a value that is not a lightsched lease[/]")
    else:
        out.print(
            f"leader [bold]{leader.replica_id}[/] (host {leader.host}, pid {leader.pid}) "
            f"token [bold]{leader.fencing_token}[/], lease left {leader.ttl_ms} ms, since {leader.acquired_at}"
        )
    table = Table("job", "next run", "last slot", "outcome", "replica", "token")
    for job in cluster.jobs:
        last = job.last_run
        table.add_row(
            job.id,
            _age(job.next_run_time, now),
            last.scheduled_time if last else "-",
            (last.status or "-") if last else "-",
            (last.replica_id or "-") if last else "-",
            str(last.fencing_token) if last else "-",
        )
    out.print(table)
    out.print(f"redis: {settings.masked_redis_url()}  prefix: {{{settings.key_prefix}}}")


@app.command("jobs")
@_one_line_errors
def jobs_cmd(
    jobs: Annotated[str | None, typer.Option(help="MODULE:ATTR of the JobRegistry (env LIGHTSCHED_JOBS)")] = None,
) -> None:
    """The registry: ids, triggers and next fire times (as settings configure them)."""
    from .embed import load_registry
    from .runtime import schedule_trigger

    settings = _settings(jobs=jobs)
    registry = load_registry(settings.jobs).configured(settings.job_schedules, settings.disabled_jobs)
    from rich.table import Table

    out = _console()
    now = datetime.now(UTC)
    table = Table("job", "trigger", "next fire time", "enabled", "schedule from")
    for spec in registry:
        nxt = schedule_trigger(spec.trigger).get_next_fire_time(None, now) if spec.enabled else None
        table.add_row(spec.id, str(spec.trigger), nxt.isoformat() if nxt else "-", str(spec.enabled), spec.schedule_source)
    out.print(table)


def _params(values: list[str]) -> dict[str, str]:
    params = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(2, f"--param expects KEY=VALUE, got {item!r}")
        params[key] = value
    return params


@app.command("run-job")
@_one_line_errors
def run_job(
    job_id: Annotated[str, typer.Argument(help="the job to run once, now, on the leader")],
    param: Annotated[list[str], typer.Option("--param", "-p", help="KEY=VALUE passed as ctx.params")] = [],  # noqa: B006
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="wait for the outcome (default), or only enqueue")] = True,
    pickup_timeout: Annotated[
        float, typer.Option(help="seconds a leader has to take the request before it is cancelled")
    ] = 30.0,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the run's outcome once taken")] = 600.0,
    requested_by: Annotated[
        str | None, typer.Option(help="who asks, for the run history (default: user@host)")
    ] = None,
) -> None:
    """Ask the leader to run one job once now, outside the schedule (manual runs, Kubernetes CronJobs).

    The leader runs it through the same path as a scheduled run: after any run of
    the same job in progress, fenced, and recorded in the job's run history with
    `trigger: manual`. Exit 0 when it succeeded; 1 when it failed, no leader took
    it within --pickup-timeout (it is then cancelled), or the outcome is not known
    within --timeout.
    """
    settings = _settings()
    params = _params(param)
    who = requested_by or _requester()
    outcome = anyio.run(_run_job, settings, job_id, params, who, wait, pickup_timeout, timeout)
    print(outcome)


def _requester() -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for the uid (containers)
        user = "uid" + str(__import__("os").getuid())
    return f"{user}@{socket.gethostname()}"


async def _run_job(
    settings: Settings, job_id: str, params: dict[str, str], who: str, wait: bool, pickup_s: float, timeout_s: float
) -> str:
    from .connection import make_client
    from .keys import Keyspace
    from .requests import RequestStore

    client = make_client(settings, "cli")
    store = RequestStore(client, Keyspace(settings.key_prefix))
    try:
        request_id = await store.enqueue(job_id, params, who)
        if not wait:
            return f"request {request_id} for job {job_id!r} queued"
        with anyio.move_on_after(pickup_s):
            while (state := (await store.get(request_id)).get("state")) == "pending":
                await anyio.sleep(0.1)
        if state == "pending":
            if await store.cancel(request_id, f"no leader took it within {pickup_s:g}s"):
                _fail(1, f"no leader took the request for job {job_id!r} within {pickup_s:g}s "
                         "(is a replica running and enabled?); request cancelled")
        with anyio.move_on_after(timeout_s):
            while (h := await store.get(request_id)).get("state") == "running":
                await anyio.sleep(0.1)
        h = await store.get(request_id)
        state, outcome = h.get("state"), h.get("outcome") or "-"
        where = f"on {h.get('replica_id')} (token {h.get('fencing_token')})" if h.get("replica_id") else ""
        if state == "running":
            _fail(1, f"job {job_id!r} still running {where} after {timeout_s:g}s; see `lightsched status`")
        if state == "rejected":
            _fail(2, f"the leader refused the request: {h.get('error') or 'rejected'}")
        if state != "done":
            _fail(1, f"request for job {job_id!r} ended as {state or 'unknown (expired?)'}")
        if outcome != "success":
            _fail(1, f"job {job_id!r} {outcome} {where}: {h.get('error') or ''}".rstrip(": "))
        return f"job {job_id!r} succeeded {where} in {float(h.get('duration_ms') or 0):.0f} ms"
    finally:
        await client.aclose()


@app.command()
@_one_line_errors
def handoff(
    if_replica: Annotated[
        str | None, typer.Option("--if-replica", help="only if this replica leads (for preStop hooks)")
    ] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for another replica to lead")] = 60.0,
) -> None:
    """Ask the current leader to hand off gracefully; return when another replica leads."""
    settings = _settings()
    message = anyio.run(_handoff, settings, if_replica, timeout)
    print(message)


#: How long `handoff` keeps asking when no leader hears the request.
HANDOFF_UNHEARD_RETRY_S = 6.0


async def _handoff(settings: Settings, if_replica: str | None, timeout_s: float) -> str:
    from leader import RedisLeaseStore, fence_arg

    from .connection import make_client
    from .keys import Keyspace

    client = make_client(settings, "cli")
    keys = Keyspace(settings.key_prefix)
    store = RedisLeaseStore(client, keys)
    try:
        holder, _ = await store.read()
        if holder is None or holder.foreign or holder.fencing_token is None:
            if if_replica is not None:
                return "no leader; nothing to hand off"
            _fail(1, "no leader to hand off" if holder is None else "the leader key is not a lightsched lease")
        if if_replica is not None and holder.replica_id != if_replica:
            return f"{if_replica} does not lead ({holder.replica_id} does); nothing to do"
        # Standbys hear the request too: only the leader's acknowledgement (a fenced write of the
        # fence it holds) says it was heard. Its listener may be resubscribing (after a Redis
        # restart it backs off up to 5 s): ask again for a while before saying it did not hear.
        fence = fence_arg(holder.fencing_token, holder.lease_id) if holder.lease_id else str(holder.fencing_token)
        acked = False
        with anyio.move_on_after(min(timeout_s, HANDOFF_UNHEARD_RETRY_S)):
            while True:
                await store.request_handoff(fence)
                ack = await client.get(keys.handoff_ack())
                if ack is not None and ack.decode() in (fence, f"{holder.fencing_token}:{holder.lease_id}"):
                    acked = True
                    break
                now_holder, _ = await store.read()
                if now_holder is None or now_holder.raw != holder.raw:
                    acked = True  # it is gone already (released, or lost)
                    break
                await anyio.sleep(0.25)
        if not acked:
            _fail(1, f"leader {holder.replica_id} (token {holder.fencing_token}) did not acknowledge the handoff; "
                     "it keeps the lease")
        with anyio.move_on_after(timeout_s):
            while True:
                now_holder, _ = await store.read()
                if now_holder is not None and now_holder.raw != holder.raw:
                    return f"{now_holder.replica_id} leads now (token {now_holder.fencing_token})"
                await anyio.sleep(0.05)
        _fail(1, f"no other replica took over within {timeout_s:g}s (is there a standby?)")
    finally:
        await client.aclose()


@app.command()
@_one_line_errors
def demo(
    duration: Annotated[float, typer.Option(help="seconds to run")] = 40.0,
    faults: Annotated[bool, typer.Option("--faults/--no-faults", help="kill the leader, then ask for a handoff")] = True,
    plain: Annotated[bool | None, typer.Option("--plain/--live", help="plain lines instead of the live view")] = None,
) -> None:
    """Three replicas on a throwaway Redis: one leads, a kill, a handoff, the schedule goes on."""
    from .demo import run_demo

    raise typer.Exit(run_demo(duration_s=duration, faults=faults, plain=plain if plain is not None else not sys.stdout.isatty()))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
