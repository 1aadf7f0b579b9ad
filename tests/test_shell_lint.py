"""The shell scripts pass shellcheck and keep the start script's contract (strict mode, exec)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
START_APP = PROJECT / "start_app.sh"
SCRIPTS = sorted(
    [START_APP, PROJECT / ".ci" / "run", *(PROJECT / "scripts").glob("*.sh")],
    key=lambda p: str(p),
)


def _shellcheck() -> str:
    path = shutil.which("shellcheck")
    # scripts/test.sh installs it (apt), so a missing binary is a broken set-up, not a reason to skip.
    assert path, "shellcheck is not installed: run scripts/test.sh or apt-get install shellcheck"
    return path


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(PROJECT)))
def test_shellcheck_is_clean(script):
    result = subprocess.run(
        [_shellcheck(), "--shell=bash", "--external-sources", str(script)],
        capture_output=True,
        text=True,
        cwd=PROJECT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(PROJECT)))
def test_scripts_use_strict_mode(script):
    lines = script.read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert "set -euo pipefail" in lines


def test_start_app_ends_by_exec_ing_the_app():
    """The server must replace bash, so that SIGTERM reaches it (and no `tee` eats the logs)."""
    code = [
        line.strip()
        for line in START_APP.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    exec_lines = [line for line in code if line.startswith("exec ")]
    assert exec_lines == ['exec "$PYTHON" app.py "$@"']
    assert not any("tee " in line or "nohup" in line for line in code)


def test_shellcheck_catches_a_real_mistake(tmp_path):
    """Guards the guard: the same invocation fails on an unquoted variable."""
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/usr/bin/env bash\nset -euo pipefail\nrm -rf $1/tmp\n")
    result = subprocess.run([_shellcheck(), "--shell=bash", str(bad)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "SC2086" in result.stdout
