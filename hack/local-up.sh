#!/usr/bin/env bash
# Brings KubeKMS up locally: a real kube-apiserver + etcd on loopback (built from their
# Go modules on first use), and prints how to use it.
#
# Once the kubekms plugin exists it is started before kube-apiserver and Secrets are
# encrypted by it: set KUBEKMS_KMS_SOCKET and KUBEKMS_PLUGIN_CMD (see
# hack/control-plane.sh --help). Stop everything with: hack/control-plane.sh down
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO_ROOT}"

hack/install-deps.sh
if hack/control-plane.sh status >/dev/null 2>&1; then
  echo "[local-up] a control plane is already running; reusing it" >&2
  state="$(readlink -f .state/control-plane)"
else
  state="$(hack/control-plane.sh up "$@")"
fi

# shellcheck disable=SC1090
source <(hack/control-plane.sh env --state-dir "${state}")
kms_note="Secrets are stored unencrypted (no KMS plugin configured yet): etcd shows 'k8s' + protobuf with the plaintext."
if [[ -n "${KUBEKMS_KMS_SOCKET:-}" ]]; then
  kms_note="Secrets are encrypted by the kubekms KMS v2 plugin (${KUBEKMS_KMS_SOCKET}): etcd shows 'k8s:enc:kms:v2:kubekms:'."
fi

cat <<MSG

KubeKMS control plane is up (state, certificates and logs in ${state}).
  kube-apiserver ${KUBEKMS_APISERVER_URL}   log: ${state}/logs/kube-apiserver.log
  etcd           ${KUBEKMS_ETCD_ENDPOINT}   log: ${state}/logs/etcd.log

Use it from your shell:

  eval "\$(hack/control-plane.sh env)"     # sets KUBECONFIG, ETCDCTL_ENDPOINTS, PATH to the built kubectl/etcdctl
  # or: export KUBECONFIG=${KUBECONFIG}

  kubectl create secret generic demo --from-literal=password=s3cr3t
  kubectl get secret demo -o jsonpath='{.data.password}' | base64 -d; echo

See what etcd really stores for that Secret:

  etcdctl --endpoints ${KUBEKMS_ETCD_ENDPOINT} get /registry/secrets/default/demo --print-value-only | hexdump -C | head

${kms_note}

Stop it (stops every process it started):

  hack/control-plane.sh down
MSG
