"""Lua scripts sent down one connection, optionally followed by `WAIT`.

`WAIT n timeout` counts replica acknowledgements of the writes made *on its
own connection*. A WAIT sent on any other connection checks nothing (a fresh
connection has written nothing, so WAIT returns at once). This module is the
one place that sends scripts whose writes must be acknowledged, and it keeps
script and WAIT on one connection:

- standalone and Sentinel: one non-transactional pipeline (redis-py gives a
  pipeline one connection for its whole execution, re-sends included);
- Cluster: every lightsched key carries the deployment's hash tag, so all the
  keys of one batch live in one slot; the batch and its WAIT go to the node
  owning that slot as one pipeline on one connection of that node
  (`ClusterNode.execute_pipeline`), not through redis-py's cluster client,
  whose node pool hands connections out first-in first-out.

Guarantees: results come back in call order, each a value or the exception
Redis returned for that call; `acked` is the replica count WAIT reported, or
None when no WAIT was asked for. A script missing from the server's cache is
loaded and the batch re-sent (each script is idempotent for its caller, so a
re-send is harmless; a no-op re-send still writes, so a WAIT after it still
covers the first execution's writes).

Does not guarantee: that acknowledged writes survive a failover that promotes
a replica which did not acknowledge them (see docs/REDIS.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.commands.core import AsyncScript

__all__ = ["ScriptCall", "run_scripts"]

#: (script, keys, args): one EVALSHA.
ScriptCall = tuple[AsyncScript, Sequence[Any], Sequence[Any]]


async def run_scripts(
    client: Redis | RedisCluster,
    calls: Sequence[ScriptCall],
    *,
    wait_replicas: int = 0,
    wait_timeout_ms: int = 0,
) -> tuple[list[Any], int | None]:
    """Run `calls` in order on one connection, then `WAIT` when `wait_replicas` > 0.

    Returns (results, acked). Connection-level failures raise as redis-py
    raised them; per-call Redis errors are returned in place.
    """
    if not calls:
        return [], None
    if isinstance(client, RedisCluster):
        if wait_replicas <= 0:
            return [await _direct(script, keys, args) for script, keys, args in calls], None
        return await _cluster_pinned(client, calls, wait_replicas, wait_timeout_ms)
    if wait_replicas <= 0 and len(calls) == 1:
        # Alone: a plain EVALSHA (a pipeline would first ask SCRIPT EXISTS).
        script, keys, args = calls[0]
        return [await _direct(script, keys, args)], None
    for attempt in (1, 2):
        async with client.pipeline(transaction=False) as pipe:
            for script, keys, args in calls:
                await script(keys=list(keys), args=list(args), client=pipe)
            if wait_replicas > 0:
                pipe.execute_command("WAIT", wait_replicas, wait_timeout_ms)
            results = await pipe.execute(raise_on_error=False)
        missing = {id(c[0]): c[0] for c, r in zip(calls, results, strict=False) if isinstance(r, rexc.NoScriptError)}
        if not missing or attempt == 2:
            break
        # A server that lost its script cache (a failover promoted a replica, a restart): load
        # them and send the batch again; the pipeline's own SCRIPT EXISTS check can be stale.
        for script in missing.values():
            script.sha = await client.script_load(script.script)
    if wait_replicas > 0:
        acked = results.pop()
        if isinstance(acked, Exception):
            raise acked
        return results, int(acked)
    return results, None


async def _direct(script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
    """One EVALSHA; an error reply is returned in place, as a pipeline returns it."""
    try:
        return await script(keys=list(keys), args=list(args))
    except rexc.ResponseError as exc:
        return exc


async def _cluster_pinned(
    client: RedisCluster, calls: Sequence[ScriptCall], wait_replicas: int, wait_timeout_ms: int
) -> tuple[list[Any], int | None]:
    await client.initialize()
    slots = {client.keyslot(k) for _, keys, _ in calls for k in keys}
    if len(slots) != 1:
        raise rexc.RedisClusterException(f"one replicated batch must touch one slot, got {sorted(slots)}")
    node: ClusterNode = client.nodes_manager.get_node_from_slot(slots.pop())
    for attempt in (1, 2):
        commands = [
            PipelineCommand(i, "EVALSHA", script.sha, len(keys), *keys, *args)
            for i, (script, keys, args) in enumerate(calls)
        ]
        commands.append(PipelineCommand(len(calls), "WAIT", wait_replicas, wait_timeout_ms))
        try:
            await node.execute_pipeline(commands)
        except (rexc.ConnectionError, rexc.TimeoutError, OSError):
            # The node may be gone (a failover): refresh the slot map for the next attempt.
            try:
                await client.nodes_manager.initialize()
            except (rexc.RedisError, OSError):
                pass
            raise
        results = [c.result for c in commands]
        redirected = next((r for r in results if isinstance(r, (rexc.MovedError, rexc.AskError))), None)
        if redirected is not None:
            # The slot moved (a failover or a resharding): refresh the map; the caller retries.
            await client.nodes_manager.initialize()
            raise redirected
        missing = [calls[i][0] for i, r in enumerate(results[:-1]) if isinstance(r, rexc.NoScriptError)]
        if missing and attempt == 1:
            for script in {id(s): s for s in missing}.values():
                script.sha = await node.execute_command("SCRIPT", "LOAD", script.script)
                script.sha = script.sha.decode() if isinstance(script.sha, bytes) else str(script.sha)
            continue
        acked = results.pop()
        if isinstance(acked, Exception):
            raise acked
        return results, int(acked)
    raise AssertionError("unreachable")  # pragma: no cover
