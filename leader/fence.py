"""The lease's identity, as fenced Lua scripts check it.

A term is identified by its fencing token (a number, for humans and for
ordering) *and* a random `lease_id` minted by the acquiring client for each
acquire attempt and stored in the lease value. The number alone can repeat:
a failover that loses an acquisition, or an empty restart on a host whose
clock is behind, may mint the same number again. The pair cannot.

Guarantees: a script that starts with `FENCE_CHECK_LUA` sees `fenced` false
only while the leader key holds a lease whose token and lease id are exactly
the caller's (`fence_arg`); an expired lease, an emptied Redis, a successor
with the same number, or a key of another type all fence the caller out.
`fenced_script()` is the public way for jobs to write their own fenced
scripts: only this module knows the lease value's format.

Does not guarantee: anything about writes to other systems; they must carry
`fence_arg` and check it against the leader key themselves.
"""

from __future__ import annotations

import secrets

__all__ = ["FENCE_CHECK_LUA", "fence_arg", "fenced_script", "new_lease_id"]

#: Random bits of a lease id: collisions are negligible across a fleet's lifetime.
LEASE_ID_BYTES = 8

# Prelude of every fenced script. KEYS[1] leader key, ARGV[1] the caller's
# fence, '<token>:<lease_id>' (see `fence_arg`). Leaves `fenced` true unless
# the leader key holds a lease with exactly that token and lease id.
# pcall: a leader key of another type fences, it does not fail the script.
FENCE_CHECK_LUA = """
local fenced = true
local held = redis.pcall('GET', KEYS[1])
if type(held) == 'string' then
  local ok, lease = pcall(cjson.decode, held)
  if ok and type(lease) == 'table' and type(lease.lease_id) == 'string'
     and type(lease.fencing_token) == 'number'
     and (string.format('%.0f', lease.fencing_token) .. ':' .. lease.lease_id) == ARGV[1] then
    fenced = false
  end
end
"""


def new_lease_id() -> str:
    """A fresh random lease id (hex), one per acquire attempt."""
    return secrets.token_hex(LEASE_ID_BYTES)


def fence_arg(token: int, lease_id: str) -> str:
    """The ARGV[1] of a fenced script for the term (`token`, `lease_id`)."""
    return f"{token}:{lease_id}"


def fenced_script(body: str) -> str:
    """`body` behind the fence check: KEYS[1] must be the leader key, ARGV[1] the fence.

    The body runs with `fenced` set; it should return early when it is true,
    e.g. `if fenced then return 0 end`.
    """
    return FENCE_CHECK_LUA + body
