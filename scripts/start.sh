#!/usr/bin/env bash
# Set-up command 1.
#   LABEL_STUDIO_URL not set: the demo. Installs the runtime and Label Studio, starts Label Studio on
#     127.0.0.1:8080 (SQLite, data/demo), creates the project "ALLabel demo" from examples/mof_sample.jsonl,
#     starts the backend on 127.0.0.1:9090 and connects it, then prints the URL, the login and what to do.
#     Ctrl-C stops everything it started (scripts/demo.py). ALLABEL_DEMO=classification: a <Choices>
#     project ("ALLabel classification demo", examples/mof_classify.jsonl) instead.
#   LABEL_STUDIO_URL set (with LABEL_STUDIO_API_KEY): installs the runtime and starts only the backend on
#     127.0.0.1:9090 (ALLABEL_BIND to change), SQLite state in ./data/state.
# Either way the offline projection annotator is used unless OPENAI_API_KEY/OPENAI_BASE_URL is set.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${LABEL_STUDIO_URL:-}" ]; then
  bash scripts/install.sh demo
  exec .venv/bin/python scripts/demo.py
fi
bash scripts/install.sh runtime
export ALLABEL_STATE_DIR=${ALLABEL_STATE_DIR:-data/state}
# One worker: the queue, budget and pre-labeling job live in that process (threads serve requests).
exec .venv/bin/gunicorn --bind "${ALLABEL_BIND:-127.0.0.1:9090}" --workers 1 --threads "${THREADS:-8}" --timeout 120 _wsgi:app
