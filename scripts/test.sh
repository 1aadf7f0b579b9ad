#!/usr/bin/env bash
# Set up a fresh Debian machine for the test suite, then run it.
set -euo pipefail
cd "$(dirname "$0")/.."

HEYGEM_REQUIREMENTS=requirements-dev.txt bash scripts/setup.sh espeak-ng chromium shellcheck
exec python3 -m pytest "$@"
