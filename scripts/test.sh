#!/usr/bin/env bash
# Set up a fresh Debian machine for the test suite, run the checks, then the tests.
# Arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"` for the fast loop.
set -euo pipefail
cd "$(dirname "$0")/.."

# postgresql: the job store's tests start a real server from it (tests/pg.py).
HEYGEM_REQUIREMENTS=requirements-dev.txt bash scripts/setup.sh espeak-ng chromium shellcheck postgresql=initdb

# Each check stops the script on its first finding (set -e); configuration is in pyproject.toml.
step() {
  echo "test.sh: $*" >&2
  "$@"
}
step python3 -m ruff check
step python3 -m ruff format --check
step python3 -m mypy heygem
step lint-imports
exec python3 -m pytest "$@"
