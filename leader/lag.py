"""Event-loop lag: how late a short periodic sleep wakes up.

Guarantees: `lag_s` is the lateness of the most recent tick and `max_lag_s`
the worst since the last `reset_max()`. Costs one wakeup per `interval_s`.
Does not guarantee: detecting a stall while it lasts; it reports it after.
"""

from __future__ import annotations

import anyio

from .timing import Clock, SystemClock

__all__ = ["LoopLagMonitor"]


class LoopLagMonitor:
    def __init__(self, interval_s: float = 0.5, clock: Clock | None = None) -> None:
        self.interval_s = interval_s
        self._clock = clock or SystemClock()
        self.lag_s = 0.0
        self.max_lag_s = 0.0
        self.last_tick_mono: float | None = None

    def reset_max(self) -> float:
        worst, self.max_lag_s = self.max_lag_s, self.lag_s
        return worst

    async def run(self) -> None:
        while True:
            start = self._clock.monotonic()
            await anyio.sleep(self.interval_s)
            now = self._clock.monotonic()
            self.lag_s = max(0.0, now - start - self.interval_s)
            self.max_lag_s = max(self.max_lag_s, self.lag_s)
            self.last_tick_mono = now
