"""The APScheduler 3 executor seam, per-job run queues, and worker threads that are waited for.

Guarantees:
- At most one run of a job at a time on a replica. A plain-function run
  occupies its job until its worker thread has really returned: cancelling or
  timing out its coroutine ends the wait, not the thread, and the job stays
  occupied. Slots (and manual requests) that fall due meanwhile wait behind it.
- Cancellation goes through anyio cancel scopes (`cancel_all`), never
  `Task.cancel()`. Items queued under a cancelled leadership (an older
  `epoch`) are dropped, never run under the next one.
- Every queue task's bookkeeping is undone in a done-callback, so a task that
  never got to run its first step still frees its job.

Does not guarantee: that a thread stops; Python cannot stop a thread. Its
fenced writes are refused once the lease is gone, and `ThreadRun` says how
long it has been running past its deadline.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Generic, TypeVar

import anyio
from apscheduler.executors.base import BaseExecutor
from apscheduler.job import Job

__all__ = ["JobExecutor", "ThreadRun"]

T = TypeVar("T")

#: Worker threads running job functions at once, across all jobs of a replica (anyio's default too).
MAX_JOB_THREADS = 40


class ThreadRun(Generic[T]):
    """One call of a plain function in an anyio worker thread, kept track of until it returns.

    A keeper task awaits the thread without ever giving up on it (anyio's
    `to_thread.run_sync` without abandoning), so `done` resolves only when the
    function has really returned. `wait()` may be cancelled (leadership lost,
    a timeout): that ends the wait, not the keeper nor the thread. The thread
    is anyio's, so the function may call back into the loop with
    `anyio.from_thread.run(...)`.
    """

    def __init__(
        self,
        job_id: str,
        func: Callable[..., T],
        *args: Any,
        deadline_mono: float | None = None,
        limiter: anyio.CapacityLimiter | None = None,
    ) -> None:
        self.job_id = job_id
        self.deadline_mono = deadline_mono
        self.done: asyncio.Task[T] = asyncio.get_running_loop().create_task(
            self._keep(func, args, limiter), name=f"lightsched-thread:{job_id}"
        )
        self.done.add_done_callback(_retrieve)

    @staticmethod
    async def _keep(func: Callable[..., T], args: tuple[Any, ...], limiter: anyio.CapacityLimiter | None) -> T:
        return await anyio.to_thread.run_sync(func, *args, limiter=limiter)

    async def wait(self) -> T:
        """The function's result; cancelling this wait leaves the thread (and its keeper) running."""
        return await asyncio.shield(self.done)


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a keeper's exception as seen: the run that started it may have stopped waiting."""
    if not task.cancelled():
        task.exception()


Item = Any  # a slot (tz-aware datetime) or a manual request


