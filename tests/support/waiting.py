"""Polled conditions with a deadline: the suite's one way to wait (never a bare sleep)."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import Any

import anyio

__all__ = ["wait_for", "wait_until"]


def wait_for(cond: Callable[[], Any], timeout_s: float, what: str = "condition", interval_s: float = 0.02) -> Any:
    """Poll `cond` until it returns something truthy, and return that; TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


async def wait_until(cond: Callable[[], Any], timeout_s: float = 20, what: str = "condition", interval_s: float = 0.02) -> Any:
    """The async form: `cond` may be a plain function or a coroutine function."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        await anyio.sleep(interval_s)
