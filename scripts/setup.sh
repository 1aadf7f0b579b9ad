#!/usr/bin/env bash
# Install what the app needs on a Debian/Ubuntu machine: ffmpeg from apt, Python packages from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
  else
    echo "setup: please install with your package manager: $*" >&2
  fi
}

# Each extra argument names an apt package whose command has the same name (espeak-ng, chromium...),
# or package=command when they differ (postgresql=initdb).
have() {
  # Debian keeps PostgreSQL's server programs off PATH, in /usr/lib/postgresql/<version>/bin.
  command -v "$1" >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/$1" >/dev/null
}
missing=()
for arg in "$@" ffmpeg; do
  have "${arg#*=}" || missing+=("${arg%%=*}")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt_install "${missing[@]}"
fi

python3 -m pip install -q -r "${HEYGEM_REQUIREMENTS:-requirements.txt}"
# face-alignment's own dependency list pulls the GUI opencv-python, which would replace the
# headless build; its real dependencies are listed in requirements.txt instead.
python3 -m pip install -q --no-deps face-alignment==1.5.0
