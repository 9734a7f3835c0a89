"""Fenced writes: a write lands only while its fencing token is still current.

"Current" means the leader key holds a lease with exactly this token: a token
is superseded the moment another acquisition happens, and also once the lease
expired or Redis lost it. Each fenced operation is one Lua script that checks
the leader key and writes in the same atomic step.

Guarantees: a stale leader's fenced write changes nothing and reports False.
Does not guarantee: fencing of writes to systems other than this Redis, or of
keys outside the deployment's prefix under Redis Cluster, where one script
cannot reach two slots: `fenced_unlink` then checks the fence and deletes in
two steps (documented in docs/OPERATIONS.md).
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from .keys import Keyspace

__all__ = ["FENCED_SET_LUA", "FENCED_UNLINK_LUA", "FENCED_XADD_LUA", "FENCE_CHECK_LUA", "Fence", "KeyOutsidePrefix"]

# Shared prelude. KEYS[1] leader key, ARGV[1] fencing token.
# Leaves `fenced` true when the token is not the current lease's.
FENCE_CHECK_LUA = """
local fenced = true
local held = redis.pcall('GET', KEYS[1])  -- pcall: a leader key of another type fences, not errors
if type(held) == 'string' then
  local ok, lease = pcall(cjson.decode, held)
  if ok and type(lease) == 'table' and tonumber(lease.fencing_token) == tonumber(ARGV[1]) then
    fenced = false
  end
end
"""

# KEYS[1] leader key, KEYS[2] target key
# ARGV[1] fencing token, ARGV[2] value, ARGV[3] px in ms or '' for no expiry
# Returns 1 when written, 0 when fenced out.
FENCED_SET_LUA = FENCE_CHECK_LUA + """
if fenced then return 0 end
if ARGV[3] ~= '' then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
else
  redis.call('SET', KEYS[2], ARGV[2])
end
return 1
"""

# KEYS[1] leader key, KEYS[2..n] keys to delete
# ARGV[1] fencing token
# Returns the number of keys unlinked, or -1 when fenced out.
FENCED_UNLINK_LUA = FENCE_CHECK_LUA + """
if fenced then return -1 end
if #KEYS < 2 then return 0 end
return redis.call('UNLINK', unpack(KEYS, 2))
"""

# KEYS[1] leader key, KEYS[2] stream key
# ARGV[1] fencing token, ARGV[2] approximate max length, ARGV[3..] field, value pairs
# Returns the entry id, or false when fenced out.
FENCED_XADD_LUA = FENCE_CHECK_LUA + """
if fenced then return false end
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
"""


class KeyOutsidePrefix(ValueError):
    def __init__(self, key: str, keys: Keyspace) -> None:
        super().__init__(f"key {key!r} is outside this deployment's prefix {keys.base + ':'!r}")


class Fence:
    """Fenced operations for one deployment; scripts registered once per client."""

    def __init__(self, client: Redis, keys: Keyspace) -> None:
        self._client = client
        self.keys = keys
        self._set = client.register_script(FENCED_SET_LUA)
        self._unlink = client.register_script(FENCED_UNLINK_LUA)
        self._xadd = client.register_script(FENCED_XADD_LUA)
        self._cluster = isinstance(client, RedisCluster)

    def _own(self, key: str) -> str:
        if not self.keys.owns(key):
            raise KeyOutsidePrefix(key, self.keys)
        return key

    async def set(self, token: int, key: str, value: str | bytes, px: int | None = None) -> bool:
        res = await self._set(keys=[self.keys.leader, self._own(key)], args=[token, value, "" if px is None else int(px)])
        return int(res) == 1

    async def xadd(self, token: int, key: str, fields: dict[str, Any], maxlen: int) -> str | None:
        flat: list[Any] = []
        for k, v in fields.items():
            flat += [k, v]
        res = await self._xadd(keys=[self.keys.leader, self._own(key)], args=[token, maxlen, *flat])
        if not res:
            return None
        return res.decode() if isinstance(res, bytes) else str(res)

    async def is_current(self, token: int) -> bool:
        res = await self._unlink(keys=[self.keys.leader], args=[token])
        return int(res) != -1

    async def unlink(self, token: int, keys: list[str]) -> int | None:
        """Delete `keys` (any names) if `token` is current; None when fenced out."""
        if not keys:
            return 0 if await self.is_current(token) else None
        if self._cluster:
            # One script cannot span slots: check, then delete (see module doc).
            if not await self.is_current(token):
                return None
            return int(await self._client.unlink(*keys))
        res = int(await self._unlink(keys=[self.keys.leader, *keys], args=[token]))
        return None if res == -1 else res
