#!/usr/bin/env bash
# Set-up command 2: install everything (incl. a real Label Studio, PostgreSQL and Chromium), lint,
# check the layout (ruff format), and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest -q tests "$@"
