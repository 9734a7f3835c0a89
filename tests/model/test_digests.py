"""The Lua scripts the protocol model stands for have not changed since it was
last checked (fast, no spin: it runs in `make test`).

Guarantees: a changed, new, moved or vanished protocol script fails this test,
naming it and saying how to re-check the model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.model import digests


def test_lua_scripts_match_the_checked_model() -> None:
    found = digests.problems()
    assert not found, "\n".join(found) + "\n" + digests.HOWTO


def test_update_records_what_check_compares(tmp_path: Path) -> None:
    model = tmp_path / "lightsched.pml"
    shutil.copy(digests.MODEL, model)
    digests.rewrite(model)
    assert set(digests.recorded(model)) == {(m, n) for m, n, _ in digests.SCRIPTS}
    assert [p for p in digests.problems(model) if "is a Lua script the protocol model" not in p] == []
