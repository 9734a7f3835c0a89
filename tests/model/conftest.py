"""Pytest wiring of the protocol model tests (tests/model).

The `model` marker is registered here, not in pyproject.toml: `make verify`
runs those tests (`pytest -m model tests/model`), `make test` leaves them out.
The digest test (test_digests.py) is not marked: it is fast and needs no spin.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "model: exhaustive spin checks of the protocol model (tests/model); needs spin; run by `make verify`"
    )


INSTALL_HINT = "install it with `apt-get install -y spin` (as root; `make verify` does it), then re-run"


def _try_install_spin() -> None:
    """As root on Debian/Ubuntu, install spin (what `make verify` would do); otherwise do nothing."""
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "install", "-y", "spin"], ["apt-get", "update"], ["apt-get", "install", "-y", "spin"]):
        try:
            subprocess.run(cmd, env=env, capture_output=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return
        if shutil.which("spin"):
            return


@pytest.fixture(scope="session")
def spin_tools() -> tuple[str, str]:
    """Paths of spin and a C compiler; skips the model tests when they cannot be had."""
    if shutil.which("spin") is None:
        _try_install_spin()
    spin = shutil.which("spin")
    cc = shutil.which("gcc") or shutil.which("cc")
    if spin is None:
        pytest.skip(f"spin (the model checker) is not on PATH and could not be installed: {INSTALL_HINT}")
    if cc is None:
        pytest.skip("no C compiler (gcc or cc) on PATH: spin's verifiers are C programs; apt-get install -y gcc")
    return spin, cc
