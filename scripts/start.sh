#!/usr/bin/env bash
# Set-up command 1: install the runtime and start the backend on 127.0.0.1:9090 (ALLABEL_BIND to change),
# SQLite state in ./data/state, the offline projection annotator unless OPENAI_API_KEY/OPENAI_BASE_URL is set.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh runtime
export ALLABEL_STATE_DIR=${ALLABEL_STATE_DIR:-data/state}
# One worker: the queue, budget and pre-labeling job live in that process (threads serve requests).
exec .venv/bin/gunicorn --bind "${ALLABEL_BIND:-127.0.0.1:9090}" --workers 1 --threads "${THREADS:-8}" --timeout 120 _wsgi:app
