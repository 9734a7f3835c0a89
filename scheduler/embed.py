"""Run lightsched inside an existing asyncio application.

- `create_replica(registry)` reads the settings (once, here at the edge) and
  builds a replica without connecting anywhere.
- `async with run_scheduler(replica):` runs it for the duration of the block
  and stops it gracefully (drain, release) at the end.
- `lifespan(replica)` is the same as an ASGI lifespan for FastAPI/Starlette.
- `health_router(replica)` gives the health/status/metrics routes to mount.

The embedding application owns signals; lightsched installs no handlers here.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio

from .registry import JobRegistry
from .runtime import Replica
from .settings import Settings, load_settings

__all__ = ["RegistryLoadError", "create_replica", "health_router", "lifespan", "load_registry", "run_scheduler"]


class RegistryLoadError(ImportError):
    pass


def load_registry(ref: str) -> JobRegistry:
    """Import `MODULE:ATTR` and check that it is a JobRegistry."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise RegistryLoadError(f"LIGHTSCHED_JOBS: expected MODULE:ATTR, got {ref!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RegistryLoadError(f"LIGHTSCHED_JOBS: cannot import {module_name!r}: {exc}") from None
    registry = getattr(module, attr, None)
    if not isinstance(registry, JobRegistry):
        raise RegistryLoadError(f"LIGHTSCHED_JOBS: {ref!r} is not a JobRegistry (got {type(registry).__name__})")
    return registry


def create_replica(registry: JobRegistry | None = None, settings: Settings | None = None, **kwargs: Any) -> Replica:
    """A replica from the environment's settings (and `LIGHTSCHED_JOBS` when no registry is given).

    Embedded, the app serves the routes (`health_router`), so the replica opens
    no HTTP server of its own unless `LIGHTSCHED_HTTP_PORT` is set explicitly.
    """
    settings = settings or load_settings()
    if "http_port" not in settings.model_fields_set:
        settings = settings.model_copy(update={"http_port": 0})
    return Replica(settings, registry if registry is not None else load_registry(settings.jobs), **kwargs)


@asynccontextmanager
async def run_scheduler(replica: Replica) -> AsyncIterator[Replica]:
    """Run `replica` in the background of the `async with` block; stop it gracefully at the end."""
    async with anyio.create_task_group() as tg:
        await tg.start(replica.run)
        try:
            yield replica
        finally:
            replica.request_stop()


def lifespan(replica: Replica) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """An ASGI lifespan that runs `replica` beside the app (also on `app.state.lightsched`)."""

    @asynccontextmanager
    async def _lifespan(app: Any) -> AsyncIterator[None]:
        async with run_scheduler(replica):
            app.state.lightsched = replica
            yield

    return _lifespan


def health_router(replica: Replica) -> Any:
    """The health, status and metrics routes as a Starlette router, for `app.mount("/", ...)`."""
    from observability.health import health_router as _router

    async def status() -> dict[str, Any]:
        return (await replica.status()).model_dump(mode="json")

    return _router(status, replica.liveness, replica.readiness, replica.telemetry.registry)
