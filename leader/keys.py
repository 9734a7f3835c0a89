"""The lease's Redis key names. Every key of a deployment starts with `{PREFIX}:`.

The braces are a Redis Cluster hash tag: all of a deployment's keys live in one
slot, so one Lua script may touch the leader key and any other of them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LeaseKeys"]


@dataclass(frozen=True, slots=True)
class LeaseKeys:
    prefix: str = "lightsched"

    @property
    def base(self) -> str:
        """`{prefix}`: the hash-tagged head of every key of this deployment."""
        return "{" + self.prefix + "}"

    @property
    def leader(self) -> str:
        """JSON of the current holder; PTTL is the lease left."""
        return f"{self.base}:leader"

    @property
    def token(self) -> str:
        """The last fencing token minted (a decimal integer)."""
        return f"{self.base}:token"

    @property
    def released_channel(self) -> str:
        """Pub/sub channel on which a release is announced to standbys."""
        return f"{self.base}:released"

    @property
    def handoff_channel(self) -> str:
        """Pub/sub channel on which operators ask the leader to hand off."""
        return f"{self.base}:handoff"
