#!/usr/bin/env bash
# Brings KubeKMS up locally: the kubekms KMS v2 plugin (its state folder made on first use
# by `kubekms-plugin init` in .state/kubekms-plugin), then a real kube-apiserver + etcd on
# loopback (built from their Go modules on first use) that encrypts Secrets through the
# plugin. Writes a demo Secret, shows what etcd stores for it, and prints how to use it.
#
# KUBEKMS_KMS_SOCKET / KUBEKMS_PLUGIN_CMD, when set, replace the plugin with another one
# (see hack/control-plane.sh --help). Extra arguments go to `hack/control-plane.sh up`.
# Stop everything with: hack/control-plane.sh down
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO_ROOT}"
log() { echo "[local-up] $*" >&2; }

hack/install-deps.sh

log "building the kubekms plugin (cargo build -p kubekms-plugin)"
cargo build --quiet -p kubekms-plugin --bin kubekms-plugin
target_dir="${CARGO_TARGET_DIR:-target}"
[[ "${target_dir}" == /* ]] || target_dir="${REPO_ROOT}/${target_dir}"
plugin_bin="${target_dir}/debug/kubekms-plugin"
plugin_state="${REPO_ROOT}/.state/kubekms-plugin"
plugin_socket="${plugin_state}/kms.sock"

if hack/control-plane.sh status >/dev/null 2>&1; then
  log "a control plane is already running; reusing it"
  state="$(readlink -f .state/control-plane)"
else
  if [[ -z "${KUBEKMS_PLUGIN_CMD:-}" && -z "${KUBEKMS_KMS_SOCKET:-}" ]]; then
    if [[ ! -e "${plugin_state}/active-key.json" ]]; then
      "${plugin_bin}" init --state-dir "${plugin_state}" >&2
    fi
    export KUBEKMS_KMS_SOCKET="${plugin_socket}"
    KUBEKMS_PLUGIN_CMD="exec $(printf '%q ' "${plugin_bin}" serve --state-dir "${plugin_state}" --socket "${plugin_socket}")"
    export KUBEKMS_PLUGIN_CMD
  fi
  state="$(hack/control-plane.sh up "$@")"
fi

# shellcheck disable=SC1090
source <(hack/control-plane.sh env --state-dir "${state}")

demo_note=""
kms_note="Secrets are stored unencrypted (no KMS plugin configured): etcd shows 'k8s' + protobuf with the plaintext."
if [[ -n "${KUBEKMS_KMS_SOCKET:-}" ]]; then
  kms_note="Secrets are encrypted by the KMS v2 plugin on ${KUBEKMS_KMS_SOCKET}: etcd shows 'k8s:enc:kms:v2:kubekms:', then kube-apiserver's EncryptedObject (the plugin's key_id in clear, no plaintext)."
  # Show it: a demo Secret, and the bytes etcd holds for it.
  kubectl create secret generic kubekms-demo --from-literal=password=s3cr3t >/dev/null 2>&1 || true
  stored="$(etcdctl get /registry/secrets/default/kubekms-demo --print-value-only | hexdump -C | head -n 8)"
  if etcdctl get /registry/secrets/default/kubekms-demo --print-value-only | grep -q s3cr3t; then
    leak="WARNING: the plaintext s3cr3t IS visible in etcd"
  else
    leak="the plaintext s3cr3t does not appear in etcd"
  fi
  demo_note="
The Secret default/kubekms-demo (password=s3cr3t) as etcd stores it (${leak}):

${stored}
"
  if [[ -x "${plugin_bin}" && "${KUBEKMS_KMS_SOCKET}" == "${plugin_socket}" ]]; then
    demo_note+="
The plugin (log: ${state}/logs/kms-plugin.log, state: ${plugin_state}):

$("${plugin_bin}" status --socket "${plugin_socket}" 2>&1 | sed 's/^/  /')

  ${plugin_bin} versions --state-dir ${plugin_state}   # material versions
  ${plugin_bin} rotate --state-dir ${plugin_state}     # new key_id; kube-apiserver follows within a minute
  kubectl get secrets -A -o json | kubectl replace -f -   # then re-encrypt every Secret under it
"
  fi
fi

cat <<MSG

KubeKMS control plane is up (state, certificates and logs in ${state}).
  kube-apiserver ${KUBEKMS_APISERVER_URL}   log: ${state}/logs/kube-apiserver.log
  etcd           ${KUBEKMS_ETCD_ENDPOINT}   log: ${state}/logs/etcd.log
${demo_note}
Use it from your shell:

  eval "\$(hack/control-plane.sh env)"     # sets KUBECONFIG, ETCDCTL_ENDPOINTS, PATH to the built kubectl/etcdctl
  # or: export KUBECONFIG=${KUBECONFIG}

  kubectl create secret generic demo --from-literal=password=s3cr3t
  kubectl get secret demo -o jsonpath='{.data.password}' | base64 -d; echo

See what etcd really stores for that Secret:

  etcdctl get /registry/secrets/default/demo --print-value-only | hexdump -C | head

${kms_note}

Stop it (stops every process it started; the plugin's keys stay in ${plugin_state}):

  hack/control-plane.sh down
MSG
