#!/usr/bin/env bash
# Runs the e2e suite (e2e/) against a kind cluster whose kube-apiserver encrypts Secrets
# through the kubekms KMS v2 plugin.
#
# IT CANNOT RUN ON THE PROJECT'S OWN MACHINES OR CI: they have no Docker engine. It needs
# Linux, a Docker engine, kind (with a node image of the pinned Kubernetes minor), Go and
# Rust. The plugin runs on the host; its socket folder is bind-mounted into the kind node
# (a Linux host is needed for that: a Docker Desktop VM cannot share a Unix socket).
#
# Usage: hack/kind-e2e.sh [--keep]
#   By default the kubekms plugin is built (cargo build -p kubekms-plugin), initialised in
#   the work folder and served on the host.
#   The images of hack/images.sh (kubekms, busybox; the same OCI archives the local node
#   imports into its containerd) are built and loaded into the kind node with
#   `kind load image-archive`. After the suite, with the kubekms plugin, the operator and
#   the server run from that image as the Deployments of deploy/operator and deploy/server
#   (root key: the plugin's, copied into the node; a self-signed certificate for the
#   server) and must become Available.
#   KUBEKMS_KIND_NO_DEPLOY=1  skip that last step
#   KUBEKMS_PLUGIN_CMD='some-plugin --listen {socket}'  another plugin instead ({socket}
#                        is replaced by the host path of the socket)
#   KUBEKMS_KIND_NO_KMS=1  no plugin: Secrets stay unencrypted, the KMS test is skipped
#                        (by name: it fails on a control plane without a KMS provider)
#   KUBEKMS_KIND_IMAGE   node image (default kindest/node:v1.35.0)
#   --keep               leave the cluster (and plugin) running afterwards
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO_ROOT}"
NAME="kubekms-e2e"
IMAGE="${KUBEKMS_KIND_IMAGE:-kindest/node:v1.35.0}"
keep=false
[[ "${1:-}" == "--keep" ]] && keep=true

log() { echo "[kind-e2e] $*" >&2; }
for tool in docker kind cargo go openssl; do
  command -v "${tool}" >/dev/null || { log "error: ${tool} is not installed"; exit 1; }
done
docker info >/dev/null 2>&1 || { log "error: no Docker engine answers (docker info failed)"; exit 1; }

TOOLS_BIN="$(hack/tools/build.sh --print-dir)"
work="$(mktemp -d "${TMPDIR:-/tmp}/kubekms-kind.XXXXXX")"
mkdir -p "${work}/encryption" "${work}/socket" "${work}/logs"
socket="${work}/socket/kms.sock"
plugin_pid=""

