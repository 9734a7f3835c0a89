"""The image builds with `docker build` and runs as the Dockerfile promises.

Needs a Docker engine (`docker info` must succeed) and network access to PyPI
for the build; without an engine the test is skipped, saying why. Checks the
built image: non-root user, `lightsched run` as the default command, a health
check, the CLI runs, and no compiler in the final stage.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _docker_engine() -> str:
    """The docker binary, or skip saying why there is no engine to build with."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no Docker engine: the docker CLI is not on PATH")
    try:
        proc = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.skip("no Docker engine: `docker info` did not answer within 20 s")
    if proc.returncode != 0 or not proc.stdout.strip():
        reason = (proc.stderr.strip().splitlines() or ["no server version"])[-1]
        pytest.skip(f"no Docker engine: `docker info` failed: {reason}")
    return docker


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_image_builds_and_runs_as_promised() -> None:
    docker = _docker_engine()
    tag = f"lightsched-test:{uuid.uuid4().hex[:8]}"
    build = subprocess.run([docker, "build", "--tag", tag, str(REPO)], capture_output=True, text=True, timeout=1100)
    assert build.returncode == 0, f"docker build failed:\n{build.stderr[-3000:]}"
    try:
        (info,) = json.loads(subprocess.run([docker, "image", "inspect", tag], capture_output=True, text=True, check=True).stdout)
        config = info["Config"]
        assert config["User"] and config["User"].split(":")[0] not in ("root", "0")
        assert config["Cmd"] == ["lightsched", "run"]
        assert "/healthz" in " ".join(config["Healthcheck"]["Test"])

        def run(*argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([docker, "run", "--rm", "--entrypoint", argv[0], tag, *argv[1:]], capture_output=True, text=True, timeout=120)

        help_out = run("lightsched", "--help")
        assert help_out.returncode == 0, help_out.stderr
        for command in ("run", "run-job", "handoff", "status"):
            assert command in help_out.stdout
        uid = run("id", "-u")
        assert uid.returncode == 0 and uid.stdout.strip() != "0"
        for tool in ("gcc", "cc", "make"):
            found = run("sh", "-c", f"command -v {tool} || true")
            assert found.stdout.strip() == "", f"{tool} is in the final image at {found.stdout.strip()}"
        imports = run("python", "-c", "import leader, scheduler, jobs, observability, scheduler.cli")
        assert imports.returncode == 0, imports.stderr
    finally:
        subprocess.run([docker, "image", "rm", "--force", tag], capture_output=True, timeout=120)
