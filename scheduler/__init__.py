"""The leader-gated scheduler: settings, the job API, the runtime and the CLI.

Public job API: `JobRegistry`, `JobContext`. Embedding: `scheduler.embed`.
"""

from .context import JobContext
from .registry import JobDefinitionError, JobRegistry, JobSpec

__all__ = ["JobContext", "JobDefinitionError", "JobRegistry", "JobSpec"]
