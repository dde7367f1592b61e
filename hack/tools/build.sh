#!/usr/bin/env bash
# Builds the pinned Kubernetes and etcd binaries from their Go modules:
#   kube-apiserver, kubectl, and for the node (hack/node.sh) kubelet, kube-proxy,
#   kube-controller-manager, kube-scheduler   (hack/tools/kubernetes/go.mod)
#   etcd, etcdctl, etcdutl    (hack/tools/etcd/go.mod; etcdutl restores snapshots)
#
# Binaries land in ${KUBEKMS_TOOLS_CACHE:-$HOME/.cache/kubekms/tools}/<key>/bin, where
# <key> is a hash of the pins (go.mod, go.sum), this script and the Go version, so a
# fresh clone on the same machine reuses them and they are rebuilt only when a pin
# changes. A git-ignored symlink .tools/bin in the repository points at that folder.
#
# Usage: hack/tools/build.sh [--print-dir]
#   --print-dir   print the bin folder on stdout (and nothing else) once it is ready
set -euo pipefail

TOOLS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${TOOLS_DIR}/../.." && pwd)"

# The pinned release; keep in step with hack/tools/kubernetes/go.mod.
KUBE_VERSION="v1.35.4"

print_dir=false
for arg in "$@"; do
  case "${arg}" in
    --print-dir) print_dir=true ;;
    -h|--help) sed -n '2,13p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "build.sh: unknown argument: ${arg}" >&2; exit 2 ;;
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
    for f in "${TOOLS_DIR}/build.sh" "${TOOLS_DIR}"/*/go.mod "${TOOLS_DIR}"/*/go.sum; do
      printf '%s\n' "${f#"${TOOLS_DIR}"/}"
      cat "${f}"
    done
  } | sha256sum | cut -c1-16
)"
cache_root="${KUBEKMS_TOOLS_CACHE:-${HOME}/.cache/kubekms/tools}"
dest="${cache_root}/${key}"
bin="${dest}/bin"

link_into_repo() {
  mkdir -p "${REPO_ROOT}/.tools"
  ln -sfn "${bin}" "${REPO_ROOT}/.tools/bin"
}

finish() {
  link_into_repo
  if ${print_dir}; then
    echo "${bin}"
  fi
}

all_present() {
  local b
  for b in kube-apiserver kubectl kubelet kube-proxy kube-controller-manager kube-scheduler \
    etcd etcdctl etcdutl; do
    [[ -x "${bin}/${b}" ]] || return 1
  done
}

if all_present; then
  log "up to date: ${bin}"
  finish
  exit 0
fi

mkdir -p "${cache_root}"
# One build at a time per cache folder (local-up and the test script may race).
exec 9>"${cache_root}/.lock"
if ! flock -n 9; then
  log "another build holds ${cache_root}/.lock; waiting for it"
  flock 9
fi
if all_present; then
  log "built by another process: ${bin}"
  finish
  exit 0
fi

tmp="$(mktemp -d "${cache_root}/.build-${key}.XXXXXX")"
trap 'rm -rf "${tmp}"' EXIT
mkdir -p "${tmp}/bin"

export CGO_ENABLED=0
export GOFLAGS="-mod=mod -buildvcs=false"
build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
kube_minor="${KUBE_VERSION#v1.}"; kube_minor="${kube_minor%%.*}"
version_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  version_ldflags+=" -X ${pkg}.gitVersion=${KUBE_VERSION}"
  version_ldflags+=" -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${kube_minor}"
  version_ldflags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=${build_date}"
done

start=${SECONDS}
log "building etcd, etcdctl, etcdutl (hack/tools/etcd) into ${dest}"
(
  cd "${TOOLS_DIR}/etcd"
  go build -trimpath -ldflags="-s -w" -o "${tmp}/bin/etcd" go.etcd.io/etcd/server/v3
  go build -trimpath -ldflags="-s -w" -o "${tmp}/bin/etcdctl" go.etcd.io/etcd/etcdctl/v3
  go build -trimpath -ldflags="-s -w" -o "${tmp}/bin/etcdutl" go.etcd.io/etcd/etcdutl/v3
)
log "etcd done after $((SECONDS - start))s; building kube-apiserver, kubectl, kubelet, kube-proxy, kube-controller-manager, kube-scheduler ${KUBE_VERSION} (a first build with empty Go caches takes about 15 min on 2 cores)"
(
  cd "${TOOLS_DIR}/kubernetes"
  go build -trimpath -ldflags="-s -w ${version_ldflags}" -o "${tmp}/bin/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl \
    k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy \
    k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler
)
log "all tools built in $((SECONDS - start))s"

rm -rf "${dest}"
mv "${tmp}" "${dest}"
trap - EXIT
finish
