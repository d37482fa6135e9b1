#!/usr/bin/env bash
# Install what the project needs, idempotently: OS packages (when root), the Python
# virtual environment in .venv with the locked dependency versions, the project, and the
# pinned JVM jars (scripts/fetch_jars.sh; arguments name the jar groups, default by PROFILE).
# A first argument --bench adds what the benchmarks need beyond that (make bench).
# Re-running does nothing when everything is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."

bench=false
if [ "${1:-}" = "--bench" ]; then bench=true; shift; fi

PYTHON="${PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.installed"

need_os_packages=()
command -v redis-server >/dev/null 2>&1 || need_os_packages+=(redis-server)
command -v java >/dev/null 2>&1 || need_os_packages+=(openjdk-17-jre-headless)
# Maven fetches the pinned JVM jars (jars/pom.xml) once; nothing resolves at job start.
command -v mvn >/dev/null 2>&1 || need_os_packages+=(maven)
# wrk loads the HTTP API in bench/bench_serving.py.
if $bench; then command -v wrk >/dev/null 2>&1 || need_os_packages+=(wrk); fi
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

# Chromium (Debian's package) for the page checks: tests/test_pages.py and `tessera screenshots`.
# Optional for the demo, so a machine without root only gets a note.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing OS packages: chromium fonts-liberation"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q chromium fonts-liberation >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && apt-get install -y -q chromium fonts-liberation >/dev/null; }
  else
    echo "setup: chromium is missing and not root: the page tests need it (Debian/Ubuntu: sudo apt-get install chromium)" >&2
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
  "$VENV/bin/python" -m pip install -q -c requirements.lock -e ".[dev,local]"
  touch "$STAMP"
fi
# The JVM jars: Spark's (delta-spark, Kafka connector) and the Kafka broker's always; the
# s3a ones (~660 MB) only for profiles with an S3 lake, or when asked (make test: all).
jar_groups=("$@")
if ((${#jar_groups[@]} == 0)); then
  jar_groups=(spark broker)
  case "${PROFILE:-${TESSERA_PROFILE:-local}}" in *s3*|*production*) jar_groups+=(s3) ;; esac
fi
bash scripts/fetch_jars.sh "${jar_groups[@]}"
echo "setup: ready ($VENV, $("$VENV/bin/python" --version), java $(java -version 2>&1 | head -1 | cut -d'"' -f2))"
