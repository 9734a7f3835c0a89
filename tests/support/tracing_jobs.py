"""Jobs for the tracing end-to-end test: one that succeeds (with a child span), one that fails."""

from __future__ import annotations

from scheduler import JobContext, JobRegistry

registry = JobRegistry()


@registry.job("ok", trigger="0.5s")
async def ok(ctx: JobContext) -> None:
    with ctx.span("ok.child", step="write"):
        await ctx.fenced_set(ctx.key("x"), "1")


@registry.job("boom", trigger="0.5s")
async def boom(ctx: JobContext) -> None:
    raise ValueError("provider exploded")
