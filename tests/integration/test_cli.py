"""The `lightsched` CLI as a user runs it: real processes, real Redis, exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scheduler.devredis import free_port
from tests.support.redis_servers import ServerLike
from tests.support.replicas import REPO, Fleet

pytestmark = pytest.mark.slow


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LIGHTSCHED_")}
    base.update({"PYTHONPATH": str(REPO), "COLUMNS": "200"})
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "scheduler.cli", *args], env=base, cwd=str(REPO),
        capture_output=True, text=True, timeout=timeout,
    )


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {proc.stderr!r}"
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_bad_settings_exit_2_with_one_line() -> None:
    proc = cli("status", env={"LIGHTSCHED_LEASE_TTL": "1", "LIGHTSCHED_RENEW_DEADLINE": "5"})
    assert proc.returncode == 2
    assert "LIGHTSCHED_LEASE_TTL" in one_line(proc) and "LIGHTSCHED_RENEW_DEADLINE" in one_line(proc)


def test_unreachable_redis_exit_1_without_the_password() -> None:
    port = free_port()
    proc = cli("status", env={"LIGHTSCHED_REDIS_URL": f"redis://:hunter2@127.0.0.1:{port}/0"})
    assert proc.returncode == 1
    line = one_line(proc)
    assert str(port) in line and "hunter2" not in line


def test_wrong_password_exit_1(tmp_path: Path) -> None:
    from scheduler.devredis import RedisProcess

    with RedisProcess(extra_args=["--requirepass", "right-pass"]) as server:
        proc = cli("status", env={"LIGHTSCHED_REDIS_URL": f"redis://:wrong-pass@127.0.0.1:{server.port}/0"})
    assert proc.returncode == 1
    line = one_line(proc)
    assert "wrong-pass" not in line and "right-pass" not in line
    assert "password" in line.lower() or "auth" in line.lower()


def test_unknown_job_exit_2(redis_url: str) -> None:
    proc = cli("run-job", "nope", env={"LIGHTSCHED_REDIS_URL": redis_url, "LIGHTSCHED_JOBS": "tests.support.recording_jobs:registry"})
    assert proc.returncode == 2
    assert "unknown job 'nope'" in one_line(proc) and "tick" in one_line(proc)


def test_bad_jobs_reference_exit_2() -> None:
    proc = cli("jobs", "--jobs", "no_such_module:registry")
    assert proc.returncode == 2
    assert "no_such_module" in one_line(proc)


def test_jobs_lists_the_registry() -> None:
    proc = cli("jobs", env={"LIGHTSCHED_JOBS": "tests.support.recording_jobs:registry", "LIGHTSCHED_RECORDING_DIR": "/tmp"})
    assert proc.returncode == 0, proc.stderr
    assert "tick" in proc.stdout and "interval" in proc.stdout


def test_status_json_shape_and_handoff(redis_server: ServerLike, tmp_path: Path) -> None:
    with Fleet(redis_server.url, tmp_path, 2, http=False) as fleet:
        leader = fleet.wait_for_leader()
        fleet.wait_for_runs(2)
        env = {"LIGHTSCHED_REDIS_URL": redis_server.url}
        proc = cli("status", "--json", env=env)
        assert proc.returncode == 0, proc.stderr
        data = json.loads(proc.stdout)
        assert set(data) == {"leader", "jobs"}
        assert set(data["leader"]) == {"replica_id", "fencing_token", "ttl_ms", "acquired_at"}
        assert data["leader"]["replica_id"] == leader.name and 0 < data["leader"]["ttl_ms"] <= 2000
        (job,) = data["jobs"]
        assert set(job) == {"id", "next_run_time", "last_run"} and job["id"] == "tick"
        assert set(job["last_run"]) == {"scheduled_time", "started_at", "finished_at", "status", "replica_id", "fencing_token"}
        assert job["last_run"]["replica_id"] == leader.name

        human = cli("status", env=env)
        assert human.returncode == 0 and leader.name in human.stdout

        other = next(r for r in fleet.replicas if r is not leader)
        noop = cli("handoff", "--if-replica", other.name, env=env)
        assert noop.returncode == 0 and "nothing to do" in noop.stdout
        assert fleet.leader_record()["replica_id"] == leader.name

        moved = cli("handoff", "--timeout", "20", env=env)
        assert moved.returncode == 0, moved.stderr
        assert other.name in moved.stdout
        assert fleet.leader_record()["replica_id"] == other.name
        assert leader.alive, "a handoff keeps the old leader running as a standby"


def test_run_job_runs_once_now(redis_server: ServerLike, tmp_path: Path) -> None:
    env = {
        "LIGHTSCHED_REDIS_URL": redis_server.url,
        "LIGHTSCHED_JOBS": "tests.support.recording_jobs:registry",
        "LIGHTSCHED_RECORDING_DIR": str(tmp_path),
        "LIGHTSCHED_REPLICA_ID": "manual",
    }
    proc = cli("run-job", "tick", env=env)
    assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "runs-manual.jsonl").read_text().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["fenced_write"] is False, "no leader: a manual run's fenced writes are refused"
