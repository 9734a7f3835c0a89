"""The built-in light jobs and their default schedules, as one `registry`.

| job             | default schedule              | timeout |
|-----------------|-------------------------------|---------|
| provider_health | every 60 s (`60s`)            | 30 s    |
| system_health   | every 30 s (`30s`)            | 15 s    |
| cleanup         | hourly at :07 (`7 * * * *`)   | 300 s   |

Schedules are code defaults: LIGHTSCHED_JOB_SCHEDULES replaces them and
LIGHTSCHED_DISABLED_JOBS turns jobs off, without a code change. Each job's
settings come from its own env prefix (`LIGHTSCHED_PROVIDER_HEALTH_`,
`LIGHTSCHED_SYSTEM_HEALTH_`, `LIGHTSCHED_CLEANUP_`).
"""

from __future__ import annotations

from scheduler import JobRegistry

# Modules, not their job functions: `jobs.cleanup` stays the module.
from . import cleanup, provider_health, system_health
from ._store import FencedOut
from .provider_health import UnknownProvider

__all__ = ["FencedOut", "UnknownProvider", "build_registry", "registry"]


def build_registry() -> JobRegistry:
    """A fresh registry with the three jobs at their default schedules."""
    reg = JobRegistry()
    reg.add(
        "provider_health",
        provider_health.provider_health,
        trigger="60s",
        timeout=30,
        config=provider_health.ProviderHealthConfig,
        description="probe the configured upstream providers over HTTP",
    )
    reg.add(
        "system_health",
        system_health.system_health,
        trigger="30s",
        timeout=15,
        config=system_health.SystemHealthConfig,
        description="grade Redis, this process and its disks as ok / warn / fail",
    )
    # Minute 7, not 0: the top of the hour is when most other cron work fires.
    reg.add(
        "cleanup",
        cleanup.cleanup,
        trigger="7 * * * *",
        timeout=300,
        config=cleanup.CleanupConfig,
        description="delete leftover keys by rule and trim old job history",
    )
    return reg


registry = build_registry()
