#!/usr/bin/env bash
# Installs what KubeKMS's scripts and tests need from Debian's packages, when missing,
# and checks the toolchains that cannot come from there.
#
#   Rust (cargo, with rustfmt and clippy) via rustup; Go 1.25 or newer (builds
#   kube-apiserver, kubectl and etcd from their Go modules, see hack/tools/build.sh).
#   Debian packages: see PACKAGES below. As root they are installed with apt-get;
#   otherwise the missing ones are listed with the command to install them.
set -euo pipefail

PACKAGES=(
  openssl          # certificates for the local control plane
  util-linux       # setsid, flock
  procps           # pgrep/pkill for checks
  iproute2         # ss: who holds a busy port
  bsdextrautils    # hexdump, to look at what etcd stores
  ca-certificates
  git
  build-essential  # cc and make for Rust crates with C parts
  cmake
  pkg-config
  shellcheck       # lints hack/ scripts in hack/test.sh
  # the node (hack/node.sh)
  containerd       # the node's container runtime (CRI)
  runc
  containernetworking-plugins  # CNI bridge, host-local, loopback
  iptables         # kube-proxy (iptables mode)
  conntrack        # kube-proxy
  softhsm2         # PKCS#11 key store tests (later issues)
  opensc           # pkcs11-tool
  # images (hack/images.sh)
  umoci            # writes the OCI layers, config and manifest
  skopeo           # copies/inspects OCI archives (docs/images.md)
  busybox-static   # the busybox test image
)

log() { echo "[install-deps] $*" >&2; }

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "${p}" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("${p}")
  fi
done

if ((${#missing[@]})); then
  if [[ "$(id -u)" == "0" ]]; then
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    log "missing Debian packages: ${missing[*]}"
    log "install them with: sudo apt-get install -y ${missing[*]}"
    exit 1
  fi
fi

status=0
if ! command -v go >/dev/null 2>&1; then
  log "error: Go is not installed (need 1.25 or newer on PATH; it builds kube-apiserver, kubectl and etcd)"
  status=1
fi
if ! python3 -c 'import sys, venv; sys.exit(sys.version_info < (3, 10))' >/dev/null 2>&1; then
  log "error: Python 3.10 or newer with the venv module is needed (hack/tools/python.sh makes the AWS CLI / boto3 venv of the server's e2e tests); on Debian: apt-get install python3 python3-venv"
  status=1
fi
if ! command -v cargo >/dev/null 2>&1; then
  log "error: Rust is not installed (install it with rustup; the workspace needs rust 1.90 or newer)"
  status=1
else
  for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
      if command -v rustup >/dev/null 2>&1; then
        log "adding the rustup component ${component}"
        rustup component add "${component}" || status=1
      else
        log "error: cargo ${component/rustfmt/fmt} is missing (rustup component add ${component})"
        status=1
      fi
    fi
  done
fi
exit "${status}"
