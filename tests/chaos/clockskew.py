"""Run `scheduler.cli` with a wall clock the test can jump, in this one process only.

`python -m tests.chaos.clockskew run` starts time-machine travelling (ticking)
from the real time before anything else is imported, then runs the CLI. On
SIGUSR2 it reads a number of seconds from the file named by
`LIGHTSCHED_CHAOS_CLOCK_FILE` and moves this process' wall clock to real time
plus that offset: `time.time`, `datetime.now` and `CLOCK_REALTIME` jump; the
monotonic and boot-time clocks do not (as with an NTP step or an operator's
`date -s`).

Does not change the clock of Redis or of any other process.
"""

from __future__ import annotations

import os
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import time_machine

CLOCK_FILE_ENV = "LIGHTSCHED_CHAOS_CLOCK_FILE"

_traveller = time_machine.travel(datetime.now(UTC), tick=True)
_coords = _traveller.start()
# Ticking starts at the first read, not at start(): read now, or the clock
# would stand still through the imports below.
datetime.now(UTC)
# time-machine patches every wall-clock reader (CLOCK_REALTIME too), so the
# true time is known only as "travelled time minus the offset applied so far".
_applied_s = 0.0


def _offset_s() -> float:
    path = os.environ.get(CLOCK_FILE_ENV)
    try:
        return float(Path(path).read_text().strip()) if path else 0.0
    except (OSError, ValueError):
        return 0.0


def _jump(signum: int, frame: object) -> None:
    global _applied_s
    offset_s = _offset_s()
    _coords.shift(timedelta(seconds=offset_s - _applied_s))
    _applied_s = offset_s


def main() -> None:
    signal.signal(signal.SIGUSR2, _jump)
    _jump(signal.SIGUSR2, None)
    from scheduler.cli import main as cli_main

    sys.argv = ["lightsched", *sys.argv[1:]]
    cli_main()


if __name__ == "__main__":
    main()
