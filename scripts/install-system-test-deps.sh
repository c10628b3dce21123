#!/usr/bin/env bash
# System packages the Airflow tests use: Debian's chromium (tests/test_ui_form.py drives it headless)
# and PostgreSQL server binaries (tests/test_airflow_e2e.py runs a private, socket-only metadata DB;
# without them it falls back to SQLite, which can lock under a backfill); redis-server for the serving
# tests (tests/test_redis_load.py, tests/test_serving.py start a private one). Installs only what is missing.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ "${#missing[@]}" -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
else
  echo "warning: cannot install ${missing[*]} (needs root + apt-get); install them to run the Airflow tests" >&2
fi
