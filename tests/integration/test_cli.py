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


def test_run_job_asks_the_leader_and_waits_for_the_outcome(redis_server: ServerLike, tmp_path: Path) -> None:
    """`run-job` is a request to the leader: the run happens there, serialised with the job's
    scheduled runs, fenced, in the run history as `trigger: manual` with who asked. (Before,
    it ran in the CLI's own process under a borrowed token, beside the leader's runs.)"""
    env = {"LIGHTSCHED_REDIS_URL": redis_server.url}
    with Fleet(redis_server.url, tmp_path, 2, http=False, interval_s=1.0, run_s=0.4) as fleet:
        leader = fleet.wait_for_leader()
        fleet.wait_for_runs(2)
        proc = cli("run-job", "tick", "-p", "why=test", "--requested-by", "ops@test", env=env)
        assert proc.returncode == 0, proc.stderr
        assert f"succeeded on {leader.name}" in proc.stdout, proc.stdout
        manual = [r for r in fleet.runs() if r.get("trigger") == "manual"]
        assert len(manual) == 1 and manual[0]["replica"] == leader.name
        assert manual[0]["params"] == {"why": "test"} and manual[0]["fenced_write"] is True
        runs = sorted(fleet.runs(), key=lambda r: r["start"])
        for a, b in zip(runs, runs[1:], strict=False):
            if a["pid"] == b["pid"]:
                assert b["start"] >= a["end"] - 1e-3, f"two runs of one job at once: {a} {b}"
        history = [json.loads(x) for x in fleet.client.lrange("{lightsched}:runs:tick", 0, -1)]
        mine = [h for h in history if h.get("trigger") == "manual"]
        assert len(mine) == 1 and mine[0]["requested_by"] == "ops@test" and mine[0]["status"] == "success"

        queued = cli("run-job", "tick", "--no-wait", env=env)
        assert queued.returncode == 0 and "queued" in queued.stdout, queued.stderr
        fleet.wait_for_runs(1, where=lambda r: r.get("trigger") == "manual" and r["start"] > manual[0]["end"])

        unknown = cli("run-job", "nope", env=env)
        assert unknown.returncode == 2
        line = one_line(unknown)
        assert "unknown job 'nope'" in line and "tick" in line, line


def test_run_job_without_a_leader_fails_clearly_and_cancels(redis_server: ServerLike) -> None:
    env = {"LIGHTSCHED_REDIS_URL": redis_server.url}
    proc = cli("run-job", "tick", "--pickup-timeout", "1", env=env)
    assert proc.returncode == 1
    line = one_line(proc)
    assert "no leader took the request" in line and "cancelled" in line, line
    import redis as sync_redis

    client = sync_redis.Redis.from_url(redis_server.url)
    try:
        states = {client.hget(k, "state") for k in client.scan_iter("{lightsched}:request:*")}
    finally:
        client.close()
    assert states == {b"cancelled"}, "a request nobody took must not run later"


def test_handoff_needs_the_leaders_own_acknowledgement(redis_server: ServerLike, tmp_path: Path) -> None:
    """Every replica listens on the handoff channel; only the leader's acknowledgement says the
    request reached it. A lease held by a process that is not listening is reported as such."""
    import redis as sync_redis

    client = sync_redis.Redis.from_url(redis_server.url)
    try:
        client.set("{lightsched}:leader", json.dumps({"replica_id": "deaf", "fencing_token": 7, "lease_id": "x"}),
                   px=60_000)
        with Fleet(redis_server.url, tmp_path, 2, http=False):
            channel = "{lightsched}:handoff"
            from tests.support.waiting import wait_for

            wait_for(lambda: int(client.execute_command("PUBSUB", "NUMSUB", channel)[1]) >= 2, 20,
                     what="the standbys listening")
            proc = cli("handoff", "--timeout", "3", env={"LIGHTSCHED_REDIS_URL": redis_server.url})
    finally:
        client.close()
    assert proc.returncode == 1
    line = one_line(proc)
    assert "did not acknowledge" in line and "deaf" in line, line
