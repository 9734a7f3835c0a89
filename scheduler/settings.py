"""The replica's settings, read once at the edge (CLI or lifespan) from
`LIGHTSCHED_*` environment variables and `.env`.

Guarantees: impossible values are refused at start with one line naming the
setting (`SettingsError`); secrets are `SecretStr`, masked in reprs, logs and
endpoints (`masked_redis_url()`). Sub-models handed down are frozen.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from leader import InvalidTimings, LeaseTimings

from .connection import RedisConnectionSettings

__all__ = ["Settings", "SettingsError", "load_settings", "mask_url"]

ENV_PREFIX = "LIGHTSCHED_"
#: `redis_socket_timeout` when not set, unless the lease timings need it shorter.
SOCKET_TIMEOUT_DEFAULT_S = 5.0
_URL_SCHEMES = ("redis", "rediss", "unix")


class SettingsError(ValueError):
    """Settings that cannot work; the message is one line naming the setting."""


def _default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def mask_url(url: str) -> str:
    """The URL with any password replaced by `***`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


class Settings(RedisConnectionSettings):
    """lightsched settings. Times are in seconds unless the name says otherwise."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    key_prefix: str = Field("lightsched", description="every key is `{PREFIX}:...`; one prefix per deployment")
    replica_id: str = Field(default_factory=_default_replica_id, description="this replica's name; default host-pid")
    enabled: bool = Field(True, description="kill switch: false makes this replica never contend (status still works)")
    lease_ttl: float = Field(15.0, description="seconds the lease lives in Redis after each renew")
    renew_deadline: float = Field(10.0, description="seconds after the last renew sent when a leader stops believing it leads")
    retry_period: float = Field(2.0, description="seconds between renews, and between a standby's attempts")
    drain_timeout: float = Field(30.0, description="seconds a stopping leader waits for in-flight runs before it releases")
    misfire_grace_time: float = Field(
        60.0, description="default seconds a late slot may still run; must cover a crash takeover"
    )
    jobs: str = Field("jobs:registry", description="MODULE:ATTR of the JobRegistry to run")
    disabled_jobs: Annotated[frozenset[str], NoDecode] = Field(
        frozenset(), description="comma-separated job ids not to run"
    )
    job_schedules: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description='JSON object job id -> crontab or interval ("30s", "5m"), replacing the code default',
    )
    run_history: int = Field(50, ge=1, le=10000, description="run records kept per job")
    max_clock_skew_ms: int = Field(
        1000,
        gt=0,
        description="milliseconds a slot may lie ahead of Redis' clock when claimed; a replica whose wall clock "
        "runs further ahead waits for Redis time (or counts the slot missed past the misfire grace)",
    )
    http_host: str = Field("0.0.0.0", description="address of the health/metrics HTTP server")
    http_port: int = Field(9180, ge=0, le=65535, description="port of the health/metrics HTTP server; 0: no server")
    log_format: Literal["auto", "json", "console"] = Field("auto", description="auto: console on a terminal, else JSON")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="root log level")
    trace_redis: bool = Field(False, description="trace every Redis command (opentelemetry-instrumentation-redis)")

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, (mask_url(value.get_secret_value()) if name == "redis_url" else value)

    @field_validator("disabled_jobs", mode="before")
    @classmethod
    def _split_ids(cls, value: Any) -> Any:
        if isinstance(value, str):
            return frozenset(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("job_schedules", mode="before")
    @classmethod
    def _parse_schedules(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                return {}
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not JSON ({exc.msg})") from None
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_url(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise ValueError(f"malformed URL {mask_url(url)!r}") from None
        if parts.scheme not in _URL_SCHEMES:
            raise ValueError(f"scheme must be one of {', '.join(_URL_SCHEMES)}, got {parts.scheme or 'none'!r}")
        if parts.scheme == "unix":
            if not parts.path:
                raise ValueError("unix:// URL needs a socket path")
        elif not parts.hostname:
            raise ValueError(f"URL {mask_url(url)!r} has no host")
        del port
        return value

    @field_validator("key_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not value or any(c in value for c in "{}: \t\n*?[]"):
            raise ValueError("must be non-empty, without braces, colons, spaces or glob characters")
        return value

    @field_validator("replica_id")
    @classmethod
    def _check_replica(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _check_timings(self) -> Settings:
        try:
            LeaseTimings(self.lease_ttl, self.renew_deadline, self.retry_period)
        except InvalidTimings as exc:
            msg = str(exc)
            for internal, env in (
                ("renew_deadline_s", "LIGHTSCHED_RENEW_DEADLINE"),
                ("retry_period_s", "LIGHTSCHED_RETRY_PERIOD"),
                ("ttl_s", "LIGHTSCHED_LEASE_TTL"),
                ("lease ttl", "LIGHTSCHED_LEASE_TTL"),
                ("renew deadline", "LIGHTSCHED_RENEW_DEADLINE"),
                ("retry period", "LIGHTSCHED_RETRY_PERIOD"),
            ):
                msg = msg.replace(internal, env)
            raise ValueError(msg) from None
        for name in ("drain_timeout", "misfire_grace_time"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{ENV_PREFIX}{name.upper()} must be positive")
        room_s = self.renew_deadline - self.retry_period
        if "redis_socket_timeout" not in self.model_fields_set:
            # Not set: the default (5 s) shrinks with short lease timings, leaving room for one retry.
            object.__setattr__(self, "redis_socket_timeout", round(min(SOCKET_TIMEOUT_DEFAULT_S, room_s / 2), 3))
        if self.redis_socket_timeout >= room_s:
            raise ValueError(
                f"LIGHTSCHED_REDIS_SOCKET_TIMEOUT ({self.redis_socket_timeout}s) must be below "
                f"LIGHTSCHED_RENEW_DEADLINE - LIGHTSCHED_RETRY_PERIOD ({self.renew_deadline - self.retry_period:g}s): "
                "a renew whose reply is lost must time out, and be tried again, before the renew deadline"
            )
        if self.wait_replicas and self.wait_timeout_ms >= self.redis_socket_timeout * 1000:
            raise ValueError(
                f"LIGHTSCHED_WAIT_TIMEOUT_MS ({self.wait_timeout_ms}) must be below LIGHTSCHED_REDIS_SOCKET_TIMEOUT "
                f"({self.redis_socket_timeout}s), or a WAIT for replicas counts as a lost connection"
            )
        if self.wait_replicas and self.wait_timeout_ms >= self.renew_deadline * 1000:
            raise ValueError(
                f"LIGHTSCHED_WAIT_TIMEOUT_MS ({self.wait_timeout_ms}) must be below LIGHTSCHED_RENEW_DEADLINE "
                f"({self.renew_deadline}s)"
            )
        if self.misfire_grace_time < self.lease_ttl + self.retry_period:
            raise ValueError(
                f"LIGHTSCHED_MISFIRE_GRACE_TIME ({self.misfire_grace_time}s) must be at least "
                f"LIGHTSCHED_LEASE_TTL + LIGHTSCHED_RETRY_PERIOD ({self.lease_ttl + self.retry_period}s), "
                "or a slot that falls due during a crash takeover is dropped"
            )
        return self

    @property
    def timings(self) -> LeaseTimings:
        return LeaseTimings(self.lease_ttl, self.renew_deadline, self.retry_period)

    def masked_redis_url(self) -> str:
        return mask_url(self.redis_url.get_secret_value())


def load_settings(**overrides: Any) -> Settings:
    """Read the settings; raise `SettingsError` with one line naming what is wrong."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err.get("loc", ())]
        msg = err["msg"].removeprefix("Value error, ")
        if loc:
            raise SettingsError(f"{ENV_PREFIX}{loc[0].upper()}: {msg}") from None
        raise SettingsError(msg) from None
