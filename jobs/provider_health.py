"""Provider health probe: is each upstream provider answering as expected?

Default schedule: every 60 s (`60s`), timeout 30 s; change it with
LIGHTSCHED_JOB_SCHEDULES='{"provider_health": "2m"}'. A manual run probes one
provider alone: `lightsched run-job provider_health -p provider=NAME`.

Each provider is probed concurrently (one shared httpx client per run, at most
`max_concurrency` at once) with a total deadline of its `timeout_s`; latency
is measured on the monotonic clock. A provider is `up` when it answers with
one of its expected status codes, else `down` (timeout, refused connection,
TLS or protocol error, unexpected status).

Stored under `{prefix}:data:provider_health:` (see `jobs._store`): `latest:<name>`
(TTL `result_ttl_s`), `history:<name>` (stream capped near `history_len`),
`state` and `transitions` (`<name>:down` counts up->down, `<name>:up` down->up).
A provider's first observation is not a transition.

Guarantees: auth secrets are read from the named environment variables when
the settings load, held as `SecretStr`, sent only in the configured header,
and never logged, stored or shown in reprs. Writes are fenced (`FencedOut`).
Does not guarantee: secrecy of credentials placed in a URL's query string (URLs
are not stored or logged, but put credentials in `auth`); response bodies are
not read.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from scheduler import JobContext

from ._store import fenced_swap_state, json_list, log_event, store_result

__all__ = [
    "JOB_ID",
    "ProbeResult",
    "ProviderAuth",
    "ProviderHealthConfig",
    "ProviderSpec",
    "UnknownProvider",
    "check_providers",
    "provider_health",
]

JOB_ID = "provider_health"

_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_HEADER_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class UnknownProvider(LookupError):
    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        super().__init__(f"unknown provider {name!r} (known: {', '.join(known) or 'none configured'})")


class ProviderAuth(BaseModel):
    """An auth header whose value comes from an environment variable, read once when the settings load."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    header: str = Field(description="header name, e.g. Authorization")
    secret_env: str = Field(description="NAME of the environment variable holding the secret (not the secret)")
    prefix: str = Field("", description='text sent before the secret, e.g. "Bearer "; default empty')
    secret: SecretStr = Field(SecretStr(""), exclude=True, repr=False, description="filled from secret_env")

    @model_validator(mode="before")
    @classmethod
    def _read_secret(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if "secret" in data:
            raise ValueError("give the NAME of an environment variable in secret_env, not the secret itself")
        env = data.get("secret_env")
        if not isinstance(env, str) or not _ENV_NAME_RE.match(env):
            raise ValueError(f"secret_env must be an environment variable name, got {env!r}")
        value = os.environ.get(env)
        if not value:
            raise ValueError(f"environment variable {env} (named by secret_env) is not set or empty")
        return {**data, "secret": SecretStr(value)}

    @field_validator("header")
    @classmethod
    def _check_header(cls, value: str) -> str:
        if not _HEADER_RE.match(value):
            raise ValueError(f"{value!r} is not a valid HTTP header name")
        return value

    def header_value(self) -> str:
        return self.prefix + self.secret.get_secret_value()


class ProviderSpec(BaseModel):
    """One provider to probe."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="1-64 letters, digits, '_', '.' or '-'; names its Redis keys")
    url: str = Field(description="http(s) URL of the health endpoint, without credentials")
    method: Literal["GET", "HEAD", "POST", "OPTIONS"] = Field("GET", description="HTTP method")
    expected_status: frozenset[int] = Field(
        frozenset({200}), description="status codes that mean up"
    )
    timeout_s: float = Field(5.0, gt=0, le=300, description="seconds the whole probe may take")
    auth: ProviderAuth | None = Field(None, description="optional auth header from a secret env var")
    scheduled: bool = Field(
        True,
        description="false: probed only on request (`run-job provider_health -p provider=NAME`), "
        "e.g. by a Kubernetes CronJob of its own schedule",
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(f"provider name {value!r} must be 1-64 letters, digits, '_', '.' or '-'")
        return value

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        try:
            url = httpx.URL(value)
        except httpx.InvalidURL as exc:
            raise ValueError(f"malformed URL: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("URL must be http:// or https:// with a host")
        if url.userinfo:
            raise ValueError("URL must not carry credentials; use auth with secret_env")
        return value

    @field_validator("expected_status")
    @classmethod
    def _check_status(cls, value: frozenset[int]) -> frozenset[int]:
        if not value:
            raise ValueError("expected_status must name at least one status code")
        bad = sorted(code for code in value if not 100 <= code <= 599)
        if bad:
            raise ValueError(f"expected_status has codes outside 100-599: {bad}")
        return value


class ProviderHealthConfig(BaseSettings):
    """Settings of the provider_health job (env prefix LIGHTSCHED_PROVIDER_HEALTH_)."""

    model_config = SettingsConfigDict(env_prefix="LIGHTSCHED_PROVIDER_HEALTH_", extra="ignore", frozen=True)

    providers: Annotated[list[ProviderSpec], NoDecode] = Field(
        default_factory=list,
        description=(
            'JSON list of providers: [{"name", "url", "method" (default GET), "expected_status" '
            '(default [200]), "timeout_s" (seconds, default 5), "auth": {"header", "secret_env", '
            '"prefix"}}]; default [] (nothing probed)'
        ),
    )
    result_ttl_s: float = Field(300.0, gt=0, description="seconds a provider's latest result lives in Redis")
    history_len: int = Field(1000, ge=1, le=1_000_000, description="entries kept per provider history stream (approximate)")
    max_concurrency: int = Field(16, ge=1, le=1000, description="probes in flight at once")

    _providers_json = field_validator("providers", mode="before")(json_list)

    @model_validator(mode="after")
    def _unique_names(self) -> ProviderHealthConfig:
        seen: set[str] = set()
        for p in self.providers:
            if p.name in seen:
                raise ValueError(f"provider name {p.name!r} appears twice")
            seen.add(p.name)
        return self


@dataclass(frozen=True, slots=True)
class ProbeResult:
    provider: str
    status: Literal["up", "down"]
    latency_ms: float
    http_status: int | None
    reason: Literal["ok", "timeout", "connect", "status", "transport"]
    error: str | None
    checked_at: str

    def to_doc(self, ctx: JobContext, transition: str | None) -> dict[str, Any]:
        return {
            **asdict(self),
            "transition": transition,
            "replica_id": ctx.replica_id,
            "fencing_token": ctx.fencing_token,
            "scheduled_time": ctx.scheduled_time.isoformat(),
        }


async def probe(client: httpx.AsyncClient, spec: ProviderSpec) -> ProbeResult:
    """Probe one provider; never raises for a failed probe."""
    headers = {spec.auth.header: spec.auth.header_value()} if spec.auth else {}
    checked_at = datetime.now(UTC).isoformat()
    started = time.monotonic()
    http_status: int | None = None
    try:
        # httpx timeouts bound each phase; this bounds the whole probe (a server trickling bytes).
        async with asyncio.timeout(spec.timeout_s):
            async with client.stream(
                spec.method, spec.url, headers=headers, timeout=httpx.Timeout(spec.timeout_s)
            ) as resp:
                http_status = resp.status_code
    except (TimeoutError, httpx.TimeoutException):
        return _down(spec, started, checked_at, "timeout", f"no answer within {spec.timeout_s:g}s")
    except httpx.ConnectError as exc:
        return _down(spec, started, checked_at, "connect", f"connect failed: {_short(exc)}")
    except httpx.HTTPError as exc:  # protocol, TLS, proxy and other transport errors
        return _down(spec, started, checked_at, "transport", f"{type(exc).__name__}: {_short(exc)}")
    latency_ms = (time.monotonic() - started) * 1000
    if http_status in spec.expected_status:
        return ProbeResult(spec.name, "up", latency_ms, http_status, "ok", None, checked_at)
    expected = ", ".join(str(c) for c in sorted(spec.expected_status))
    return ProbeResult(
        spec.name, "down", latency_ms, http_status, "status", f"status {http_status}, expected {expected}", checked_at
    )


def _down(spec: ProviderSpec, started: float, checked_at: str, reason: Any, error: str) -> ProbeResult:
    return ProbeResult(spec.name, "down", (time.monotonic() - started) * 1000, None, reason, error, checked_at)


def _short(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__)[:200]


def select_providers(cfg: ProviderHealthConfig, params: Mapping[str, str]) -> list[ProviderSpec]:
    """The scheduled providers, or the one named by the `provider` run parameter (any of them)."""
    wanted = params.get("provider") if params else None
    if wanted is None:
        return [spec for spec in cfg.providers if spec.scheduled]
    for spec in cfg.providers:
        if spec.name == wanted:
            return [spec]
    raise UnknownProvider(wanted, [p.name for p in cfg.providers])


async def check_providers(ctx: JobContext) -> list[ProbeResult]:
    """Probe, store and compare; the results in configuration order. Raises `FencedOut`."""
    cfg = ctx.config
    if not isinstance(cfg, ProviderHealthConfig):
        raise TypeError(f"job {ctx.job_id!r} needs a ProviderHealthConfig as ctx.config, got {type(cfg).__name__}")
    specs = select_providers(cfg, ctx.params)
    if not specs:
        log_event(ctx, logging.INFO, "no providers configured", "provider_health_idle")
        return []
    limit = asyncio.Semaphore(cfg.max_concurrency)
    # Enough connections for every probe in flight; no keep-alive reuse is needed across runs.
    limits = httpx.Limits(max_connections=cfg.max_concurrency, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, follow_redirects=False, trust_env=False) as client:

        async def one(spec: ProviderSpec) -> ProbeResult:
            async with limit:
                with ctx.span("provider_probe", provider=spec.name) as span:
                    result = await probe(client, spec)
                    if span.is_recording():
                        span.set_attribute("provider.status", result.status)
                        span.set_attribute("provider.latency_ms", result.latency_ms)
                    return result

        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(one(spec), name=f"probe:{spec.name}") for spec in specs]
    results = [t.result() for t in tasks]

    for result in results:
        prev = await fenced_swap_state(ctx, result.provider, result.status)
        transition = result.status if prev is not None and prev != result.status else None
        if transition == "down":
            log_event(
                ctx, logging.WARNING, "provider went down", "provider_down",
                provider=result.provider, reason=result.reason, error=result.error,
            )
        elif transition == "up":
            log_event(
                ctx, logging.INFO, "provider is up again", "provider_up",
                provider=result.provider, latency_ms=round(result.latency_ms, 1),
            )
        await store_result(ctx, result.provider, result.to_doc(ctx, transition), cfg.result_ttl_s, cfg.history_len)

    down = [r.provider for r in results if r.status == "down"]
    log_event(ctx, logging.INFO, "providers probed", "provider_health", probed=len(results), down=down)
    return results


async def provider_health(ctx: JobContext) -> None:
    """Probe the configured providers (default every 60 s); see the module docstring."""
    await check_providers(ctx)