cleanup() {
  local rc=$?
  if ! ${keep}; then
    kind delete cluster --name "${NAME}" >/dev/null 2>&1 || true
    if [[ -n "${plugin_pid}" ]]; then kill "${plugin_pid}" 2>/dev/null || true; wait "${plugin_pid}" 2>/dev/null || true; fi
  fi
  log "logs and kubeconfig in ${work}"
  exit "${rc}"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -z "${KUBEKMS_KIND_NO_KMS:-}" && -z "${KUBEKMS_PLUGIN_CMD:-}" ]]; then
  cargo build -p kubekms-plugin --bin kubekms-plugin
  target_dir="${CARGO_TARGET_DIR:-target}"
  [[ "${target_dir}" == /* ]] || target_dir="${REPO_ROOT}/${target_dir}"
  export KUBEKMS_PLUGIN_BIN="${target_dir}/debug/kubekms-plugin"
  "${KUBEKMS_PLUGIN_BIN}" init --state-dir "${work}/kubekms-plugin" >/dev/null
  KUBEKMS_PLUGIN_CMD="exec $(printf '%q ' "${KUBEKMS_PLUGIN_BIN}" serve --state-dir "${work}/kubekms-plugin" --socket "${socket}")"
fi
if [[ -z "${KUBEKMS_KIND_NO_KMS:-}" ]]; then
  cp e2e/kind/encryption-config.yaml "${work}/encryption/encryption-config.yaml"
  log "starting the plugin (log ${work}/logs/kms-plugin.log)"
  bash -c "${KUBEKMS_PLUGIN_CMD//\{socket\}/${socket}}" >"${work}/logs/kms-plugin.log" 2>&1 &
  plugin_pid=$!
  for _ in $(seq 1 120); do [[ -S "${socket}" ]] && break; sleep 0.5; done
  [[ -S "${socket}" ]] || { log "error: the plugin did not create ${socket}"; tail -n 40 "${work}/logs/kms-plugin.log" >&2; exit 1; }
else
  log "KUBEKMS_KIND_NO_KMS set: Secrets stay unencrypted (identity provider only)"
  printf '%s\n' "apiVersion: apiserver.config.k8s.io/v1" "kind: EncryptionConfiguration" \
    "resources:" "- resources: [secrets]" "  providers:" "  - identity: {}" \
    >"${work}/encryption/encryption-config.yaml"
fi

log "building the images (hack/images.sh, log ${work}/logs/images.log)"
hack/images.sh build --out "${work}/images" kubekms busybox >"${work}/logs/images.log" 2>&1 ||
  { tail -n 40 "${work}/logs/images.log" >&2; exit 1; }

sed "s|__WORK_DIR__|${work}|g" e2e/kind/cluster.yaml >"${work}/cluster.yaml"
kind create cluster --name "${NAME}" --image "${IMAGE}" --config "${work}/cluster.yaml" \
  --kubeconfig "${work}/kubeconfig" --wait 180s
for archive in "${work}/images/kubekms.oci.tar" "${work}/images/busybox.oci.tar"; do
  kind load image-archive --name "${NAME}" "${archive}"
done

kubectl=("${TOOLS_BIN}/kubectl" --kubeconfig "${work}/kubeconfig")
server_version="$("${kubectl[@]}" version -o json | sed -n 's/.*"gitVersion": *"\([^"]*\)".*/\1/p' | tail -n 1)"
{
  echo "KUBECONFIG=${work}/kubeconfig"
  echo "KUBEKMS_STATE_DIR=${work}"
  echo "KUBEKMS_ETCD_ENDPOINT=https://127.0.0.1:2379"
  echo "KUBEKMS_APISERVER_URL=$("${kubectl[@]}" config view --minify -o jsonpath='{.clusters[0].cluster.server}')"
  echo "KUBEKMS_TOOLS_BIN=${TOOLS_BIN}"
  echo "KUBEKMS_KUBE_VERSION=${server_version}"
  echo "KUBEKMS_ETCDCTL_CMD=${TOOLS_BIN}/kubectl -n kube-system exec etcd-${NAME}-control-plane -- etcdctl --endpoints https://127.0.0.1:2379 --cacert /etc/kubernetes/pki/etcd/ca.crt --cert /etc/kubernetes/pki/etcd/server.crt --key /etc/kubernetes/pki/etcd/server.key"
  if [[ -n "${plugin_pid}" ]]; then echo "KUBEKMS_KMS_SOCKET=${socket}"; fi
} >"${work}/env"

skip=()
if [[ -n "${KUBEKMS_KIND_NO_KMS:-}" ]]; then
  skip=(-- --skip secrets_are_encrypted_by_the_kubekms_plugin)
fi
KUBEKMS_E2E_STATE="${work}" cargo test -p kubekms-e2e "${skip[@]}"

# The operator and the server as users deploy them: from the loaded image, with the
# manifests of deploy/. The root key is the plugin's (the same 32 bytes, owned by the
# image's user 65532 in the node, as on a control-plane host: docs/images.md).
if [[ -z "${KUBEKMS_KIND_NO_DEPLOY:-}" && -f "${work}/kubekms-plugin/root.key" ]]; then
  node="${NAME}-control-plane"
  docker exec -i "${node}" sh -c 'install -d -m 0700 -o 65532 -g 65532 /var/lib/kubekms &&
    cat >/var/lib/kubekms/root.key && chown 65532:65532 /var/lib/kubekms/root.key &&
    chmod 0600 /var/lib/kubekms/root.key' <"${work}/kubekms-plugin/root.key"
  "${kubectl[@]}" apply --server-side --force-conflicts -f crds/
  "${kubectl[@]}" wait --for=condition=Established --timeout=60s crd --all
  "${kubectl[@]}" apply -f deploy/rbac/
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj "/CN=kubekms-server.kubekms-system.svc" \
    -addext "subjectAltName=DNS:kubekms-server.kubekms-system.svc,DNS:kubekms-server.kubekms-system.svc.cluster.local" \
    -keyout "${work}/server-tls.key" -out "${work}/server-tls.crt" 2>/dev/null
  "${kubectl[@]}" -n kubekms-system create secret tls kubekms-server-tls \
    --cert "${work}/server-tls.crt" --key "${work}/server-tls.key"
  "${kubectl[@]}" apply -f deploy/operator/ -f deploy/server/
  if ! "${kubectl[@]}" -n kubekms-system wait --for=condition=Available --timeout=180s \
    deployment/kubekms-operator deployment/kubekms-server; then
    "${kubectl[@]}" -n kubekms-system get pods -o wide >&2 || true
    "${kubectl[@]}" -n kubekms-system logs --all-containers --prefix --tail=40 \
      -l app.kubernetes.io/part-of=kubekms >&2 || true
    exit 1
  fi
  log "kubekms-operator and kubekms-server run from kubekms.local/kubekms:dev"
fi
