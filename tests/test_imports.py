"""The import rules hold: lint-imports checks the contracts in pyproject.toml ([tool.importlinter]).

Among them: the HTTP server, API and everything below never load gradio, so /health answers
before the UI's slow import; torch stays inside the engine; nothing imports heygem.web or
heygem.cli but the CLI. scripts/test.sh runs the same command before pytest; this test makes a
broken contract fail pytest too.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
LINT_TIMEOUT_S = 300


def test_the_import_contracts_are_kept():
    command = shutil.which("lint-imports")
    assert command, "lint-imports is missing: pip install -r requirements-dev.txt (import-linter)"
    result = subprocess.run(
        [command, "--no-cache"], cwd=PROJECT, capture_output=True, text=True, timeout=LINT_TIMEOUT_S
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
