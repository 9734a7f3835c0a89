"""All lightsched benchmarks: `python -m benchmarks.run_all [--quick]` (`make bench`).

Writes `benchmarks/results/results.json` and PNG plots next to it, and prints a
summary with each target marked met or not. Every figure comes from real
processes on a throwaway redis-server on loopback; nothing is simulated.

Sections (each a function returning a dict):
- handoff: graceful handoff gap (release -> the next leader's acquire) between two electors;
- takeover: crash takeover time (leader cancelled without releasing) for several TTLs;
- lateness: dispatch lateness p50/p99 against the number of 1 s interval jobs on one leader;
- tracing: lateness and CPU per run with OTLP tracing on (a local receiver) versus off;
- standbys: Redis commands per second against the number of standbys (INFO commandstats);
- footprint: PSS/RSS of an idle replica running `jobs:registry` with HTTP on (tracing off and
  on), and the wall time and CPU from process start to the first job run; the same for Celery
  beat + a solo worker running three equivalent tasks (benchmarks/celery_baseline.py);
- lease: `benchmarks.bench_lease.run(quick)` when that module exists.

Does not guarantee: stable numbers on a loaded machine; the JSON records the
machine and the load average at the start so figures can be judged.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import psutil

from scheduler.devredis import RedisProcess, free_port

from tests.support.replicas import wait_for

from .lateness import percentiles

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
MIB = 1024 * 1024


# -- helpers ---------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    redis_version = subprocess.run([RedisProcess().binary, "--version"], capture_output=True, text=True).stdout.strip()
    import apscheduler
    import celery

    return {
        "nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "platform": platform.platform(),
        "redis": redis_version, "apscheduler": apscheduler.__version__, "celery": celery.__version__,
        "memory_total_mib": round(psutil.virtual_memory().total / MIB), "loadavg_at_start": os.getloadavg(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIGHTSCHED_", "OTEL_"))}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env




def _tree(pids: list[int]) -> Iterator[psutil.Process]:
    """The processes and all their descendants that still exist."""
    for pid in pids:
        try:
            yield from (psutil.Process(pid), *psutil.Process(pid).children(recursive=True))
        except psutil.NoSuchProcess:
            continue


def tree_memory(pids: list[int]) -> dict[str, float]:
    pss = rss = 0
    for p in _tree(pids):
        try:
            info = p.memory_full_info()
        except psutil.NoSuchProcess:
            continue
        pss += info.pss
        rss += info.rss
    return {"pss_mib": round(pss / MIB, 1), "rss_mib": round(rss / MIB, 1)}


def tree_cpu_s(pids: list[int]) -> float:
    total = 0.0
    for p in _tree(pids):
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return round(total, 3)


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# -- handoff and takeover (in-process electors) -------------------------------------


async def _electors(url: str, n: int, ttl_s: float, deadline_s: float, retry_s: float) -> Any:
    from redis.asyncio import Redis

    from leader import Elector, Identity, LeaseTimings, RedisLeaseStore, StartedLeading, StoppedLeading
    from leader.keys import LeaseKeys

    prefix = f"bench{uuid.uuid4().hex[:8]}"
    timings = LeaseTimings(ttl_s, deadline_s, retry_s)
    out = []
    for i in range(n):
        store = RedisLeaseStore(Redis.from_url(url), LeaseKeys(prefix))
        el = Elector(store, Identity(f"e{i}", socket.gethostname(), os.getpid()), timings)
        log: list[tuple[str, float, int]] = []

        def listener(ev: Any, log: list[tuple[str, float, int]] = log) -> None:
            if isinstance(ev, StartedLeading):
                log.append(("start", time.perf_counter(), ev.term.token))
            elif isinstance(ev, StoppedLeading):
                log.append(("stop", time.perf_counter(), ev.term.token))

        el.subscribe(listener)
        out.append((el, log, store))
    return out


async def bench_handoff(url: str, count: int) -> dict[str, Any]:
    """Gap from a leader's release to the next acquire, over `count` handoffs in a row.

    A replica that released sits out one retry period (so a standby wins); handoffs
    are spaced by that long, else with three replicas every third one would find
    every standby cooling off and wait a retry period (measured apart, below).
    """
    retry_s = 0.5
    electors = await _electors(url, 3, 3, 2, retry_s)
    gaps_ms: list[float] = []
    async with anyio.create_task_group() as tg:
        for el, _, _ in electors:
            await tg.start(el.run)
        for _ in range(count):
            leader = await _wait_leader(electors)
            el, log, _ = leader
            token = el.current_term().token
            t0 = time.perf_counter()
            await el.release()
            new = await _wait_leader(electors, exclude_token=token)
            started = next(t for kind, t, tok in reversed(new[1]) if kind == "start")
            gaps_ms.append((started - t0) * 1000)
            await anyio.sleep(retry_s + 0.05)
        tg.cancel_scope.cancel()
    for _, _, store in electors:
        await store.aclose()
    return {"count": count, "timings": {"ttl_s": 3, "renew_deadline_s": 2, "retry_period_s": retry_s},
            "gap_ms": percentiles(gaps_ms), "samples_ms": [round(g, 3) for g in gaps_ms]}


async def _wait_leader(electors: list[Any], exclude_token: int | None = None, timeout_s: float = 30) -> Any:
    with anyio.fail_after(timeout_s):
        while True:
            for e in electors:
                term = e[0].current_term()
                if term is not None and term.token != exclude_token:
                    return e
            await anyio.sleep(0.0005)


async def bench_takeover(url: str, ttls: list[float], trials: int) -> dict[str, Any]:
    """A leader that stops without releasing (as after kill -9): time until a standby leads."""
    rows = []
    for ttl in ttls:
        deadline, retry = ttl * 2 / 3, ttl / 6
        samples = []
        for _ in range(trials):
            electors = await _electors(url, 2, ttl, deadline, retry)
            async with anyio.create_task_group() as tg:
                scopes = []
                for el, _, _ in electors:
                    scope = anyio.CancelScope()
                    scopes.append(scope)

                    async def run(el: Any = el, scope: anyio.CancelScope = scope) -> None:
                        with scope:
                            await el.run()

                    tg.start_soon(run)
                leader = await _wait_leader(electors)
                await anyio.sleep(retry * 1.5)  # past a renew, as a leader that has been leading a while
                idx = electors.index(leader)
                # Crash: the elector stops without releasing; its connections close as a killed process' would.
                t0 = time.perf_counter()
                scopes[idx].cancel()
                await leader[2].aclose()
                other = electors[1 - idx]
                await _wait_leader([other], timeout_s=ttl * 3 + 5)
                samples.append(time.perf_counter() - t0)
                tg.cancel_scope.cancel()
            for _, _, store in electors:
                await store.aclose()
        rows.append({"ttl_s": ttl, "retry_s": round(retry, 3), "bound_s": round(ttl + retry, 3),
                     "takeover_s": percentiles(samples), "met": max(samples) <= ttl + retry})
    return {"rows": rows, "met": all(r["met"] for r in rows)}


# -- lateness (subprocesses) --------------------------------------------------------


def run_lateness(url: str, jobs: int, seconds: float, extra_env: dict[str, str] | None = None,
                 phase: str = "spread") -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.lateness", "--url", url, "--jobs", str(jobs), "--seconds", str(seconds),
           "--warmup-s", str(2.5 if jobs < 2000 else 4), "--phase", phase]
    res = subprocess.run(cmd, env=child_env(**(extra_env or {})), cwd=REPO, capture_output=True, text=True,
                         timeout=180 + seconds)
    if res.returncode != 0:
        raise RuntimeError(f"lateness benchmark for {jobs} jobs failed: {res.stderr.strip()[-800:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def bench_lateness(url: str, job_counts: list[int], seconds: float) -> dict[str, Any]:
    """Spread phases (the target rows) and, for the worst case, every job firing at one instant."""
    rows = [run_lateness(url, n, seconds) for n in job_counts]
    aligned = [run_lateness(url, n, seconds, phase="aligned") for n in job_counts if n <= 1000]
    return {"rows": rows, "aligned": aligned}


def bench_tracing(url: str, jobs: int, seconds: float, repeats: int) -> dict[str, Any]:
    from tests.support.otlp_receiver import OtlpReceiver

    off, on = [], []
    receiver = OtlpReceiver()
    endpoint = receiver.start()
    try:
        for _ in range(repeats):  # interleaved, so drifting machine load hits both alike
            off.append(run_lateness(url, jobs, seconds))
            on.append(run_lateness(url, jobs, seconds, {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}))
        spans = len(receiver.spans())
    finally:
        receiver.stop()

    def agg(rows: list[dict[str, Any]], key: str) -> float:
        vals = [r["lateness_ms"][key] for r in rows]
        return round(sorted(vals)[len(vals) // 2], 3)

    def cpu(rows: list[dict[str, Any]]) -> float:
        vals = [r["cpu_s_per_1000_runs"] for r in rows]
        return round(sorted(vals)[len(vals) // 2], 4)

    result = {"jobs": jobs, "repeats": repeats, "spans_received": spans,
              "off": {"p50_ms": agg(off, "p50"), "p99_ms": agg(off, "p99"), "mean_ms": agg(off, "mean"),
                      "cpu_s_per_1000_runs": cpu(off)},
              "on": {"p50_ms": agg(on, "p50"), "p99_ms": agg(on, "p99"), "mean_ms": agg(on, "mean"),
                     "cpu_s_per_1000_runs": cpu(on)}}
    base = result["off"]["mean_ms"]
    result["lateness_overhead_pct"] = round((result["on"]["mean_ms"] - base) / base * 100, 1) if base else None
    c0 = result["off"]["cpu_s_per_1000_runs"]
    result["cpu_overhead_pct"] = round((result["on"]["cpu_s_per_1000_runs"] - c0) / c0 * 100, 1) if c0 else None
    return result


# -- standbys (Redis commands per second) --------------------------------------------


def bench_standbys(counts: list[int], window_s: float) -> dict[str, Any]:
    """Total Redis commands/s with one leader and N standbys at the default timings (TTL 15 s, retry 2 s)."""
    rows = []
    with RedisProcess() as rp:
        import redis

        client = redis.Redis.from_url(rp.url)
        for n in [0, *counts]:
            prefix = f"sb{uuid.uuid4().hex[:6]}"
            procs = []
            groups = [1] + _split(n, max(1, min(4, n // 25 + 1))) if n else [1]
            for gi, k in enumerate(groups):
                if k == 0:
                    continue
                p = subprocess.Popen([sys.executable, "-m", "benchmarks.standbys", "--url", rp.url, "--prefix", prefix,
                                      "--count", str(k), "--name", f"g{gi}"], env=child_env(), cwd=REPO,
                                     stdout=subprocess.PIPE, text=True)
                procs.append(p)
                assert p.stdout is not None
                p.stdout.readline()  # "ready"; the first process' single elector becomes the leader
                if gi == 0:
                    wait_for(lambda: client.exists("{" + prefix + "}:leader"), 30)
            time.sleep(min(4.0, window_s / 2))  # past the first acquire attempts of every standby
            client.config_resetstat()
            t0 = time.monotonic()
            time.sleep(window_s)
            stats = client.info("commandstats")
            elapsed = time.monotonic() - t0
            for p in procs:
                stop(p)
            rows.append({"standbys": n, "window_s": round(elapsed, 3),
                         "by_command": {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}})
            client.flushall()
        client.close()
    return standby_rates({"window_s": window_s,
                          "timings": {"ttl_s": 15, "renew_deadline_s": 10, "retry_period_s": 2}, "rows": rows})


#: Commands a client sends itself; commandstats also counts the GET/PTTL/SET/PEXPIRE
#: that run inside those scripts, which cost Redis CPU but no round trip.
SENT_COMMANDS = ("evalsha", "eval", "evalsha_ro", "eval_ro", "ping", "subscribe", "publish", "script|load")
BENCH_COMMANDS = ("info", "config|resetstat", "config")


def standby_rates(res: dict[str, Any]) -> dict[str, Any]:
    """Commands/s (sent by clients, and executed including inside scripts) per row and per standby."""
    for r in res["rows"]:
        cmds = {k: v for k, v in r["by_command"].items() if k not in BENCH_COMMANDS}
        w = r.get("window_s", res["window_s"])
        r["sent_per_s"] = round(sum(v for k, v in cmds.items() if k in SENT_COMMANDS) / w, 3)
        r["executed_per_s"] = round(sum(cmds.values()) / w, 3)
        r.pop("commands_per_s", None)
    base = res["rows"][0]
    for r in res["rows"][1:]:
        r["sent_per_standby_per_s"] = round((r["sent_per_s"] - base["sent_per_s"]) / r["standbys"], 3)
        r["executed_per_standby_per_s"] = round((r["executed_per_s"] - base["executed_per_s"]) / r["standbys"], 3)
        r.pop("per_standby_per_s", None)
    res["leader_alone"] = {"sent_per_s": base["sent_per_s"], "executed_per_s": base["executed_per_s"]}
    res.pop("leader_alone_per_s", None)
    res["worst_sent_per_standby_per_s"] = max(r["sent_per_standby_per_s"] for r in res["rows"][1:])
    res["worst_executed_per_standby_per_s"] = max(r["executed_per_standby_per_s"] for r in res["rows"][1:])
    res.pop("worst_per_standby_per_s", None)
    res["met"] = res["worst_sent_per_standby_per_s"] <= 0.5
    return res


def _split(n: int, parts: int) -> list[int]:
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


# -- footprint: lightsched replica vs Celery beat + solo worker ------------------------


def replica_footprint(url: str, idle_s: float, trace_endpoint: str | None) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="lightsched-bench-"))
    log_path = workdir / "replica.log"
    env = child_env(
        LIGHTSCHED_REDIS_URL=url, LIGHTSCHED_KEY_PREFIX=f"fp{uuid.uuid4().hex[:6]}", LIGHTSCHED_JOBS="jobs:registry",
        LIGHTSCHED_JOB_SCHEDULES=json.dumps({"provider_health": "1s", "system_health": "1s", "cleanup": "1s"}),
        LIGHTSCHED_HTTP_HOST="127.0.0.1", LIGHTSCHED_HTTP_PORT=str(free_port()), LIGHTSCHED_LOG_FORMAT="json",
        LIGHTSCHED_REPLICA_ID="bench",
    )
    if trace_endpoint:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = trace_endpoint
    with open(log_path, "wb") as log:
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "scheduler.cli", "run"], env=env, cwd=REPO,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            def first_run() -> float | None:
                for raw in log_path.read_text(errors="replace").splitlines():
                    if '"event": "job_run"' in raw:
                        return time.monotonic()
                if proc.poll() is not None:
                    raise RuntimeError(f"replica exited: {log_path.read_text()[-800:]}")
                return None

            t_first = wait_for(first_run, 60, interval_s=0.005)
            cpu_first = tree_cpu_s([proc.pid])
            time.sleep(idle_s)
            mem = tree_memory([proc.pid])
            cpu_idle = tree_cpu_s([proc.pid]) - cpu_first
        finally:
            stop(proc)
    # The first run is due 1 s after the scheduler starts; report that wait apart.
    return {"start_to_first_run_s": round(t_first - t0, 3), "cpu_s_to_first_run": cpu_first, **mem,
            "idle_cpu_pct": round(cpu_idle / idle_s * 100, 2), "tracing": bool(trace_endpoint)}


def celery_footprint(url: str, idle_s: float) -> dict[str, Any]:
    import redis

    client = redis.Redis.from_url(url)
    client.delete("bench:celery:runs")
    workdir = Path(tempfile.mkdtemp(prefix="lightsched-celery-"))
    env = child_env(LIGHTSCHED_BENCH_CELERY_BROKER=url, LIGHTSCHED_BENCH_CELERY_EVERY_S="1")
    celery_bin = [sys.executable, "-m", "celery", "-A", "benchmarks.celery_baseline"]
    t0 = time.monotonic()
    beat = subprocess.Popen([*celery_bin, "beat", "--loglevel=WARNING", "-s", str(workdir / "beat-schedule")],
                            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = subprocess.Popen([*celery_bin, "worker", "--pool=solo", "--concurrency=1", "--loglevel=WARNING",
                               "--without-gossip", "--without-mingle", "--without-heartbeat"],
                              env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: client.llen("bench:celery:runs") > 0, 90, interval_s=0.005)
        t_first = time.monotonic()
        cpu_first = tree_cpu_s([beat.pid, worker.pid])
        time.sleep(idle_s)
        mem = tree_memory([beat.pid, worker.pid])
        per = {"beat": tree_memory([beat.pid]), "worker": tree_memory([worker.pid])}
    finally:
        stop(beat)
        stop(worker)
        client.close()
    return {"start_to_first_run_s": round(t_first - t0, 3), "cpu_s_to_first_run": cpu_first, **mem, "parts": per}


def bench_footprint(idle_s: float) -> dict[str, Any]:
    from tests.support.otlp_receiver import OtlpReceiver

    with RedisProcess() as rp:
        plain = replica_footprint(rp.url, idle_s, None)
        receiver = OtlpReceiver()
        endpoint = receiver.start()
        try:
            traced = replica_footprint(rp.url, idle_s, endpoint)
        finally:
            receiver.stop()
        celery = celery_footprint(rp.url, idle_s)
    return {"idle_s": idle_s, "replica": plain, "replica_tracing": traced, "celery_beat_plus_solo_worker": celery,
            "pss_ratio_replica_to_celery": round(plain["pss_mib"] / celery["pss_mib"], 3)}


# -- plots -------------------------------------------------------------------------


def plots(res: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(RESULTS / name, dpi=110)
        plt.close(fig)
        made.append(name)

    if "handoff" in res:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(res["handoff"]["samples_ms"], bins=30, color="#4477aa")
        ax.axvline(25, color="red", ls="--", label="target p99 25 ms")
        ax.set(xlabel="release -> next acquire (ms)", ylabel="handoffs", title="Graceful handoff gap")
        ax.legend()
        save(fig, "handoff_gap.png")
    if "takeover" in res:
        rows = res["takeover"]["rows"]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ttl = [r["ttl_s"] for r in rows]
        ax.plot(ttl, [r["takeover_s"]["p50"] for r in rows], "o-", label="p50")
        ax.plot(ttl, [r["takeover_s"]["max"] for r in rows], "s-", label="max")
        ax.plot(ttl, [r["bound_s"] for r in rows], "r--", label="TTL + retry period (target)")
        ax.set(xlabel="lease TTL (s)", ylabel="takeover (s)", title="Crash takeover against the TTL")
        ax.legend()
        save(fig, "crash_takeover.png")
    if "lateness" in res:
        rows = res["lateness"]["rows"]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        n = [r["jobs"] for r in rows]
        ax.plot(n, [r["lateness_ms"]["p50"] for r in rows], "o-", label="p50")
        ax.plot(n, [r["lateness_ms"]["p99"] for r in rows], "s-", label="p99")
        ax.axhline(10, color="red", ls="--", label="target p99 10 ms (1,000 jobs)")
        ax.set(xscale="log", yscale="log", xlabel="interval jobs (1 s each)", ylabel="lateness (ms)",
               title="Dispatch lateness on one leader")
        ax.legend()
        save(fig, "dispatch_lateness.png")
    if "standbys" in res:
        rows = res["standbys"]["rows"]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        n = [r["standbys"] for r in rows]
        ax.plot(n, [r["sent_per_s"] for r in rows], "o-", label="sent by clients")
        ax.plot(n, [r["executed_per_s"] for r in rows], "^-", label="executed (incl. inside scripts)")
        base = res["standbys"]["leader_alone"]["sent_per_s"]
        ax.plot(n, [base + 0.5 * k for k in n], "r--", label="target: 0.5/s sent per standby")
        ax.set(xlabel="standbys", ylabel="Redis commands / s", title="Redis load against the number of standbys")
        ax.legend()
        save(fig, "redis_commands.png")
    if "footprint" in res:
        fp = res["footprint"]
        labels = ["lightsched", "lightsched\n+tracing", "Celery beat\n+solo worker"]
        parts = [fp["replica"], fp["replica_tracing"], fp["celery_beat_plus_solo_worker"]]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.5))
        a1.bar(labels, [p["pss_mib"] for p in parts], color=["#4477aa", "#66ccee", "#ee6677"])
        a1.axhline(42, color="red", ls="--", label="target 42 MiB")
        a1.set(ylabel="PSS (MiB)", title="Idle memory")
        a1.legend()
        a2.bar(labels, [p["cpu_s_to_first_run"] for p in parts], color=["#4477aa", "#66ccee", "#ee6677"])
        a2.axhline(0.4, color="red", ls="--", label="target 0.4 s")
        a2.set(ylabel="CPU s", title="CPU before the first run")
        a2.legend()
        save(fig, "footprint.png")
    return made


# -- targets -------------------------------------------------------------------------


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    out = []

    def add(name: str, value: Any, limit: str, met: bool | None) -> None:
        out.append({"target": name, "value": value, "limit": limit, "met": met})

    if "handoff" in res:
        p99 = res["handoff"]["gap_ms"]["p99"]
        add("graceful handoff gap p99", f"{p99} ms", "< 25 ms", p99 < 25)
    if "takeover" in res:
        worst = max(r["takeover_s"]["max"] - r["bound_s"] for r in res["takeover"]["rows"])
        add("crash takeover <= TTL + retry period", f"worst margin {round(-worst, 3)} s", "<= bound", res["takeover"]["met"])
    if "lateness" in res:
        by_n = {r["jobs"]: r for r in res["lateness"]["rows"]}
        if 100 in by_n:
            p = by_n[100]["lateness_ms"]["p99"]
            add("dispatch lateness p99, 100 jobs at 1 s (issue 3)", f"{p} ms", "< 20 ms", p < 20)
        if 1000 in by_n:
            p = by_n[1000]["lateness_ms"]["p99"]
            add("dispatch lateness p99, 1,000 jobs", f"{p} ms", "< 10 ms", p < 10)
        for r in res["lateness"].get("aligned", []):
            add(f"  worst case: {r['jobs']} jobs firing at one instant, p99", f"{r['lateness_ms']['p99']} ms",
                "(no target)", None)
    if "standbys" in res:
        w = res["standbys"]["worst_sent_per_standby_per_s"]
        x = res["standbys"]["worst_executed_per_standby_per_s"]
        add("Redis commands per standby (sent; executed incl. scripts in brackets)", f"{w}/s ({x}/s)", "<= 0.5/s",
            res["standbys"]["met"])
    if "footprint" in res:
        fp = res["footprint"]
        r, c, t = fp["replica"], fp["celery_beat_plus_solo_worker"], fp["replica_tracing"]
        add("replica PSS <= half of Celery beat + solo worker", f"{r['pss_mib']} vs {c['pss_mib']} MiB",
            "ratio <= 0.5", r["pss_mib"] <= c["pss_mib"] / 2)
        add("CPU before the first run", f"{r['cpu_s_to_first_run']} s", "<= 0.4 s", r["cpu_s_to_first_run"] <= 0.4)
        add("idle replica PSS, three jobs, HTTP and tracing on", f"{t['pss_mib']} MiB", "<= 42 MiB",
            t["pss_mib"] <= 42)
    if "tracing" in res:
        o = res["tracing"]["lateness_overhead_pct"]
        add("tracing overhead on dispatch lateness (mean)", f"{o} %", "< 5 %", o is not None and o < 5)
    return out


# -- main ----------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short runs, fewer points (about 2 minutes)")
    ap.add_argument("--only", default="", help="comma-separated sections to run (default: all)")
    ap.add_argument("--replot", action="store_true", help="recompute targets and plots from the saved JSON only")
    args = ap.parse_args()
    if args.replot:
        out = RESULTS / ("results-quick.json" if args.quick else "results.json")
        res = json.loads(out.read_text())
        if "standbys" in res:
            res["standbys"] = standby_rates(res["standbys"])
        res["targets"] = targets(res)
        res["plots"] = plots(res)
        out.write_text(json.dumps(res, indent=2, default=str) + "\n")
        summary(res)
        return
    quick = args.quick
    only = {s for s in args.only.split(",") if s}
    RESULTS.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"quick": quick, "machine": machine()}
    started = time.monotonic()

    def section(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        if only and name not in only:
            return
        t = time.monotonic()
        print(f"[bench] {name} ...", flush=True)
        try:
            res[name] = fn()
        except Exception as exc:  # noqa: BLE001 - one failing section must not lose the others
            res[name + "_error"] = f"{type(exc).__name__}: {exc}"
            print(f"[bench] {name} FAILED: {exc}", flush=True)
        print(f"[bench] {name} done in {time.monotonic() - t:.0f}s", flush=True)

    with RedisProcess() as rp:
        section("handoff", lambda: anyio.run(bench_handoff, rp.url, 20 if quick else 100))
        section("takeover", lambda: anyio.run(bench_takeover, rp.url, [1.0, 2.0] if quick else [1.0, 2.0, 4.0, 8.0],
                                              2 if quick else 4))
        section("lateness", lambda: bench_lateness(rp.url, [10, 100, 1000] if quick else [10, 100, 1000, 2000, 5000],
                                                   4 if quick else 8))
        section("tracing", lambda: bench_tracing(rp.url, 100, 4 if quick else 8, 1 if quick else 3))
    section("standbys", lambda: bench_standbys([1, 10, 30] if quick else [1, 10, 25, 50, 100], 10 if quick else 20))
    section("footprint", lambda: bench_footprint(4 if quick else 10))
    if not only or "lease" in only:
        try:
            lease = importlib.import_module("benchmarks.bench_lease")
        except ImportError:
            lease = None
        if lease is not None and hasattr(lease, "run"):
            section("lease", lambda: lease.run(quick))
    res["targets"] = targets(res)
    res["plots"] = plots(res)
    res["elapsed_s"] = round(time.monotonic() - started, 1)
    out = RESULTS / ("results-quick.json" if quick else "results.json")
    out.write_text(json.dumps(res, indent=2, default=str) + "\n")
    print(f"\nwrote {out.relative_to(REPO)} and {len(res['plots'])} plots in {res['elapsed_s']} s")
    summary(res)


def summary(res: dict[str, Any]) -> None:
    m = res["machine"]
    print(f"machine: {m['nproc']} x {m['cpu']}, Python {m['python']}, {m['redis']}")
    for t in res["targets"]:
        mark = "INFO" if t["met"] is None else ("MET " if t["met"] else "MISS")
        print(f"  [{mark}] {t['target']}: {t['value']} (target {t['limit']})")
    for key in res:
        if key.endswith("_error"):
            print(f"  [ERR ] {key.removesuffix('_error')}: {res[key]}")


if __name__ == "__main__":
    main()
