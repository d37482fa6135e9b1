#!/usr/bin/env bash
# Install what the project needs, idempotently: OS packages (when root), the Python
# virtual environment in .venv with the locked dependency versions, and the project.
# Re-running does nothing when everything is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.installed"

need_os_packages=()
command -v redis-server >/dev/null 2>&1 || need_os_packages+=(redis-server)
command -v java >/dev/null 2>&1 || need_os_packages+=(openjdk-17-jre-headless)
if ((${#need_os_packages[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing OS packages: ${need_os_packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${need_os_packages[@]}" >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && apt-get install -y -q "${need_os_packages[@]}" >/dev/null; }
    # The Debian package starts its own redis on 6379; the project runs its own on its port.
    if command -v systemctl >/dev/null 2>&1; then systemctl disable --now redis-server >/dev/null 2>&1 || true; fi
  else
    echo "setup: missing ${need_os_packages[*]} and not root: install them with your package manager" >&2
    echo "       (Debian/Ubuntu: sudo apt-get install ${need_os_packages[*]})" >&2
    exit 1
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $("$PYTHON" --version)"
  "$PYTHON" -m venv "$VENV"
fi
# Reinstall only when the lock or setup.py changed since the last install.
if [ ! -f "$STAMP" ] || [ requirements.lock -nt "$STAMP" ] || [ setup.py -nt "$STAMP" ]; then
  echo "setup: installing Python packages (a cold install takes ~3-5 minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip wheel
  "$VENV/bin/python" -m pip install -q -c requirements.lock -e ".[dev]"
  touch "$STAMP"
fi
echo "setup: ready ($VENV, $("$VENV/bin/python" --version), java $(java -version 2>&1 | head -1 | cut -d'"' -f2))"
