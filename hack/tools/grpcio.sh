#!/usr/bin/env bash
# Makes a Python venv with the pinned grpcio (hack/tools/grpcio/requirements.txt, every
# wheel checked against its sha256): gRPC C-core, the client of another gRPC
# implementation that kms-plugin/tests/grpcio.rs runs against the plugin's socket.
#
# The venv is ${KUBEKMS_TOOLS_CACHE:-$HOME/.cache/kubekms/tools}/grpcio-<key>, where <key> is
# a hash of the pins, this script and the interpreter (path and version): it is made once
# per machine and again only when one of them changes; a cached run takes milliseconds.
# The interpreter is ${KUBEKMS_PYTHON:-python3} (3.10 or newer; the pins are of wheels for
# CPython 3.11 on x86_64 Linux). Same scheme as hack/tools/python.sh (the AWS CLI venv).
#
# Usage: hack/tools/grpcio.sh [--print-dir]
#   --print-dir   print the venv's bin folder on stdout (and nothing else) once it is
#                 ready: "$(hack/tools/grpcio.sh --print-dir)/python -c 'import grpc'"
set -euo pipefail

TOOLS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REQUIREMENTS="${TOOLS_DIR}/grpcio/requirements.txt"
PYTHON="${KUBEKMS_PYTHON:-python3}"

print_dir=false
for arg in "$@"; do
  case "${arg}" in
    --print-dir) print_dir=true ;;
    -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "grpcio.sh: unknown argument: ${arg}" >&2; exit 2 ;;
  esac
done

log() { echo "[tools] $*" >&2; }

if ! command -v "${PYTHON}" >/dev/null 2>&1; then
  log "error: ${PYTHON} is not on PATH; install Python 3.10 or newer (or set KUBEKMS_PYTHON)"
  exit 1
fi
if ! interpreter="$("${PYTHON}" -c '
import os, platform, sys
if sys.version_info < (3, 10):
    sys.exit("Python 3.10 or newer is needed, this is " + platform.python_version())
print(os.path.realpath(sys.executable), sys.version, platform.machine(), sep="\n")
')"; then
  log "error: ${PYTHON} cannot make the venv"
  exit 1
fi

key="$(
  {
    printf '%s\n' "${interpreter}"
    for f in "${TOOLS_DIR}/grpcio.sh" "${REQUIREMENTS}"; do
      printf '%s\n' "${f#"${TOOLS_DIR}"/}"
      cat "${f}"
    done
  } | sha256sum | cut -c1-16
)"
cache_root="${KUBEKMS_TOOLS_CACHE:-${HOME}/.cache/kubekms/tools}"
venv="${cache_root}/grpcio-${key}"
# Written last: a venv without it is a broken or interrupted install.
marker="${venv}/.kubekms-complete"

finish() {
  if ${print_dir}; then
    echo "${venv}/bin"
  fi
}

if [[ -f "${marker}" ]]; then
  log "up to date: ${venv}"
  finish
  exit 0
fi

mkdir -p "${cache_root}"
exec 9>"${cache_root}/.lock-grpcio-${key}"
if ! flock -n 9; then
  log "another install holds ${cache_root}/.lock-grpcio-${key}; waiting for it"
  flock 9
fi
if [[ -f "${marker}" ]]; then
  log "made by another process: ${venv}"
  finish
  exit 0
fi

# A venv cannot be moved (its scripts name their interpreter by absolute path), so it is
# made in place; a failure removes it, and a leftover without the marker is started over.
rm -rf "${venv}"
trap 'rm -rf "${venv}"' EXIT
start=${SECONDS}
log "making ${venv} (grpcio)"
"${PYTHON}" -m venv "${venv}"
PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 "${venv}/bin/python" -m pip install -q \
  --require-hashes --only-binary ':all:' -r "${REQUIREMENTS}" >&2
"${venv}/bin/python" -c 'import grpc; print("grpcio", grpc.__version__)' >&2
touch "${marker}"
trap - EXIT
log "venv ready in $((SECONDS - start))s"
finish
