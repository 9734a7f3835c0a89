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

    def op(self, op_id: str) -> str:
        """Short-lived marker of one non-idempotent write, so a re-sent command is recognised."""
        return f"{self.base}:op:{op_id}"

    def requests(self) -> str:
        """Stream of manual run requests (`lightsched run-job`), read by the leader."""
        return f"{self.base}:requests"

    def request(self, request_id: str) -> str:
        """Hash of one manual run request: job, params, who asked, state and outcome."""
        return f"{self.base}:request:{request_id}"

    def requests_cursor(self) -> str:
        """The id of the last request stream entry a leader has taken (fenced)."""
        return f"{self.base}:requests:cursor"

    def handoff_ack(self) -> str:
        """Set (fenced) by a leader that accepted a handoff request: the fence it held."""
        return f"{self.base}:handoff:ack"

    def owns(self, key: str) -> bool:
        return key.startswith(self.base + ":")

    def protected_patterns(self) -> tuple[str, ...]:
        """Keys that clean-up must never delete: the lease, the token, the job slots, the run records
        (capped by the runtime itself)."""
        return (
            self.leader, self.token, f"{self.base}:job:*", f"{self.base}:runs:*", self.jobs_index(),
            f"{self.base}:op:*", f"{self.base}:request*", self.handoff_ack(),
        )
