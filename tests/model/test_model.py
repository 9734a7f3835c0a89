"""The protocol model, checked by spin: every mutant and every hole of today's
protocol is caught with a counterexample trail, and the fixed protocol holds.

Guarantees: each mutant / hole check ends in a violation of the property it
names, with a trail file written and replayed. The fixed protocol is checked
here on the checks of `QUICK` (the full set, minutes: `python -m
tests.model.verify`, which `make verify` runs first).
Does not guarantee: anything when spin is missing (the tests skip, saying how
to install it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.model import verify

pytestmark = [pytest.mark.model, pytest.mark.timeout(900)]

#: Checks of the fixed protocol run here (seconds each); the rest only in verify.
QUICK = ["excl-w1-a", "fence-w1", "tokens-w1", "serial-a", "serial-b", "live", "live-wall", "live-lost-reply"]

BY_NAME = {c.name: c for c in verify.CHECKS}
EXPECTED_FAIL = [c.name for c in verify.CHECKS if c.expect is not None]


@pytest.fixture(scope="module")
def runs(spin_tools: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, verify.Result]]:
    build = tmp_path_factory.mktemp("model")
    checks = [BY_NAME[n] for n in EXPECTED_FAIL + QUICK]
    results = verify.run_all(checks, jobs=2, keep=build)
    return build, {r.check.name: r for r in results}


@pytest.mark.parametrize("name", [n for n in EXPECTED_FAIL if BY_NAME[n].group == "mutant"])
def test_mutant_is_caught(runs: tuple[Path, dict[str, verify.Result]], name: str) -> None:
    _assert_caught(runs, name)


@pytest.mark.parametrize("name", [n for n in EXPECTED_FAIL if BY_NAME[n].group == "today"])
def test_hole_of_todays_protocol_is_found(runs: tuple[Path, dict[str, verify.Result]], name: str) -> None:
    _assert_caught(runs, name)


@pytest.mark.parametrize("name", [n for n in EXPECTED_FAIL if BY_NAME[n].group in ("limit", "finding", "reach")])
def test_limits_findings_and_probes(runs: tuple[Path, dict[str, verify.Result]], name: str) -> None:
    _assert_caught(runs, name)


@pytest.mark.parametrize("name", QUICK)
def test_fixed_protocol_holds(runs: tuple[Path, dict[str, verify.Result]], name: str) -> None:
    _, results = runs
    r = results[name]
    assert r.ok and r.verdict == "verified", f"{name}: {r.verdict}\n" + "\n".join(r.trail) + r.log[-2000:]
    assert r.states and r.states > 0


def _assert_caught(runs: tuple[Path, dict[str, verify.Result]], name: str) -> None:
    build, results = runs
    r = results[name]
    check = BY_NAME[name]
    assert r.violated == check.expect, f"{name}: {r.verdict}\n{r.log[-2000:]}"
    assert (build / name / f"{verify.MODEL}.trail").is_file(), f"{name}: no counterexample trail written"
    assert r.ok, r.verdict
    if check.group != "reach":
        assert r.trail, f"{name}: the trail replays to no story"
