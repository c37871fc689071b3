#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Set up this machine (idempotent) and run the whole test suite: lint, unit tests,
# BPF_PROG_TEST_RUN tests of the XDP program, end-to-end tests in network namespaces.
# Extra arguments go to pytest, e.g. scripts/test.sh -k parity
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$repo/scripts/setup.sh"
venv=${CCXDP_VENV:-$repo/.venv}
cd "$repo"
echo "[test] ruff"
"$venv/bin/ruff" check .
echo "[test] shellcheck"
shellcheck scripts/*.sh examples/*.sh vagrant/*.sh .ci/run
echo "[test] pytest"
exec "$venv/bin/python" -m pytest -p no:cacheprovider "$@"
