"""The README is tested: its configuration table matches the settings models,
and every Python block in it runs (against a real throwaway Redis).

A Python block is marked runnable by `<!-- readme-test: NAME -->` on the line
before it; an unmarked Python block fails `test_every_python_block_is_tested`.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Annotated, Any

import anyio
import httpx
import pytest
import uvicorn
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from redis.asyncio import Redis

from scheduler import docs_config
from scheduler.docs_config import END, START, ConfigTableMissing, config_table, render_model, replace_table
from scheduler.embed import create_replica, run_scheduler
from scheduler.settings import Settings, _default_replica_id
from tests.support.waiting import wait_until

README = Path(__file__).resolve().parents[2] / "README.md"
TESTED_BLOCKS = {"embed", "job"}

_BLOCK_RE = re.compile(r"(?:<!-- readme-test: (?P<name>[\w-]+) -->\n)?```python\n(?P<code>.*?)```", re.DOTALL)


def python_blocks() -> dict[str | None, list[str]]:
    found: dict[str | None, list[str]] = {}
    for m in _BLOCK_RE.finditer(README.read_text(encoding="utf-8")):
        found.setdefault(m.group("name"), []).append(m.group("code"))
    return found


def block(name: str) -> str:
    codes = python_blocks().get(name, [])
    assert len(codes) == 1, f"README.md has {len(codes)} blocks marked readme-test: {name}"
    return codes[0]


def run_block(name: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": f"readme_{name}"}
    exec(compile(block(name), f"README.md[{name}]", "exec"), namespace)
    return namespace


# -- the configuration table ------------------------------------------------------


def test_readme_table_matches_the_settings_models() -> None:
    text = README.read_text(encoding="utf-8")
    assert START in text and END in text
    assert replace_table(text, config_table()) == text, "README's configuration table is stale: run `make docs-config`"
    assert docs_config.main(["--check", str(README)]) == 0


def test_check_fails_on_a_stale_table_and_write_fixes_it(tmp_path: Path) -> None:
    stale = README.read_text(encoding="utf-8").replace("| `LIGHTSCHED_LEASE_TTL` |", "| `LIGHTSCHED_LEASE_TTL_OLD` |")
    target = tmp_path / "README.md"
    target.write_text(stale, encoding="utf-8")
    assert docs_config.main(["--check", str(target)]) == 1
    assert docs_config.main(["--write", str(target)]) == 0
    assert docs_config.main(["--check", str(target)]) == 0
    assert target.read_text(encoding="utf-8") == README.read_text(encoding="utf-8")


def test_check_fails_when_a_model_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Settings.model_fields["lease_ttl"], "description", "a new meaning")
    assert docs_config.main(["--check", str(README)]) == 1


def test_markers_missing_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigTableMissing, match="config-table:start"):
        replace_table("# no markers here\n", "| table |\n", "X.md")
    target = tmp_path / "X.md"
    target.write_text("# no markers\n")
    assert docs_config.main(["--check", str(target)]) == 2


def test_every_setting_is_in_the_table() -> None:
    table = config_table()
    for name in Settings.model_fields:
        assert f"| `{name}` | `LIGHTSCHED_{name.upper()}` |" in table
    for prefix in ("LIGHTSCHED_PROVIDER_HEALTH_PROVIDERS", "LIGHTSCHED_SYSTEM_HEALTH_PATHS", "LIGHTSCHED_CLEANUP_DRY_RUN"):
        assert f"`{prefix}`" in table


class _Example(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EX_")

    token: SecretStr = Field(SecretStr("hunter2"), description="a secret | with a pipe")
    url: SecretStr = Field(SecretStr("redis://user:hunter2@db:6379/0"), description="a URL with a password")
    who: str = Field(default_factory=_default_replica_id, description="machine-dependent")
    ids: Annotated[frozenset[str], NoDecode] = Field(frozenset({"b", "a"}), description="ids")
    items: list[str] = Field(["/"], description="paths")
    ratio: float = Field(2.0, description="a ratio")
    mapping: dict[str, str] = Field(default_factory=dict, description="a mapping")


def test_rendering_masks_secrets_describes_factories_and_escapes_pipes() -> None:
    rows = {line.split(" | ")[0].strip("| `"): line for line in render_model(_Example)}
    assert "hunter2" not in "\n".join(rows.values())
    assert "| `***` |" in rows["token"]
    assert "`redis://user:***@db:6379/0`" in rows["url"]
    assert "| host name-pid |" in rows["who"]
    assert "| comma-separated list | `a,b` |" in rows["ids"]
    assert '| JSON list | `["/"]` |' in rows["items"]
    assert "| float | `2` |" in rows["ratio"]
    assert "| JSON object | empty |" in rows["mapping"]
    assert "a secret \\| with a pipe" in rows["token"]
    assert rows["token"].startswith("| `token` | `EX_TOKEN` | secret string |")


# -- the code blocks --------------------------------------------------------------


def test_every_python_block_is_tested() -> None:
    blocks = python_blocks()
    assert None not in blocks, "a ```python block in README.md has no <!-- readme-test: NAME --> mark"
    assert set(blocks) == TESTED_BLOCKS


@pytest.fixture
def lightsched_env(monkeypatch: pytest.MonkeyPatch, redis_url: str, key_prefix: str) -> dict[str, str]:
    env = {
        "LIGHTSCHED_REDIS_URL": redis_url,
        "LIGHTSCHED_KEY_PREFIX": key_prefix,
        "LIGHTSCHED_HTTP_PORT": "0",
        "LIGHTSCHED_REPLICA_ID": f"readme-{key_prefix}",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


@pytest.mark.anyio
async def test_embedding_example_serves_health_and_leads(lightsched_env: dict[str, str], key_prefix: str) -> None:
    ns = run_block("embed")
    app, replica = ns["app"], ns["replica"]
    assert replica.settings.key_prefix == key_prefix  # the block read the environment

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # lifespan "on": a lifespan that fails to start must fail the test, not be skipped.
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on", ws="none", access_log=False))
    redis = Redis.from_url(lightsched_env["LIGHTSCHED_REDIS_URL"])
    leader_key = "{" + key_prefix + "}:leader"
    try:
        async with anyio.create_task_group() as tg, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            tg.start_soon(server.serve, [sock])

            async def started() -> bool:
                return server.started

            await wait_until(started, 20, "uvicorn to start")
            assert (await http.get("/ops/healthz")).json() == {"status": "ok"}

            async def leading() -> dict[str, Any] | None:
                r = await http.get("/ops/v1/health/scheduler/status")
                body = r.json()
                return body if r.status_code == 200 and body["is_leader"] else None

            status = await wait_until(leading, 30, "the embedded replica to lead")
            assert status["replica_id"] == lightsched_env["LIGHTSCHED_REPLICA_ID"]
            assert [j["id"] for j in status["jobs"]] == ["refresh_rates"]
            holder = json.loads(await redis.get(leader_key))
            assert holder["replica_id"] == lightsched_env["LIGHTSCHED_REPLICA_ID"]
            assert holder["fencing_token"] == status["fencing_token"]
            metrics = await http.get("/ops/metrics")
            assert metrics.status_code == 200 and "# TYPE" in metrics.text
            server.should_exit = True
        # The lifespan's exit stopped the replica gracefully: it released the lease.
        assert await redis.get(leader_key) is None
    finally:
        sock.close()
        await redis.aclose()


@pytest.mark.anyio
async def test_job_example_runs_fenced_with_its_config(
    lightsched_env: dict[str, str], key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MYAPP_REPORT_TOP_N", "3")
    ns = run_block("job")
    spec = ns["registry"].get("daily_report")
    assert (spec.options.timeout, spec.options.retries, spec.options.retry_backoff) == (120, 2, 5)
    # The documented override: run the 02:30 job every second for the test.
    settings = Settings(job_schedules={"daily_report": "1s"})
    replica = create_replica(ns["registry"], settings=settings)
    redis = Redis.from_url(lightsched_env["LIGHTSCHED_REDIS_URL"], decode_responses=True)
    try:
        async with run_scheduler(replica):

            async def written() -> str | None:
                return await redis.get("{" + key_prefix + "}:data:daily_report:latest")

            report = await wait_until(written, 30, "the job to write its report")
            token = replica.fencing_token
        assert re.fullmatch(r"top 3 as of \d{4}-\d\d-\d\d \d\d:\d\d", report), report
        runs = [json.loads(r) for r in await redis.lrange("{" + key_prefix + "}:runs:daily_report", 0, -1)]
        assert runs and all(r["status"] == "success" for r in runs)
        assert {r["replica_id"] for r in runs} == {lightsched_env["LIGHTSCHED_REPLICA_ID"]}
        assert {r["fencing_token"] for r in runs} == {token}
    finally:
        await redis.aclose()
