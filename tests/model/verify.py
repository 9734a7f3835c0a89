"""Exhaustive checks of the lightsched protocol model with spin.

`python -m tests.model.verify` generates a verifier from `lightsched.pml`
(spin -a) for each check below, compiles it (gcc -DSAFETY) in a temporary
directory, runs it to completion and prints one line per check: verdict,
states stored, transitions, search depth, memory and seconds of the search.
Two checks run at a time (-j). (COLLAPSE would not help: the model is one
process, whose whole state is one global vector.)

Guarantees:
- Every check of the fixed protocol explores its whole state space: a run that
  stops early (memory, depth) is a failure, never a pass.
- A check expected to fail (today's protocol, a mutant, a known limit) passes
  only if spin finds a violation of the named property, writes a
  counterexample trail, and the trail replays to that property's assertion.
  Those checks search breadth first, so the trail is a shortest one.
- Exit status 0 only if every check gave its expected result.

Does not guarantee: anything beyond the model's scope (see the header of
lightsched.pml: two replicas, bounded faults, bounded time).

Standard library only; needs `spin` and a C compiler (`cc`/`gcc`) on PATH.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

MODEL_DIR = Path(__file__).resolve().parent
MODEL = "lightsched.pml"
SOURCES = ("lightsched.pml", "redis.pml", "replica.pml")

#: Memory limit of one verifier, in MB (two run at once on the 2-core target).
MEMLIM_MB = 3000
#: Depth limit of the search; the model's runs are far shorter (a few hundred steps).
MAX_DEPTH = 20000


@dataclass(frozen=True)
class Check:
    name: str
    group: str  # fixed | today | mutant | limit | finding
    claim: str  # what the check shows, one line
    defines: dict[str, int]
    expect: str | None = None  # None: no error; else the property tag whose violation is expected
    opt: str = "-O0"  # big state spaces pay back a slower compile

    def flags(self) -> list[str]:
        return [f"-D{k}={v}" for k, v in sorted(self.defines.items())]


def _d(**kw: int) -> dict[str, int]:
    return kw


LEASE = _d(F_JOBS=0)
WRITER = _d(F_JOBS=0, F_WRITER=1)
MANUAL = _d(F_MANUAL=1, MAXMR=1)

CHECKS: list[Check] = [
    # ---- the protocol after the fixes: every property holds ----
    Check("excl-w1-a", "fixed", "P_excl, WAIT 1: drift, pause, lost reply, failover, WAIT timeout",
          {**LEASE, "P_EXCL": 1, "H": 6, "MAXDR": 1, "MAXPA": 1, "MAXLR": 1, "MAXFO": 1, "MAXWT": 1}),
    Check("excl-w1-b", "fixed", "P_excl, WAIT 1: drift, pause, stuck command, handoff, failover, WAIT timeout",
          {**LEASE, "P_EXCL": 1, "H": 6, "MAXDR": 1, "MAXPA": 1, "MAXST": 1, "MAXHO": 1, "MAXFO": 1, "MAXWT": 1}),
    Check("excl-w1-c", "fixed", "P_excl, WAIT 1: drift, pause, lost reply, stuck command, handoff",
          {**LEASE, "P_EXCL": 1, "H": 6, "MAXDR": 1, "MAXPA": 1, "MAXLR": 1, "MAXST": 1, "MAXHO": 1}),
    Check("excl-w0", "fixed", "P_excl, WAIT 0 without failover: drift, pause, lost reply, stuck, handoff",
          {**LEASE, "P_EXCL": 1, "WAITN": 0, "H": 6, "MAXDR": 1, "MAXPA": 1, "MAXLR": 1, "MAXST": 1, "MAXHO": 1}),
    Check("fence-w0", "fixed", "P_fence, WAIT 0: lossy failover, empty restart, TIME step back, lost reply, pause",
          {**WRITER, "P_FENCE": 1, "WAITN": 0, "H": 6, "MAXFO": 1, "MAXRS": 1, "MAXTS": 1, "MAXLR": 1, "MAXPA": 1}),
    Check("fence-w1", "fixed", "P_fence, WAIT 1: failover, empty restart, TIME step back, lost reply, WAIT timeout",
          {**WRITER, "P_FENCE": 1, "H": 6, "MAXFO": 1, "MAXRS": 1, "MAXTS": 1, "MAXLR": 1, "MAXWT": 1}),
    Check("tokens-w1", "fixed", "P_tokens, WAIT 1: failover, empty restart, TIME step back, lost reply, WAIT timeout, pause",
          {**LEASE, "P_TOKENS": 1, "H": 6, "MAXFO": 1, "MAXRS": 1, "MAXTS": 1, "MAXLR": 1, "MAXWT": 1, "MAXPA": 1}),
    Check("once-w1-a", "fixed", "P_once + P_accounted, WAIT 1: failover, lost reply, pause, handoff, WAIT timeout",
          {"P_ONCE": 1, "P_ACCOUNTED": 1, "H": 7, "MAXFO": 1, "MAXLR": 1, "MAXPA": 1, "MAXHO": 1, "MAXWT": 1},
          opt="-O1"),
    Check("once-w1-b", "fixed", "P_once + P_accounted, WAIT 1: failover + TIME step back, stuck, wall step, drift, long run",
          {"P_ONCE": 1, "P_ACCOUNTED": 1, "H": 7, "MAXFO": 1, "MAXTS": 1, "MAXST": 1, "MAXWJ": 1, "MAXDR": 1,
           "MAXLG": 1}, opt="-O1"),
    Check("once-w1-c", "fixed", "P_once + P_accounted, WAIT 1: lost reply, stuck command, wall step, long run",
          {"P_ONCE": 1, "P_ACCOUNTED": 1, "H": 7, "MAXLR": 1, "MAXST": 1, "MAXWJ": 1, "MAXLG": 1}),
    Check("once-hist-w0", "fixed", "P_once_history + P_accounted, WAIT 0: lossy failover, empty restart, lost reply, pause",
          {"P_ONCE_HIST": 1, "P_ACCOUNTED": 1, "WAITN": 0, "H": 7, "MAXFO": 1, "MAXRS": 1, "MAXLR": 1, "MAXPA": 1},
          opt="-O1"),
    Check("serial-a", "fixed", "P_serial (scheduled and manual runs): pause, long run, WAIT timeout",
          {**MANUAL, "P_SERIAL": 1, "H": 7, "MAXPA": 1, "MAXLG": 1, "MAXWT": 1}),
    Check("serial-b", "fixed", "P_serial (scheduled and manual runs): handoff, long run, lost reply",
          {**MANUAL, "P_SERIAL": 1, "H": 7, "MAXHO": 1, "MAXLG": 1, "MAXLR": 1}),
    Check("manual-w1", "fixed", "P_once + P_cancel of a manual request, WAIT 1: failover, lost reply, WAIT timeout, pause",
          {**MANUAL, "P_ONCE": 1, "P_CANCEL": 1, "H": 7, "MAXFO": 1, "MAXLR": 1, "MAXWT": 1, "MAXPA": 1}, opt="-O1"),
    Check("live", "fixed", "liveness: faults until t=4 (failover, pause, handoff, lost reply, WAIT timeout, TIME step back); then a leader and every slot settled",
          {"LIVE": 1, "P_LIVE": 1, "H": 14, "NS": 5, "FW": 4, "MAXFO": 1, "MAXTS": 1, "MAXPA": 1, "MAXHO": 1,
           "MAXLR": 1, "MAXWT": 1}, opt="-O1"),
    Check("live-wall", "fixed", "liveness: wall clock step, drift, stuck command, long run until t=4; then a leader and every slot settled",
          {"LIVE": 1, "P_LIVE": 1, "H": 14, "NS": 5, "FW": 4, "MAXWJ": 1, "MAXDR": 1, "MAXST": 1, "MAXLG": 1}),
    Check("live-lost-reply", "fixed", "liveness: a lost reply costs at most one retry period of leadership",
          {**LEASE, "LIVE": 1, "P_LIVE": 1, "H": 6, "FW": 1, "DL": 2, "MAXLR": 1}),
    # ---- what WAIT_REPLICAS = 0 does not give (expected violations) ----
    Check("limit-once-w0", "limit", "WAIT 0: a lossy failover lets a claimed slot run once more",
          {"P_ONCE": 1, "WAITN": 0, "H": 7, "MAXFO": 1, "MAXHO": 1}, expect="P_once"),
    Check("limit-tokens-w0", "limit", "WAIT 0: a lossy failover mints an accepted token again",
          {**LEASE, "P_TOKENS": 1, "WAITN": 0, "H": 6, "MAXFO": 1}, expect="P_tokens"),
    Check("limit-excl-w0", "limit", "WAIT 0: a lossy failover lets two replicas believe they lead",
          {**LEASE, "P_EXCL": 1, "WAITN": 0, "H": 6, "MAXFO": 1}, expect="P_excl"),
    # ---- the protocol today: each known hole, found by spin ----
    Check("today-1-claim-no-wait", "today", "hole 1: a claim not covered by WAIT is lost in a failover; the slot runs twice",
          {"FIX": 0, "P_ONCE": 1, "H": 7, "MAXFO": 1, "MAXHO": 1}, expect="P_once"),
    Check("today-2-thread", "today", "hole 2: a cancelled run's thread outlives the term; the job runs twice at once",
          {"FIX": 0, "P_SERIAL": 1, "H": 7, "MAXWT": 1, "MAXLG": 1}, expect="P_serial"),
    Check("today-3-token-repeat", "today", "hole 3: a failover re-mints a token; the stale holder's write passes the number fence",
          {**WRITER, "FIX": 0, "P_FENCE": 1, "WAITN": 0, "H": 6, "MAXFO": 1}, expect="P_fence"),
    Check("today-4-claim-resend", "today", "hole 4: a re-sent claim returns 'claimed'; the slot is skipped, not counted",
          {"FIX": 0, "P_ACCOUNTED": 1, "H": 7, "MAXLR": 1}, expect="P_accounted"),
    Check("today-5-acquire-resend", "today", "hole 5: a re-sent acquire finds its own lease 'held'; no leader for a TTL",
          {**LEASE, "FIX": 0, "LIVE": 1, "P_LIVE": 1, "H": 6, "FW": 1, "DL": 2, "MAXLR": 1}, expect="P_live"),
    Check("today-6-manual", "today", "hole 6: run-job runs beside the leader's scheduled run under the same token",
          {**MANUAL, "FIX": 0, "P_SERIAL": 1, "H": 7}, expect="P_serial"),
    Check("today-7-wall-clock", "today", "hole 7: a wall clock stepped forward runs a future slot early",
          {"FIX": 0, "P_ACCOUNTED": 1, "H": 7, "MAXWJ": 1}, expect="P_accounted"),
    # ---- known-bad mutants of the fixed protocol ----
    Check("mutant-a-claim-no-wait", "mutant", "(a) claims not followed by WAIT",
          {"MUT": 1, "P_ONCE": 1, "H": 7, "MAXFO": 1, "MAXHO": 1}, expect="P_once"),
    Check("mutant-b-number-fence", "mutant", "(b) the fence compares the token number only",
          {**WRITER, "MUT": 2, "P_FENCE": 1, "WAITN": 0, "H": 6, "MAXFO": 1, "MAXRS": 1}, expect="P_fence"),
    Check("mutant-c-no-deadline", "mutant", "(c) belief lasts until the TTL (no renew deadline)",
          {**LEASE, "MUT": 3, "P_EXCL": 1, "H": 6, "MAXDR": 1, "MAXPA": 1}, expect="P_excl"),
    Check("mutant-d-no-time-floor", "mutant", "(d) tokens minted without the TIME floor",
          {**LEASE, "MUT": 4, "P_TOKENS": 1, "H": 6, "MAXRS": 1}, expect="P_tokens"),
    Check("mutant-e-no-mark-twice", "mutant", "(e) no high-water mark: resume from the wall clock (clock behind: twice)",
          {"MUT": 5, "P_ONCE": 1, "H": 7, "MAXWJ": 1, "MAXHO": 1}, expect="P_once"),
    Check("mutant-e-no-mark-lost", "mutant", "(e) no high-water mark: resume from the wall clock (clock ahead: lost)",
          {"MUT": 5, "LIVE": 1, "P_LIVE": 1, "H": 12, "NS": 4, "MAXWJ": 1, "MAXHO": 1}, expect="P_live"),
    Check("mutant-f-claim-not-idempotent", "mutant", "(f) a re-sent claim of one's own slot is refused",
          {"MUT": 6, "P_ACCOUNTED": 1, "H": 7, "MAXLR": 1}, expect="P_accounted"),
    Check("mutant-g-noop-without-write", "mutant", "(g) ACQUIRE's own-attempt path writes nothing: WAIT on the new connection passes at once",
          {**LEASE, "MUT": 7, "P_EXCL": 1, "H": 6, "MAXLR": 1, "MAXFO": 1}, expect="P_excl"),
    # ---- holes the model found in the fixes as planned; the fixed model includes the proposed repair ----
    Check("finding-cancel-no-wait", "finding", "planned fix without WAIT after CANCEL: a failover loses the cancel; the request runs after 'cancelled'",
          {**MANUAL, "FIX_MCN_WAIT": 0, "P_CANCEL": 1, "H": 7, "MAXFO": 1}, expect="P_cancel"),
    Check("finding-first-takeover", "finding", "planned fix: with no slot claimed yet, a successor resumes from its own now; slots owed since the first leader started are skipped, uncounted",
          {"FIX_INITMARK": 0, "LIVE": 1, "P_LIVE": 1, "H": 14, "NS": 5, "FW": 4, "MAXPA": 1}, expect="P_live"),
]


#: Reachability probes: each interesting event of the fixed protocol happens
#: within the scope of the check that verifies it (see PROBE in lightsched.pml).
PROBES = [
    (1, "excl-w1-a", "ACQUIRE takes its own re-sent attempt for acquired (PEXPIRE)"),
    (2, "excl-w1-a", "the elector adopts the lease of an unanswered attempt"),
    (3, "once-w1-a", "a re-sent claim of one's own slot is ok again (idempotent)"),
    (4, "once-w1-b", "a claim ahead of Redis TIME is refused 'future' and retried"),
    (5, "once-w1-a", "a claim short of acks is counted missed"),
    (6, "once-w1-a", "a slot runs after a failover"),
    (7, "fence-w0", "the fence refuses a stale writer"),
    (8, "excl-w1-a", "a renew short of acks steps down"),
    (9, "manual-w1", "the leader runs a manual request"),
    (10, "manual-w1", "the requester reports its request cancelled"),
    (11, "excl-w1-b", "a standby takes over after a handoff"),
    (12, "serial-a", "a new term finds the job still occupied by a running thread"),
    (13, "once-hist-w0", "WAIT 0: a slot runs a second time after a lossy failover"),
]
_BY_NAME = {c.name: c for c in CHECKS}
CHECKS += [
    Check(f"reach-{n:02d}", "reach", f"reachable in {base}: {what}", {**_BY_NAME[base].defines, "REACH": n},
          expect="REACH")
    for n, base, what in PROBES
]


@dataclass
class Result:
    check: Check
    ok: bool = False
    verdict: str = ""
    states: int | None = None
    transitions: int | None = None
    depth: int | None = None
    memory_mb: float | None = None
    seconds: float = 0.0
    violated: str | None = None  # property tag of the failed assertion
    trail: list[str] = field(default_factory=list)  # the counterexample's story (MSC lines)
    log: str = ""


def _num(pattern: str, text: str, cast=float):
    m = re.search(pattern, text)
    return cast(float(m.group(1))) if m else None


def _tag_of(replay: str) -> str | None:
    """The property whose assertion failed: each reads `assert(holds || violates_P_x)`."""
    m = re.search(r"text of failed assertion: .*\bviolates_(P_[A-Za-z_]+|MODEL)\b", replay)
    if m:
        return m.group(1)
    if re.search(r"text of failed assertion: .*\breached_PROBE\b", replay):
        return "REACH"
    if "invalid end state" in replay:
        return "deadlock"
    return "unknown" if "assertion violated" in replay else None


def run_check(check: Check, root: Path, spin: str, cc: str) -> Result:
    res = Result(check)
    build = root / check.name
    build.mkdir(parents=True, exist_ok=True)
    for src in SOURCES:
        shutil.copy(MODEL_DIR / src, build / src)
    t0 = time.monotonic()
    try:
        subprocess.run([spin, "-a", *check.flags(), MODEL], cwd=build, check=True, capture_output=True, text=True)
        cflags = [check.opt, "-w", "-DSAFETY", f"-DMEMLIM={MEMLIM_MB}"]
        if check.expect:
            cflags.append("-DBFS")  # shortest counterexample
        subprocess.run([cc, *cflags, "-o", "pan", "pan.c"], cwd=build, check=True, capture_output=True, text=True)
        t1 = time.monotonic()
        run = subprocess.run(["./pan", f"-m{MAX_DEPTH}"], cwd=build, capture_output=True, text=True, check=False)
        res.seconds = time.monotonic() - t1
    except subprocess.CalledProcessError as exc:
        res.verdict = f"BUILD FAILED: {' '.join(map(str, exc.cmd))[:80]}\n{exc.stderr[-2000:]}"
        res.seconds = time.monotonic() - t0
        return res
    out = run.stdout + run.stderr
    res.log = out
    res.states = _num(r"(\d+) states, stored", out, int)
    res.transitions = _num(r"([\d.e+]+) transitions \(= stored\+matched\)", out, int)
    res.depth = _num(r"depth reached (\d+)", out, int)
    res.memory_mb = _num(r"([\d.]+)\s+total actual memory usage", out)
    errors = _num(r"errors: (\d+)", out, int)
    incomplete = any(s in out for s in ("Search not completed", "max search depth too small", "out of memory"))
    trail = build / f"{MODEL}.trail"
    if errors:
        replay = subprocess.run([spin, "-t", *check.flags(), MODEL], cwd=build, capture_output=True, text=True,
                                check=False)
        text = replay.stdout + replay.stderr
        res.violated = _tag_of(text)
        res.trail = [ln.strip()[5:] for ln in text.splitlines() if ln.strip().startswith("MSC: ")]
    if check.expect is None:
        if errors == 0 and not incomplete and res.states is not None:
            res.ok, res.verdict = True, "verified"
        elif errors:
            res.verdict = f"VIOLATION of {res.violated}"
        else:
            res.verdict = "INCOMPLETE search"
    else:
        if errors and trail.exists() and res.violated == check.expect:
            res.ok, res.verdict = True, f"violates {res.violated} (as expected)"
        elif errors:
            res.verdict = f"WRONG violation: {res.violated}, expected {check.expect}"
        else:
            res.verdict = f"NO violation of {check.expect} found (expected one)"
    return res


def find_tools() -> tuple[str | None, str | None]:
    spin = shutil.which("spin")
    cc = shutil.which("gcc") or shutil.which("cc")
    return spin, cc


def selected(patterns: list[str] | None, groups: list[str] | None = None) -> list[Check]:
    out = []
    for c in CHECKS:
        if patterns and not any(fnmatch.fnmatch(c.name, p) for p in patterns):
            continue
        if groups and c.group not in groups:
            continue
        out.append(c)
    return out


def run_all(checks: list[Check], jobs: int, keep: Path | None = None, on_result=None) -> list[Result]:
    spin, cc = find_tools()
    if spin is None or cc is None:
        raise FileNotFoundError("spin" if spin is None else "a C compiler (gcc or cc)")
    root = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="lightsched-model-"))
    root.mkdir(parents=True, exist_ok=True)
    results: dict[str, Result] = {}
    try:
        # The biggest state spaces first, so two workers finish together.
        order = sorted(checks, key=lambda c: (c.opt == "-O0", c.expect is not None))
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(run_check, c, root, spin, cc): c for c in order}
            for fut in concurrent.futures.as_completed(futures):
                r = fut.result()
                results[r.check.name] = r
                if on_result:
                    on_result(r)
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return [results[c.name] for c in checks]


def _fmt(r: Result) -> str:
    def n(v):
        return "-" if v is None else f"{v:,}"

    mem = "-" if r.memory_mb is None else f"{r.memory_mb:.0f} MB"
    mark = "ok  " if r.ok else "FAIL"
    return (f"{mark} {r.check.name:32} {r.verdict:38} states {n(r.states):>11}  transitions {n(r.transitions):>12}"
            f"  depth {n(r.depth):>4}  memory {mem:>8}  {r.seconds:6.1f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.model.verify", description=__doc__.splitlines()[0])
    ap.add_argument("-k", "--only", action="append", help="run only checks whose name matches this glob (repeatable)")
    ap.add_argument("-j", "--jobs", type=int, default=min(2, os.cpu_count() or 1), help="checks run at once (default 2)")
    ap.add_argument("--stories", action="store_true", help="print each counterexample's story")
    ap.add_argument("--keep", type=Path, help="build in this directory and keep it (trails, pan.c)")
    ap.add_argument("--json", type=Path, help="also write the results to this JSON file")
    ap.add_argument("--list", action="store_true", help="list the checks and exit")
    args = ap.parse_args(argv)
    checks = selected(args.only)
    if args.list:
        for c in checks:
            print(f"{c.name:32} {c.group:8} {c.expect or 'holds':12} {c.claim}")
        return 0
    if not checks:
        print("no check matches", file=sys.stderr)
        return 2
    start = time.monotonic()
    print(f"spin model {MODEL_DIR / MODEL}: {len(checks)} checks, {args.jobs} at a time", flush=True)
    try:
        results = run_all(checks, args.jobs, args.keep, on_result=lambda r: print(_fmt(r), flush=True))
    except FileNotFoundError as exc:
        print(f"cannot run the model checks: {exc} not found on PATH "
              "(Debian/Ubuntu: apt-get install -y spin gcc; or run `make verify`)", file=sys.stderr)
        return 2
    bad = [r for r in results if not r.ok]
    if args.stories or bad:
        for r in results:
            if r.trail and (args.stories or not r.ok):
                print(f"\n--- {r.check.name}: {r.check.claim}")
                for line in r.trail:
                    print(f"    {line}")
        for r in bad:
            if not r.trail:
                print(f"\n--- {r.check.name}: {r.verdict}\n{r.log[-1500:]}")
    wall = time.monotonic() - start
    if args.json:
        args.json.write_text(json.dumps([{
            "name": r.check.name, "group": r.check.group, "claim": r.check.claim, "defines": r.check.defines,
            "expect": r.check.expect, "ok": r.ok, "verdict": r.verdict, "states": r.states,
            "transitions": r.transitions, "depth": r.depth, "memory_mb": r.memory_mb, "seconds": round(r.seconds, 2),
            "violated": r.violated, "trail": r.trail} for r in results], indent=1))
    print(f"\n{len(results) - len(bad)}/{len(results)} checks as expected; total wall time {wall:.1f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
