#!/usr/bin/env bash
# Installs everything the test suite needs, from package registries only:
#   .venv     the project (runtime + SBERT + test tools)
#   .venv-ls  a real Label Studio server for the end-to-end tests (kept apart: it pins its own Django stack)
# Idempotent: an existing venv whose requirements did not change is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

stamp() { sha256sum "$@" | sha256sum | cut -c1-16; }

want=$(stamp requirements.txt requirements-sbert.txt requirements-test.txt)
if [ "$(cat .venv/.stamp 2>/dev/null)" != "$want" ]; then
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r requirements-test.txt
  echo "$want" > .venv/.stamp
fi

want_ls=$(stamp requirements-ls.txt)
if [ "${ALLABEL_SKIP_LABEL_STUDIO:-0}" != 1 ] && [ "$(cat .venv-ls/.stamp 2>/dev/null)" != "$want_ls" ]; then
  "$PY" -m venv .venv-ls
  .venv-ls/bin/pip install -q --upgrade pip
  .venv-ls/bin/pip install -q -r requirements-ls.txt
  echo "$want_ls" > .venv-ls/.stamp
fi
