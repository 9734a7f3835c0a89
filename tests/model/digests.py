"""Ties the protocol model to the code: the digest of each Lua script it stands for.

The header of `lightsched.pml` records, per script, a line
`/* lua <module>:<CONSTANT> sha256=<hex> */`: the sha256 of the constant's text
when the model was last checked against it.

    python -m tests.model.digests --check    # exit 1 if a script changed since (fast; `make test` runs it)
    python -m tests.model.digests --update   # runs `python -m tests.model.verify` first; records only if it passes

Guarantees:
- `--check` reports every script whose text changed, every script of the table
  missing from the header, every header line no longer in the table, and
  every `*_LUA` constant of a scanned module that is in neither the table nor
  IGNORED (a new script the model does not stand for yet).
- `--update` writes nothing unless the whole model verification passed.

Does not guarantee: that the model still matches the code after a change; a
digest only tells you to look. Re-checking means reading the changed script
against its action in redis.pml / replica.pml, adjusting the model, running
`python -m tests.model.verify`, then `--update`.

`SCRIPTS` is the one table to edit when a module moves (the package will be
renamed to lightsched.*): `--update` rewrites the header lines from it.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import re
import subprocess
import sys
from pathlib import Path

MODEL = Path(__file__).resolve().parent / "lightsched.pml"

#: (module, constant) of every Lua script the model stands for, with the model action it is.
SCRIPTS: list[tuple[str, str, str]] = [
    ("leader.redis_store", "ACQUIRE_LUA", "run_script K_ACQ: acquire, mint max(token + 1, TIME), own attempt"),
    ("leader.redis_store", "RENEW_LUA", "run_script K_REN / K_ADO: renew, adopt"),
    ("leader.redis_store", "RELEASE_LUA", "run_script K_REL: release (+ PUBLISH: WAKE)"),
    ("leader.fence", "FENCE_CHECK_LUA", "fence_check: token and lease_id"),
    ("scheduler.slots", "CLAIM_SLOT_LUA", "run_script K_CLM: fence, mark, idempotent re-send, future"),
    ("scheduler.slots", "RECORD_RUN_LUA", "run_script K_FW: a fenced write"),
    ("scheduler.slots", "SET_NEXT_LUA", "takeover: next_run"),
    ("scheduler.fencing", "FENCED_SET_LUA", "run_script K_FW: a fenced write"),
    ("scheduler.fencing", "FENCED_UNLINK_LUA", "run_script K_FW: a fenced write"),
    ("scheduler.fencing", "FENCED_XADD_LUA", "run_script K_FW: a fenced write"),
    ("scheduler.requests", "ENQUEUE_REQUEST_LUA", "run_script K_MRQ: manual request"),
    ("scheduler.requests", "CLAIM_REQUEST_LUA", "run_script K_MCL: fenced claim of a request"),
    ("scheduler.requests", "FINISH_REQUEST_LUA", "(not modelled: bookkeeping after the run)"),
    ("scheduler.requests", "CANCEL_REQUEST_LUA", "run_script K_MCN: pending -> cancelled"),
]

#: `*_LUA` constants of the scanned modules that are deliberately outside the model.
IGNORED: set[tuple[str, str]] = set()

LINE = re.compile(r"^/\* lua (?P<module>[\w.]+):(?P<name>\w+) sha256=(?P<digest>[0-9a-f]*) \*/$", re.MULTILINE)
BEGIN = "/* ---- Lua scripts this model stands for (python -m tests.model.digests) ---- */"
END = "/* ---- end of Lua scripts ---- */"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def current() -> dict[tuple[str, str], str | None]:
    """sha256 of each script of the table as the code has it now (None: not found)."""
    out: dict[tuple[str, str], str | None] = {}
    for module, name, _ in SCRIPTS:
        try:
            value = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            value = None
        out[(module, name)] = digest(value) if isinstance(value, str) else None
    return out


def recorded(model: Path = MODEL) -> dict[tuple[str, str], str]:
    return {(m["module"], m["name"]): m["digest"] for m in LINE.finditer(model.read_text())}


def unlisted() -> list[tuple[str, str]]:
    """`*_LUA` string constants of the scanned modules in neither SCRIPTS nor IGNORED."""
    listed = {(m, n) for m, n, _ in SCRIPTS} | IGNORED
    out = []
    for module in sorted({m for m, _, _ in SCRIPTS}):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        for name, value in vars(mod).items():
            if (name.endswith("_LUA") and isinstance(value, str) and (module, name) not in listed
                    and _defined_in(mod, name)):
                out.append((module, name))
    return out


def _defined_in(mod, name: str) -> bool:
    """The constant is assigned in this module's source (not merely imported)."""
    try:
        source = Path(mod.__file__).read_text()
    except (OSError, TypeError):
        return True
    return re.search(rf"^{re.escape(name)}\s*=", source, re.MULTILINE) is not None


def problems(model: Path = MODEL) -> list[str]:
    """What `--check` reports; empty when every recorded digest matches the code."""
    now, rec = current(), recorded(model)
    out = []
    for (module, name), d in now.items():
        where = f"{module}:{name}"
        if d is None:
            out.append(f"{where} not found in the code: fix the table in tests/model/digests.py (SCRIPTS)")
        elif (module, name) not in rec:
            out.append(f"{where} is not recorded in tests/model/lightsched.pml")
        elif rec[(module, name)] != d:
            out.append(f"{where} changed since the protocol model was last checked against it")
    for module, name in rec:
        if (module, name) not in now:
            out.append(f"{module}:{name} is recorded in the model but not in the table of tests/model/digests.py")
    for module, name in unlisted():
        out.append(f"{module}:{name} is a Lua script the protocol model does not stand for yet "
                   "(model it, or add it to IGNORED in tests/model/digests.py with a reason)")
    return out


HOWTO = ("Re-check the model: read the changed script against its action in tests/model/redis.pml and "
         "replica.pml, adjust the model if the protocol changed, run `python -m tests.model.verify`, "
         "then `python -m tests.model.digests --update` (see tests/model/README.md).")


def rewrite(model: Path = MODEL) -> None:
    """Replace the header block with lines computed from SCRIPTS and the code."""
    now = current()
    missing = [f"{m}:{n}" for (m, n), d in now.items() if d is None]
    if missing:
        raise SystemExit(f"not found in the code: {', '.join(missing)}; fix SCRIPTS in tests/model/digests.py")
    lines = [BEGIN]
    for module, name, _ in SCRIPTS:
        lines.append(f"/* lua {module}:{name} sha256={now[(module, name)]} */")
    lines.append(END)
    text = model.read_text()
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < 0:
        raise SystemExit(f"{model}: the block between {BEGIN!r} and {END!r} is missing")
    model.write_text(text[:start] + "\n".join(lines) + text[end + len(END):])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.model.digests", description=__doc__.splitlines()[0])
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--check", action="store_true", help="compare recorded digests with the code")
    group.add_argument("--update", action="store_true", help="verify the model, then record the current digests")
    args = ap.parse_args(argv)
    if args.check:
        found = problems()
        for p in found:
            print(p)
        if found:
            print(HOWTO)
            return 1
        print(f"{len(SCRIPTS)} Lua scripts match the digests the protocol model was checked against")
        return 0
    print("running python -m tests.model.verify first ...", flush=True)
    rc = subprocess.call([sys.executable, "-m", "tests.model.verify"], cwd=Path(__file__).resolve().parents[2])
    if rc != 0:
        print("the model verification did not pass: digests NOT updated", file=sys.stderr)
        return 1
    rewrite()
    print(f"recorded the digests of {len(SCRIPTS)} Lua scripts in {MODEL}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