class JobExecutor(BaseExecutor):
    """Hands due slots to the replica instead of running `job.func`, one queue per job.

    `_do_submit_job` is APScheduler 3's executor extension point, the only
    place that sees the scheduled fire times. `submit_job` is overridden so a
    slot that falls due while the job's previous submission (or its thread)
    still runs is queued behind it instead of being dropped by APScheduler's
    max-instances check. `enqueue` takes manual requests the same way.
    """

    #: Slots queued behind a running submission, per job, before the oldest are dropped (and counted missed).
    MAX_PENDING = 1000

    def __init__(
        self,
        run_items: Callable[[str, list[Item]], Awaitable[None]],
        on_dropped: Callable[[str, list[datetime]], None],
    ) -> None:
        super().__init__()
        self._run_items = run_items
        self._on_dropped = on_dropped
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._pending: dict[str, list[tuple[int, Item]]] = {}
        self._scopes: dict[str, anyio.CancelScope] = {}
        self._threads: dict[str, set[ThreadRun[Any]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.limiter = anyio.CapacityLimiter(MAX_JOB_THREADS)
        self.epoch = 0
        self._deferred: set[asyncio.TimerHandle] = set()

    def start(self, scheduler: Any, alias: str) -> None:
        super().start(scheduler, alias)
        self._loop = scheduler._eventloop

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Use `loop` without a scheduler (manual requests arrive before APScheduler starts)."""
        self._loop = self._loop or loop

    # -- submitting ---------------------------------------------------------------

    def submit_job(self, job: Job, run_times: list[datetime]) -> None:
        self.enqueue(job.id, list(run_times))

    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        self.enqueue(job.id, list(run_times))

    def enqueue(self, job_id: str, items: list[Item], *, epoch: int | None = None) -> None:
        """Queue `items` for `job_id`; with `epoch`, only if no `cancel_all` happened since."""
        if epoch is not None and epoch != self.epoch:
            return
        running = self.tasks.get(job_id)
        if running is not None and not running.done():
            pending = self._pending.setdefault(job_id, [])
            pending.extend((self.epoch, item) for item in items)
            slots = [i for i, (_, item) in enumerate(pending) if isinstance(item, datetime)]
            if len(slots) > self.MAX_PENDING:
                drop = set(slots[: len(slots) - self.MAX_PENDING])
                self._on_dropped(job_id, [item for i, (_, item) in enumerate(pending) if i in drop])
                pending[:] = [p for i, p in enumerate(pending) if i not in drop]
            return
        assert self._loop is not None
        task = self._loop.create_task(self._job_task(job_id, self.epoch, items), name=f"lightsched-run:{job_id}")
        self.tasks[job_id] = task
        task.add_done_callback(functools.partial(self._task_done, job_id))

    async def _job_task(self, job_id: str, epoch: int, items: list[Item]) -> None:
        batch = items if epoch == self.epoch else []
        while batch:
            with anyio.CancelScope() as scope:
                self._scopes[job_id] = scope
                try:
                    await self._run_items(job_id, batch)
                finally:
                    self._scopes.pop(job_id, None)
            await self._wait_threads(job_id)
            batch = [item for e, item in self._pending.pop(job_id, []) if e == self.epoch]

    def _task_done(self, job_id: str, task: asyncio.Task[None]) -> None:
        if self.tasks.get(job_id) is task:
            del self.tasks[job_id]
            self._pending.pop(job_id, None)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            assert exc is not None
            self._logger.error("running job %s failed in the runtime", job_id, exc_info=(type(exc), exc, exc.__traceback__))

    # -- threads --------------------------------------------------------------------

    def hold(self, run: ThreadRun[Any]) -> None:
        """Keep `run.job_id` occupied until `run`'s thread returns."""
        runs = self._threads.setdefault(run.job_id, set())
        runs.add(run)
        run.done.add_done_callback(lambda _: runs.discard(run))

    async def _wait_threads(self, job_id: str) -> None:
        runs = [r.done for r in self._threads.get(job_id, ()) if not r.done.done()]
        if runs:
            # Not cancellable by the replica: the job stays occupied until the thread returns.
            with anyio.CancelScope(shield=True):
                await asyncio.wait(runs)

    def thread_runs(self) -> list[ThreadRun[Any]]:
        """Thread runs whose thread has not returned yet."""
        return [r for runs in self._threads.values() for r in runs if not r.done.done()]

    # -- stopping -------------------------------------------------------------------

    def enqueue_later(self, delay_s: float, job_id: str, items: list[Item]) -> None:
        """Queue `items` in `delay_s` seconds, unless `cancel_all` is called before."""
        assert self._loop is not None
        epoch = self.epoch

        def fire() -> None:
            self._deferred.discard(handle)
            self.enqueue(job_id, items, epoch=epoch)

        handle = self._loop.call_later(delay_s, fire)
        self._deferred.add(handle)

    def cancel_all(self) -> int:
        """Cancel every run's coroutine and drop every queued item; returns the jobs affected.

        Thread runs go on; their jobs stay occupied until the threads return.
        """
        self.epoch += 1
        self._pending.clear()
        for handle in self._deferred:
            handle.cancel()
        self._deferred.clear()
        for scope in self._scopes.values():
            scope.cancel()
        return len(self.tasks)

    async def wait_idle(self) -> None:
        while live := [t for t in self.tasks.values() if not t.done()]:
            await asyncio.wait(live)
