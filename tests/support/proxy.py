"""A TCP proxy for fault injection: one listening port per client, each with its own faults.

Each replica connects to Redis through its own `Link`, so one replica's traffic
can be partitioned or delayed while the others' flows normally.

- `partition()` holds every byte in both directions (and every close) until
  `heal()`, like a network partition under TCP: nothing is lost, it arrives
  late. A command a client gave up on is still delivered to Redis on heal,
  as a late packet would be; this is what makes a partition a test of fencing.
- `delay(s)` delivers each chunk `s` seconds after it was read, in order.
- New connections are accepted during a partition; their bytes wait too.
- When the upstream (Redis) is down, new client connections are closed at once.
- `ChaosProxy.retarget(host, port)` points every link at another upstream and
  resets the connections it carried, as a virtual IP moved by a failover does.

The proxy runs its own asyncio loop in a daemon thread of the test process;
the control methods are thread-safe. Does not model packet loss, reordering
or bandwidth.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any

__all__ = ["ChaosProxy", "Link"]

CHUNK_BYTES = 65536
_EOF = b""


class Link:
    """One listening port forwarding to the upstream, with its own fault state."""

    def __init__(self, proxy: ChaosProxy, name: str) -> None:
        self.proxy = proxy
        self.name = name
        self.port = 0
        self.delay_s = 0.0
        self._open: asyncio.Event | None = None  # set = flowing, clear = partitioned
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self.connections = 0

    def __repr__(self) -> str:
        return f"Link({self.name!r}, port={self.port}, partitioned={self.partitioned}, delay_s={self.delay_s})"

    @property
    def partitioned(self) -> bool:
        return self._open is not None and not self._open.is_set()

    async def _start(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            u_reader, u_writer = await asyncio.open_connection(self.proxy.upstream_host, self.proxy.upstream_port)
        except OSError:
            c_writer.close()
            return
        for src, dst, what in ((c_reader, u_writer, "up"), (u_reader, c_writer, "down")):
            task = asyncio.get_running_loop().create_task(self._pipe(src, dst), name=f"proxy-{self.name}-{what}")
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        """Read chunks into a queue; a second loop delivers them when due and not partitioned."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def read() -> None:
            try:
                while True:
                    data = await src.read(CHUNK_BYTES)
                    queue.put_nowait((time.monotonic(), data))
                    if not data:
                        return
            except (OSError, asyncio.IncompleteReadError):
                queue.put_nowait((time.monotonic(), _EOF))

        reader = asyncio.get_running_loop().create_task(read())
        assert self._open is not None
        try:
            while True:
                read_at, data = await queue.get()
                await self._open.wait()
                due = read_at + self.delay_s - time.monotonic()
                if due > 0:
                    await asyncio.sleep(due)
                await self._open.wait()
                if not data:
                    break
                dst.write(data)
                await dst.drain()
        except OSError:
            pass
        finally:
            reader.cancel()
            dst.close()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        pipes = list(self._pipes)
        for task in pipes:
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        await asyncio.sleep(0.05)  # let the cancelled readers finish

    # -- control (any thread) ------------------------------------------------

    def partition(self) -> None:
        assert self._open is not None
        self.proxy._call(self._open.clear)

    def heal(self) -> None:
        assert self._open is not None
        self.delay_s = 0.0
        self.proxy._call(self._open.set)

    def delay(self, delay_s: float) -> None:
        self.delay_s = delay_s

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class ChaosProxy:
    """A set of `Link`s to one upstream, served by one loop in a daemon thread."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.links: dict[str, Link] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="chaos-proxy", daemon=True)
        self._thread.start()

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout=10)

    def _call(self, fn: Any) -> None:
        self._loop.call_soon_threadsafe(fn)

    def link(self, name: str) -> Link:
        link = Link(self, name)
        self._run(link._start())
        self.links[name] = link
        return link

    def retarget(self, host: str, port: int) -> None:
        """Send new connections to `host:port`; close the ones open now (clients reconnect)."""
        self.upstream_host, self.upstream_port = host, port

        async def reset() -> None:
            for link in self.links.values():
                pipes = list(link._pipes)
                for task in pipes:
                    task.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)

        self._run(reset())

    def heal_all(self) -> None:
        for link in self.links.values():
            link.heal()

    def close(self) -> None:
        for link in self.links.values():
            self._run(link._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> ChaosProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
