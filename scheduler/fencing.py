"""Fenced writes: a write lands only while its term's lease is still current.

"Current" means the leader key holds a lease with exactly the writer's fence,
its token *and* its lease id (`leader.fence`): a fence is superseded the
moment another acquisition happens, even one that minted the same number, and
also once the lease expired or Redis lost it. Each fenced operation is one Lua
script that checks the leader key and writes in the same atomic step.

Guarantees:
- a stale leader's fenced write changes nothing and reports False/None;
- every script is idempotent for its caller: a command re-sent after a lost
  reply does not write twice (an XADD remembers its operation id for a while);
- with `wait_replicas` > 0, a write is followed by WAIT on the same
  connection, and one that too few replicas acknowledged raises
  `WriteNotReplicated`: it may vanish in a failover, so no side effect may
  follow it.

Does not guarantee: fencing of writes to systems other than this Redis, or of
keys outside the deployment's prefix under Redis Cluster, where one script
cannot reach two slots: `unlink` then checks the fence and deletes in two
steps (documented in docs/OPERATIONS.md).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from leader import fenced_script, run_scripts

from .keys import Keyspace

__all__ = [
    "FENCED_SET_LUA",
    "FENCED_UNLINK_LUA",
    "FENCED_XADD_LUA",
    "Fence",
    "FencedOut",
    "KeyOutsidePrefix",
    "WriteNotReplicated",
]

#: How long an XADD remembers its operation id, so a re-send is recognised (ms).
OP_MEMORY_MS = 120_000

# KEYS[1] leader key, KEYS[2] target key
# ARGV[1] fence, ARGV[2] value, ARGV[3] px in ms or '' for no expiry
# Returns 1 when written, 0 when fenced out. (A re-sent SET writes the same value again.)
FENCED_SET_LUA = fenced_script("""
if fenced then return 0 end
if ARGV[3] ~= '' then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
else
  redis.call('SET', KEYS[2], ARGV[2])
end
return 1
""")

# KEYS[1] leader key, KEYS[2..n] keys to delete
# ARGV[1] fence
# Returns the number of keys unlinked, or -1 when fenced out.
FENCED_UNLINK_LUA = fenced_script("""
if fenced then return -1 end
if #KEYS < 2 then return 0 end
return redis.call('UNLINK', unpack(KEYS, 2))
""")

# KEYS[1] leader key, KEYS[2] stream key, KEYS[3] operation key (remembers this XADD)
# ARGV[1] fence, ARGV[2] approximate max length, ARGV[3] ms the operation key lives,
# ARGV[4..] field, value pairs
# Returns the entry id, or false when fenced out. A re-send of an XADD that already
# landed returns the first entry's id (its PEXPIRE is a write, so a WAIT covers it).
FENCED_XADD_LUA = """
local done = redis.call('GET', KEYS[3])
if done then
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
  return done
end
""" + fenced_script("""
if fenced then return false end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 4))
redis.call('SET', KEYS[3], id, 'PX', ARGV[3])
return id
""")


class KeyOutsidePrefix(ValueError):
    def __init__(self, key: str, keys: Keyspace) -> None:
        super().__init__(f"key {key!r} is outside this deployment's prefix {keys.base + ':'!r}")


class FencedOut(Exception):  # noqa: N818 - the project's name for this condition
    """This run's fence is no longer current: another leader took over (or the lease
    expired), so nothing was written. A run that raises it ends as `fenced`."""

    def __init__(self, job_id: str, token: int, what: str) -> None:
        self.job_id = job_id
        self.token = token
        super().__init__(f"job {job_id!r}: fencing token {token} is no longer current; {what} refused")


class WriteNotReplicated(Exception):  # noqa: N818 - a condition, named like FencedOut
    """A fenced write landed on the primary but too few replicas acknowledged it in
    time: a failover may lose it, so nothing that depends on it may happen."""

    def __init__(self, what: str, acked: int, wanted: int) -> None:
        self.acked, self.wanted = acked, wanted
        super().__init__(f"{what} acknowledged by {acked} of {wanted} replicas (WAIT); not acted on")


class Fence:
    """Fenced operations for one deployment; scripts registered once per client.

    `fence` arguments are a term's `<token>:<lease_id>` (`leader.fence_arg`).
    """

    def __init__(
        self, client: Redis | RedisCluster, keys: Keyspace, *, wait_replicas: int = 0, wait_timeout_ms: int = 500
    ) -> None:
        self._client = client
        self.keys = keys
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._set = client.register_script(FENCED_SET_LUA)
        self._unlink = client.register_script(FENCED_UNLINK_LUA)
        self._xadd = client.register_script(FENCED_XADD_LUA)
        self._cluster = isinstance(client, RedisCluster)

    def _own(self, key: str) -> str:
        if not self.keys.owns(key):
            raise KeyOutsidePrefix(key, self.keys)
        return key

    async def run(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any], *, what: str = "write") -> Any:
        """Run one fenced script (KEYS[1] the leader key, ARGV[1] the fence) and, with
        `wait_replicas` > 0, WAIT on its connection; `WriteNotReplicated` when too few acked.

        The script's own result is returned; an error reply is raised.
        """
        (res,), acked = await run_scripts(
            self._client, [(script, keys, args)], wait_replicas=self.wait_replicas, wait_timeout_ms=self.wait_timeout_ms
        )
        if isinstance(res, Exception):
            raise res
        if acked is not None and acked < self.wait_replicas:
            raise WriteNotReplicated(what, acked, self.wait_replicas)
        return res

    async def set(self, fence: str, key: str, value: str | bytes, px: int | None = None) -> bool:
        res = await self.run(
            self._set, [self.keys.leader, self._own(key)], [fence, value, "" if px is None else int(px)], what=f"SET {key}"
        )
        return int(res) == 1

    async def xadd(self, fence: str, key: str, fields: dict[str, Any], maxlen: int) -> str | None:
        flat: list[Any] = []
        for k, v in fields.items():
            flat += [k, v]
        op_key = self.keys.op(uuid.uuid4().hex)
        res = await self.run(
            self._xadd, [self.keys.leader, self._own(key), op_key], [fence, maxlen, OP_MEMORY_MS, *flat],
            what=f"XADD {key}",
        )
        if not res:
            return None
        return res.decode() if isinstance(res, bytes) else str(res)

    async def is_current(self, fence: str) -> bool:
        res = await self._unlink(keys=[self.keys.leader], args=[fence])
        return int(res) != -1

    async def unlink(self, fence: str, keys: list[str]) -> int | None:
        """Delete `keys` (any names) if `fence` is current; None when fenced out."""
        if not keys:
            return 0 if await self.is_current(fence) else None
        if self._cluster:
            # One script cannot span slots: check, then delete (see module doc).
            if not await self.is_current(fence):
                return None
            return int(await self._client.unlink(*keys))
        res = int(await self.run(self._unlink, [self.keys.leader, *keys], [fence], what="UNLINK"))
        return None if res == -1 else res
