"""Serve a replica's health, status and metrics over HTTP (observability.health on uvicorn)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from .runtime import Replica

__all__ = ["health_app_for", "start_http"]


def health_app_for(replica: Replica) -> Any:
    from observability.health import create_health_app

    async def status() -> dict[str, Any]:
        return (await replica.status()).model_dump(mode="json")

    return create_health_app(status, replica.liveness, replica.readiness, replica.telemetry.registry)


async def start_http(replica: Replica, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
    from observability.health import serve_http

    await serve_http(
        health_app_for(replica), replica.settings.http_host, replica.settings.http_port, task_status=task_status
    )
