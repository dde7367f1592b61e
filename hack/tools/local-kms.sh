#!/usr/bin/env bash
# Builds local-kms, the Go emulator of AWS KMS that the API benchmark measures as a peer
# (cargo bench -p kubekms-bench --bench api_load), from its pinned Go module
# (hack/tools/local-kms/module/go.mod; no prebuilt binary is downloaded). The module sits one
# folder down so that hack/tools/build.sh, which hashes every hack/tools/*/go.mod into the
# cache key of the Kubernetes tools, does not rebuild kube-apiserver when this pin changes.
#
# The binary lands in ${KUBEKMS_TOOLS_CACHE:-$HOME/.cache/kubekms/tools}/<key>/bin/local-kms,
# where <key> is a hash of the pins (go.mod, go.sum), this script and the Go version: it is
# built once per machine and again only when a pin changes.
#
# How local-kms is run (read from its source, start.go and src/server.go):
#   PORT=<n>             listens on 0.0.0.0:<n> (default 8080; 0 picks a free port, and the
#                        log line "Local KMS started on 0.0.0.0:<port>" names it)
#   KMS_REGION           region of its ARNs (default eu-west-2)
#   KMS_ACCOUNT_ID       account of its ARNs (default 111122223333)
#   KMS_DATA_PATH        its LevelDB folder (default /tmp/local-kms: always set it)
#   KMS_SEED_PATH        a YAML seed file of keys and aliases (default /init/seed.yaml)
# It logs one line per request on stdout and checks no SigV4 signature.
#
# Usage: hack/tools/local-kms.sh [--print-dir]
#   --print-dir   print the bin folder on stdout (and nothing else) once it is ready
set -euo pipefail

TOOLS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODULE_DIR="${TOOLS_DIR}/local-kms/module"
# Keep in step with hack/tools/local-kms/module/go.mod.
LOCAL_KMS_MODULE="github.com/nsmithuk/local-kms"
LOCAL_KMS_VERSION="v0.0.0-20260228092603-2a5e92d09ab6"

print_dir=false
for arg in "$@"; do
  case "${arg}" in
    --print-dir) print_dir=true ;;
    -h|--help) sed -n '2,23p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "local-kms.sh: unknown argument: ${arg}" >&2; exit 2 ;;
  esac
done

log() { echo "[tools] $*" >&2; }

if ! command -v go >/dev/null 2>&1; then
  log "error: the Go toolchain (go) is not on PATH; install Go 1.25 or newer"
  exit 1
fi

key="$(
  {
    go env GOVERSION GOOS GOARCH
    for f in "${TOOLS_DIR}/local-kms.sh" "${MODULE_DIR}/go.mod" "${MODULE_DIR}/go.sum"; do
      printf '%s\n' "${f#"${TOOLS_DIR}"/}"
      cat "${f}"
    done
  } | sha256sum | cut -c1-16
)"
cache_root="${KUBEKMS_TOOLS_CACHE:-${HOME}/.cache/kubekms/tools}"
dest="${cache_root}/${key}"
bin="${dest}/bin"

finish() {
  if ${print_dir}; then
    echo "${bin}"
  fi
}

if [[ -x "${bin}/local-kms" ]]; then
  log "up to date: ${bin}/local-kms"
  finish
  exit 0
fi

mkdir -p "${cache_root}"
# One build of this key at a time (two benchmark runs may race); a lock of its own, so
# that it never waits for a Kubernetes build of hack/tools/build.sh.
exec 9>"${cache_root}/.lock-${key}"
if ! flock -n 9; then
  log "another build holds ${cache_root}/.lock-${key}; waiting for it"
  flock 9
fi
if [[ -x "${bin}/local-kms" ]]; then
  log "built by another process: ${bin}/local-kms"
  finish
  exit 0
fi

tmp="$(mktemp -d "${cache_root}/.build-${key}.XXXXXX")"
trap 'rm -rf "${tmp}"' EXIT
mkdir -p "${tmp}/bin"

export CGO_ENABLED=0
# -mod=readonly: the build uses exactly the pins of go.mod/go.sum, or fails.
export GOFLAGS="-mod=readonly -buildvcs=false"
start=${SECONDS}
log "building local-kms ${LOCAL_KMS_VERSION} (hack/tools/local-kms/module) into ${dest}"
(
  cd "${MODULE_DIR}"
  go build -trimpath \
    -ldflags="-s -w -X main.Version=${LOCAL_KMS_VERSION} -X main.GitCommit=${LOCAL_KMS_VERSION##*-}" \
    -o "${tmp}/bin/local-kms" "${LOCAL_KMS_MODULE}"
)
log "local-kms built in $((SECONDS - start))s"

rm -rf "${dest}"
mv "${tmp}" "${dest}"
trap - EXIT
finish
