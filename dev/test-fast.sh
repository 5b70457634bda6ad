#!/usr/bin/env bash
# `make test-fast`: lint, then the tests that need no PostgreSQL, no Kafka and no processes of the system
# (the `fast` mark, applied by the root conftest.py from the fixtures each test uses). The others are
# deselected, not skipped; `make test` runs everything.
set -euo pipefail
cd "$(dirname "$0")/.."
export ZAPTRIX_CACHE="${ZAPTRIX_CACHE:-$HOME/.cache/zaptrix}"
export UV_CACHE_DIR="${UV_CACHE_DIR:-$ZAPTRIX_CACHE/uv}" UV_PYTHON_DOWNLOADS=never
uv=$(dev/stack/uv.sh)
"$uv" sync --frozen --quiet
# Compiled modules kept between runs, outside the tree: with PYTHONDONTWRITEBYTECODE set (as some shells
# and CI images do), each worker compiled every module and rewrote every test module from source on every
# run, ~9 s of the lane.
unset PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX="${PYTHONPYCACHEPREFIX:-$ZAPTRIX_CACHE/pycache}"
run() { "$uv" run --frozen --no-sync "$@"; }
run ruff check .
run ruff format --check .
# Never a running database or broker: a test reaching for one without its fixture fails here.
unset ZAPTRIX_TEST_PG_URL ZAPTRIX_TEST_KAFKA
# One worker per core: the lane is CPU-bound. The chart tests share one worker (xdist_group "helm",
# root conftest.py), so each chart rendering is done once.
run pytest -p no:cacheprovider -m fast -n auto --dist loadgroup "$@"
