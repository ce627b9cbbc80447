#!/usr/bin/env bash
# Installs what a mode needs, from package registries only (idempotent: an up-to-date venv is left alone).
#   scripts/install.sh runtime   .venv with the backend and CLI (requirements.txt)
#   scripts/install.sh test      .venv with runtime + SBERT + test tools, and .venv-ls with a real
#                                Label Studio for the end-to-end tests (kept apart: it pins its own Django)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-test}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11+ is needed (found $("$PY" --version))" >&2; exit 1; }

stamp() { cat "$@" | sha256sum | cut -c1-16; }

venv() {  # venv DIR STAMPNAME REQUIREMENTS...
  local dir=$1 name=$2; shift 2
  local want; want=$(stamp "$@")
  [ "$(cat "$dir/.stamp-$name" 2>/dev/null)" = "$want" ] && return 0
  echo "installing $* into $dir ..." >&2
  [ -x "$dir/bin/python" ] || "$PY" -m venv "$dir"
  "$dir/bin/pip" install -q --disable-pip-version-check $(printf -- "-r %s " "$@")
  echo "$want" > "$dir/.stamp-$name"
}

case "$mode" in
  runtime)
    [ -f .venv/.stamp-test ] && [ "$(cat .venv/.stamp-test)" = "$(stamp requirements.txt requirements-sbert.txt requirements-test.txt)" ] && exit 0
    venv .venv runtime requirements.txt ;;
  test)
    venv .venv test requirements.txt requirements-sbert.txt requirements-test.txt
    venv .venv-ls ls requirements-ls.txt ;;
  *) echo "usage: $0 runtime|test" >&2; exit 2 ;;
esac
