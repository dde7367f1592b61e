#!/usr/bin/env bash
# Makes a Python venv of pinned wheels (every wheel checked against its sha256), one per
# set of pins in hack/tools/<set>/requirements.txt:
#   python  the AWS CLI and boto3, which the kubekms-server e2e tests run (the default)
#   grpcio  gRPC C-core, the client of another gRPC implementation that
#           kms-plugin/tests/grpcio.rs runs against the plugin's socket (hack/tools/grpcio.sh)
#
# The venv is ${KUBEKMS_TOOLS_CACHE:-$HOME/.cache/kubekms/tools}/<set>-<key>, where <key> is
# a hash of the pins, this script and the interpreter (path and version): it is made once
# per machine and again only when one of them changes; a cached run takes milliseconds.
# The interpreter is ${KUBEKMS_PYTHON:-python3} (3.10 or newer; the pins are of wheels for
# CPython 3.11 on x86_64 Linux).
#
# Usage: hack/tools/python.sh [--set python|grpcio] [--print-dir]
#   --print-dir   print the venv's bin folder on stdout (and nothing else) once it is
#                 ready: "$(hack/tools/python.sh --print-dir)/aws" is the AWS CLI and
#                 ".../python -c 'import boto3'" has boto3
set -euo pipefail

TOOLS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${KUBEKMS_PYTHON:-python3}"

print_dir=false
pin_set=python
while (($#)); do
  case "$1" in
    --print-dir) print_dir=true ;;
    --set)
      [[ $# -ge 2 ]] || { echo "python.sh: --set needs a name" >&2; exit 2; }
      pin_set="$2"
      shift
      ;;
    -h|--help) sed -n '2,18p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "python.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
case "${pin_set}" in
  python) what="AWS CLI, boto3" ;;
  grpcio) what="grpcio" ;;
  *) echo "python.sh: unknown set of pins: ${pin_set} (python or grpcio)" >&2; exit 2 ;;
esac
REQUIREMENTS="${TOOLS_DIR}/${pin_set}/requirements.txt"

log() { echo "[tools] $*" >&2; }

if ! command -v "${PYTHON}" >/dev/null 2>&1; then
  log "error: ${PYTHON} is not on PATH; install Python 3.10 or newer (or set KUBEKMS_PYTHON)"
  exit 1
fi
# One interpreter start: its identity for the key, and the version check.
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
    for f in "${TOOLS_DIR}/python.sh" "${REQUIREMENTS}"; do
      printf '%s\n' "${f#"${TOOLS_DIR}"/}"
      cat "${f}"
    done
  } | sha256sum | cut -c1-16
)"
cache_root="${KUBEKMS_TOOLS_CACHE:-${HOME}/.cache/kubekms/tools}"
venv="${cache_root}/${pin_set}-${key}"
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
exec 9>"${cache_root}/.lock-${pin_set}-${key}"
if ! flock -n 9; then
  log "another install holds ${cache_root}/.lock-${pin_set}-${key}; waiting for it"
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
log "making ${venv} (${what})"
"${PYTHON}" -m venv "${venv}"
PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 "${venv}/bin/python" -m pip install -q \
  --require-hashes --only-binary ':all:' -r "${REQUIREMENTS}" >&2
if [[ "${pin_set}" == grpcio ]]; then
  "${venv}/bin/python" -c 'import grpc; print("grpcio", grpc.__version__)' >&2
else
  "${venv}/bin/python" -c 'import boto3, botocore' >&2
  "${venv}/bin/aws" --version >&2
fi
touch "${marker}"
trap - EXIT
log "venv ready in $((SECONDS - start))s"
finish
