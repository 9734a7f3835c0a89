"""The leader-gated scheduler: settings, the job API, the runtime and the CLI.

Public job API: `JobRegistry`, `JobContext`. Embedding: `scheduler.embed`.
"""

from .context import JobContext
from .fencing import FencedOut, WriteNotReplicated
from .registry import JobDefinitionError, JobRegistry, JobSpec

__all__ = ["FencedOut", "JobContext", "JobDefinitionError", "JobRegistry", "JobSpec", "WriteNotReplicated"]
