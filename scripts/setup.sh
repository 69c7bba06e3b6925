#!/usr/bin/env bash
# Installs what is missing for AnomalyDesk on Debian 12 / Ubuntu 24.04 and creates .venv/ in the repo root.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  redis-server redis-tools
  # Qt's xcb platform and the desktop-notification test stack
  libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0 libegl1 libxkbcommon-x11-0 libgl1 libfontconfig1 libdbus-1-3
  xvfb x11-utils dbus dbus-x11 dunst libnotify-bin imagemagick haskell-status-notifier-item-utils
  # packaging checks
  desktop-file-utils zstd
  nodejs npm
  python3-venv
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# nodejs may come from elsewhere (NodeSource, nvm): accept any node >= 18 on PATH
if command -v node >/dev/null 2>&1; then
  missing=("${missing[@]/nodejs/}"); missing=("${missing[@]/npm/}")
fi
# python3-venv is only needed when the python we use has no venv module
if "${PYTHON:-python3}" -c "import venv, ensurepip" 2>/dev/null; then missing=("${missing[@]/python3-venv/}"); fi
read -r -a missing <<< "${missing[*]}"
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$( { cat pyproject.toml clients/python/pyproject.toml 2>/dev/null || true; } | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  echo "setup: installing Python packages into .venv" >&2
  .venv/bin/python -m pip install -q --upgrade pip >&2
  .venv/bin/python -m pip install -q -e ".[dev]" >&2
  if [ -f clients/python/pyproject.toml ]; then .venv/bin/python -m pip install -q -e clients/python >&2; fi
  rm -f .venv/.installed-*; touch "$stamp"
fi
