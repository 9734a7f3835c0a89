"""Every Redis key name of one deployment, in one place (after arq's constants module).

All keys start with `{PREFIX}:`; the braces are a Redis Cluster hash tag, so
the lease, the token and the scheduler's keys share one slot and one Lua
script may touch them together.
"""

from __future__ import annotations

from dataclasses import dataclass

from leader import LeaseKeys

__all__ = ["Keyspace"]


@dataclass(frozen=True, slots=True)
class Keyspace(LeaseKeys):
    def job(self, job_id: str) -> str:
        """Hash per job: last claimed slot, next run time, last run record (JSON)."""
        return f"{self.base}:job:{job_id}"

    def runs(self, job_id: str) -> str:
        """Capped list of a job's recent run records, newest first."""
        return f"{self.base}:runs:{job_id}"

    def jobs_index(self) -> str:
        """Set of the job ids the leader has scheduled (for `lightsched status`)."""
        return f"{self.base}:jobs"

    def data(self, *parts: str) -> str:
        """A key for a job's own data, e.g. `data("provider_health", "latest", name)`."""
        return ":".join((self.base, "data", *parts))

    def owns(self, key: str) -> bool:
        return key.startswith(self.base + ":")

    def protected_patterns(self) -> tuple[str, ...]:
        """Keys that clean-up must never delete: the lease, the token, the job slots, the run records
        (capped by the runtime itself)."""
        return (self.leader, self.token, f"{self.base}:job:*", f"{self.base}:runs:*", self.jobs_index())
