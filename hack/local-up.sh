#!/usr/bin/env bash
# Brings KubeKMS up locally, doing its main job: kube-apiserver encrypts Secrets with a
# key that the operator manages as a KmsKey.
#
#   1. `kubekms-plugin init` makes the bootstrap key in .state/kubekms-plugin (first use);
#   2. a real kube-apiserver + etcd on loopback (hack/control-plane.sh, built from their Go
#      modules on first use) with the plugin in follow mode
#      (`serve --follow kubekms-system/apiserver-key`) as its KMS v2 provider;
#   3. the CRDs, then the bootstrap key handed over as KmsKey kubekms-system/apiserver-key
#      (`kubekms-plugin export | kubectl apply --server-side -f -`, only if it is missing);
#   4. the operator (kubekms-operator, same root key file as the plugin) as its
#      ServiceAccount kubekms-system/kubekms-operator (deploy/rbac/operator.yaml), started
#      with `hack/control-plane.sh start-process` so that `down` and the watchdog stop it;
#   5. the admission policy deploy/admission/ and the samples deploy/samples/ (KmsKey
#      app-key, KmsAlias alias/app, a KmsGrant and a Role for the ServiceAccount
#      kubekms-demo/app), waiting until the keys are Enabled and the alias and grant Ready;
#   6. kubekms-server (the AWS KMS API) as its ServiceAccount kubekms-system/kubekms-server
#      (deploy/rbac/server.yaml), on https://127.0.0.1:<port> with a certificate signed by
#      the control plane's CA, waiting for /readyz;
#   7. a demo Secret, what etcd stores for it; one `aws kms encrypt` and one `aws kms
#      decrypt` run as the ServiceAccount kubekms-demo/app (a TokenRequest token exchanged
#      by the AWS CLI's web-identity flow at the server's STS), and how to use it all.
#
# With --node (root only) every KubeKMS component runs as in a cluster (docs/node.md): the
# node (containerd, kubelet, kube-proxy, kube-controller-manager, kube-scheduler) comes up
# with the control plane, the image kubekms.local/kubekms:dev (hack/images.sh, from the
# cargo build) imported; the plugin is the kubelet's static pod
# (deploy/static-pod/kubekms-plugin.yaml in follow mode, started before kube-apiserver as
# kubeadm orders it), the operator and kubekms-server are the Deployments of deploy/ (root
# key by hostPath, the server's TLS Secret signed by the cluster CA), and the AWS CLI goes
# through the server's Service ClusterIP. Host folders: $KUBEKMS_LOCAL_STATE/kubekms-node/.
#
# Run it again while it runs and it reuses that control plane (and starts the operator
# again if it stopped). Stop everything with: hack/control-plane.sh down
#
# Environment:
#   KUBEKMS_LOCAL_STATE      folder for the plugin's keys and the record of the control
#                            plane (default .state in the clone). When set, the control
#                            plane's own state folder is made inside it too (nothing is
#                            written to the clone's .state) and `down` needs
#                            --state-dir (printed at the end).
#   KUBEKMS_PLUGIN_BIN, KUBEKMS_OPERATOR_BIN, KUBEKMS_SERVER_BIN
#                            use these binaries instead of `cargo build`.
#   KUBEKMS_KMS_SOCKET / KUBEKMS_PLUGIN_CMD
#                            another KMS plugin instead (see hack/control-plane.sh --help):
#                            no hand-over then, but the operator and samples still run
#                            (with a root key of their own in $KUBEKMS_LOCAL_STATE/kubekms-operator).
#                            KUBEKMS_KMS_SOCKET alone must name a socket that a plugin
#                            serves already; the script stops at once if nothing does.
#   KUBEKMS_LOCAL_UP_TIMEOUT seconds to wait for each KubeKMS object (default 120).
# Arguments: --node (above); the others go to `hack/control-plane.sh up` (e.g. --watch-pid
# PID, --tools-bin DIR).
set -euo pipefail

# This script's etcdctl and kubectl talk to the control plane it starts or reuses (the env
# of that one is sourced below), not to what a user's shell exported for another one.
unset "${!ETCDCTL_@}" KUBECONFIG

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO_ROOT}"
log() { echo "[local-up] $(date -u +%T) $*" >&2; }
die() { echo "[local-up] error: $*" >&2; exit 1; }

node_mode=false
cp_extra=()
for arg in "$@"; do
  if [[ "${arg}" == --node ]]; then node_mode=true; else cp_extra+=("${arg}"); fi
done
if ${node_mode}; then
  [[ "$(id -u)" == 0 ]] ||
    die "--node needs root (containerd, the kubelet, network namespaces, iptables): run 'sudo hack/local-up.sh --node', or 'hack/local-up.sh' without --node (no root; every KubeKMS component then runs as a host process)"
  [[ -z "${KUBEKMS_KMS_SOCKET:-}${KUBEKMS_PLUGIN_CMD:-}" ]] ||
    die "--node runs the kubekms plugin as a static pod; KUBEKMS_KMS_SOCKET and KUBEKMS_PLUGIN_CMD are for 'hack/local-up.sh' without --node (unset them)"
fi

KEY_NS=kubekms-system
KEY_NAME=apiserver-key
DEMO_NS=kubekms-demo
WAIT_TIMEOUT="${KUBEKMS_LOCAL_UP_TIMEOUT:-120}"

if [[ -n "${KUBEKMS_LOCAL_STATE:-}" ]]; then
  custom_state=true
  mkdir -p "${KUBEKMS_LOCAL_STATE}"
  local_state="$(cd "${KUBEKMS_LOCAL_STATE}" && pwd)"
else
  custom_state=false
  local_state="${REPO_ROOT}/.state"
  mkdir -p "${local_state}"
fi
plugin_state="${local_state}/kubekms-plugin"
plugin_socket="${plugin_state}/kms.sock"
# The control plane this script started last; reused while it runs.
record="${local_state}/local-up-control-plane"

hack/install-deps.sh

target_dir="${CARGO_TARGET_DIR:-target}"
[[ "${target_dir}" == /* ]] || target_dir="${REPO_ROOT}/${target_dir}"
plugin_bin="${KUBEKMS_PLUGIN_BIN:-${target_dir}/debug/kubekms-plugin}"
operator_bin="${KUBEKMS_OPERATOR_BIN:-${target_dir}/debug/kubekms-operator}"
server_bin="${KUBEKMS_SERVER_BIN:-${target_dir}/debug/kubekms-server}"
# The packages in one build, as hack/test.sh and the e2e harness build them (one feature
# resolution, so they never rebuild each other's binaries).
build=()
[[ -n "${KUBEKMS_PLUGIN_BIN:-}" ]] || build+=(-p kubekms-plugin)
[[ -n "${KUBEKMS_OPERATOR_BIN:-}" ]] || build+=(-p kubekms-operator)
[[ -n "${KUBEKMS_SERVER_BIN:-}" ]] || build+=(-p kubekms-server)
if ((${#build[@]})); then
  log "building the kubekms plugin, operator and server (cargo build ${build[*]})"
  cargo build --quiet "${build[@]}"
fi
[[ -x "${plugin_bin}" ]] || die "${plugin_bin} is not an executable"
[[ -x "${operator_bin}" ]] || die "${operator_bin} is not an executable"
[[ -x "${server_bin}" ]] || die "${server_bin} is not an executable"
# The AWS CLI of the demo (a cached venv with the pinned AWS CLI and boto3).
aws_bin="$(hack/tools/python.sh --print-dir)/aws"

# free_port : a loopback port nothing listens on.
free_port() {
  local i p
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + RANDOM % 12000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/${p}") 2>/dev/null; then
      echo "${p}"
      return 0
    fi
  done
  die "found no free loopback port"
}

# ---------------------------------------------------------------- --node: images, host folders

# The image's user (hack/images.sh), which the manifests run as.
KUBEKMS_UID=65532
node_dir="${local_state}/kubekms-node"
node_plugin_state="${node_dir}/plugin-state"
node_plugin_run="${node_dir}/plugin-run"
node_static_pods="${node_dir}/static-pods"
images_dir="${target_dir}/images"

# node_images : pause and kubekms archives for the node, kubekms rebuilt when a binary is
# newer than it (the image carries target/debug's binaries, hack/images.sh --profile dev).
node_images() {
  local bin stale=false
  for bin in kubekms-plugin kubekms-operator kubekms-server; do
    if [[ ! -f "${images_dir}/kubekms.oci.tar" || "${target_dir}/debug/${bin}" -nt "${images_dir}/kubekms.oci.tar" ]]; then
      stale=true
    fi
  done
  for bin in KUBEKMS_PLUGIN_BIN KUBEKMS_OPERATOR_BIN KUBEKMS_SERVER_BIN; do
    if [[ -n "${!bin:-}" && "$(readlink -f "${!bin}")" != "$(readlink -f "${target_dir}/debug/${!bin##*/}")" ]]; then
      log "note: ${bin} is set, but the image carries ${target_dir}/debug's binaries"
    fi
  done
  if [[ ! -f "${images_dir}/pause.oci.tar" ]]; then
    log "building the pod sandbox image: hack/images.sh build --out ${images_dir} pause"
    hack/images.sh build --out "${images_dir}" pause >/dev/null
  fi
  if ${stale}; then
    log "building the image kubekms.local/kubekms:dev from ${target_dir}/debug: hack/images.sh build --out ${images_dir} kubekms"
    KUBEKMS_IMAGES_NO_CARGO=1 hack/images.sh build --out "${images_dir}" kubekms >/dev/null
  fi
}

# node_plugin_manifest : deploy/static-pod/kubekms-plugin.yaml as this node runs it: its
# follow mode uncommented (KmsKey kubekms-system/apiserver-key, a kubeconfig, NODE_NAME),
# the host folders in ${node_dir}, a free health port. The kubeconfig is written by
# control-plane.sh (--static-pods) from kubekms-plugin.client: a client certificate of the
# ServiceAccount kubekms-system/kubekms-plugin's user name, which deploy/rbac/plugin.yaml binds.
node_plugin_manifest() {
  local src=deploy/static-pod/kubekms-plugin.yaml out="${node_static_pods}/kubekms-plugin.yaml" port
  port="$(free_port)"
  sed -e "s|^        # - --follow=kube-system/apiserver-key$|        - --follow=${KEY_NS}/${KEY_NAME}|" \
    -e 's|^        # - --kubeconfig=/etc/kubernetes/kubekms-plugin.conf$|        - --kubeconfig=/etc/kubernetes/kubekms-plugin.conf|' \
    -e '/^      # env:$/,/^      #         fieldPath: spec.nodeName$/ s|^      # |      |' \
    -e '/^        # - name: kubeconfig$/,/^        #   readOnly: true$/ s|^        # |        |' \
    -e '/^    # - name: kubeconfig$/,/^    #     type: File$/ s|^    # |    |' \
    -e "s|^\( *\)path: /etc/kubernetes/kubekms-plugin.conf$|\1path: ${node_static_pods}/kubekms-plugin.kubeconfig|" \
    -e "s|^\( *\)path: /var/lib/kubekms$|\1path: ${node_plugin_state}|" \
    -e "s|^\( *\)path: /run/kubekms$|\1path: ${node_plugin_run}|" \
    -e "s|9464|${port}|g" "${src}" >"${out}.tmp"
  local want
  for want in "- --follow=${KEY_NS}/${KEY_NAME}" "- --kubeconfig=/etc/kubernetes/kubekms-plugin.conf" \
    "env:" "- name: NODE_NAME" "fieldPath: spec.nodeName" "mountPath: /etc/kubernetes/kubekms-plugin.conf" \
    "path: ${node_static_pods}/kubekms-plugin.kubeconfig" "path: ${node_plugin_state}" "path: ${node_plugin_run}"; do
    grep -v '^ *#' "${out}.tmp" | grep -F -- "${want}" >/dev/null ||
      die "${src} changed: could not turn on '${want}' in it (update node_plugin_manifest in $0)"
  done
  mv "${out}.tmp" "${out}"
  echo "/CN=system:serviceaccount:${KEY_NS}:kubekms-plugin" >"${node_static_pods}/kubekms-plugin.client"
  chown "${KUBEKMS_UID}:${KUBEKMS_UID}" "${node_static_pods}/kubekms-plugin.client"
}

# node_prepare : the plugin's state (kubekms-plugin init on first use) and socket folders,
# owned by the image's user as deploy/static-pod/kubekms-plugin.yaml's header says, and
# the static pod folder.
node_prepare() {
  mkdir -p "${node_plugin_state}" "${node_plugin_run}" "${node_static_pods}"
  if [[ ! -e "${node_plugin_state}/active-key.json" ]]; then
    log "making the bootstrap key: kubekms-plugin init --state-dir ${node_plugin_state}"
    "${plugin_bin}" init --state-dir "${node_plugin_state}" >&2
  fi
  chown -R "${KUBEKMS_UID}:${KUBEKMS_UID}" "${node_plugin_state}" "${node_plugin_run}"
  chmod 0700 "${node_plugin_state}" "${node_plugin_run}"
  # A socket left by the last run would look served to control-plane.sh at once.
  rm -f "${node_plugin_run}/kms.sock"
  node_plugin_manifest
}

# node_handover : kubekms-plugin export of the static pod's state, run by root on a copy
# that root owns, removed afterwards. The state belongs to the image's user and the store
# refuses a root key its process does not own; running export as that user instead needs
# every parent folder of the state and of the binary to be searchable by it, which a clone
# under /root (mode 0700) is not.
node_handover() {
  local copy rc=0
  copy="$(mktemp -d)"
  cp -a "${node_plugin_state}/." "${copy}/"
  chown -R 0:0 "${copy}"
  "${plugin_bin}" export --namespace "${KEY_NS}" --name "${KEY_NAME}" --state-dir "${copy}" |
    kubectl apply --server-side -f - >/dev/null || rc=$?
  rm -rf "${copy}"
  return "${rc}"
}

# ---------------------------------------------------------------- the control plane

# cp_running DIR : etcd and kube-apiserver of that state folder run (whatever else does).
cp_running() {
  local out
  out="$(hack/control-plane.sh status --state-dir "$1" 2>/dev/null || true)"
  grep -q '^etcd: running' <<<"${out}" && grep -q '^kube-apiserver: running' <<<"${out}"
}

reused=false
state=""
if [[ -L "${record}" ]] && cp_running "$(readlink -f "${record}")"; then
  state="$(readlink -f "${record}")"
  reused=true
  if grep -q '^KUBEKMS_NODE_NAME=' "${state}/env" 2>/dev/null; then running_node=true; else running_node=false; fi
  [[ "${running_node}" == "${node_mode}" ]] ||
    die "the control plane of the last run ($(if ${running_node}; then echo with; else echo without; fi) --node) still runs in ${state}; stop it first: hack/control-plane.sh down --state-dir ${state}"
  log "the control plane of the last run is still running (${state}); reusing it"
elif ${node_mode}; then
  node_images
  node_prepare
  cp_args=(--node --images "${images_dir}" --static-pods "${node_static_pods}" --kms-socket "${node_plugin_run}/kms.sock")
  if ${custom_state}; then
    cp_args+=(--state-dir "$(mktemp -d "${local_state}/control-plane.XXXXXX")")
  fi
  log "starting the control plane and the node (the plugin as a static pod before kube-apiserver)"
  state="$(hack/control-plane.sh up "${cp_args[@]}" "${cp_extra[@]}")"
  ln -sfn "${state}" "${record}"
else
  cp_args=()
  if [[ -n "${KUBEKMS_KMS_SOCKET:-}" && -z "${KUBEKMS_PLUGIN_CMD:-}" && ! -S "${KUBEKMS_KMS_SOCKET}" ]]; then
    die "KUBEKMS_KMS_SOCKET=${KUBEKMS_KMS_SOCKET} is set, KUBEKMS_PLUGIN_CMD is not, and nothing serves that socket. Unset KUBEKMS_KMS_SOCKET to use the kubekms plugin (it may be left over from an older 'eval \"\$(hack/control-plane.sh env)\"'), or start your plugin first"
  fi
  if [[ -z "${KUBEKMS_PLUGIN_CMD:-}" && -z "${KUBEKMS_KMS_SOCKET:-}" ]]; then
    if "${plugin_bin}" status --socket "${plugin_socket}" >/dev/null 2>&1; then
      die "a plugin already serves ${plugin_socket}, for a control plane this script does not know; stop it first (hack/control-plane.sh down [--state-dir DIR])"
    fi
    if [[ ! -e "${plugin_state}/active-key.json" ]]; then
      log "making the bootstrap key: kubekms-plugin init --state-dir ${plugin_state}"
      "${plugin_bin}" init --state-dir "${plugin_state}" >&2
    fi
    export KUBEKMS_KMS_SOCKET="${plugin_socket}"
    # Follow mode: serves from the folder at once (the API server starts after it), and
    # follows the KmsKey once it exists. A command line for `bash -c` in control-plane.sh,
    # which sets KUBECONFIG for it.
    # shellcheck disable=SC2016,SC2089
    KUBEKMS_PLUGIN_CMD="exec $(printf '%q ' "${plugin_bin}" serve --state-dir "${plugin_state}" \
      --socket "${plugin_socket}" --follow "${KEY_NS}/${KEY_NAME}")"'--kubeconfig "${KUBECONFIG}"'
    # shellcheck disable=SC2090
    export KUBEKMS_PLUGIN_CMD
  fi
  if ${custom_state}; then
    cp_args=(--state-dir "$(mktemp -d "${local_state}/control-plane.XXXXXX")")
  fi
  state="$(hack/control-plane.sh up "${cp_args[@]}" "${cp_extra[@]}")"
  ln -sfn "${state}" "${record}"
fi

# KUBECONFIG, ETCDCTL_ENDPOINTS and PATH for the kubectl and etcdctl calls below.
# shellcheck disable=SC1090
source <(hack/control-plane.sh env --state-dir "${state}")
# What the control plane was started with (when reused, not what this shell says).
cp_setting() { sed -n "s/^$1=//p" "${state}/env"; }
apiserver_url="$(cp_setting KUBEKMS_APISERVER_URL)"
etcd_endpoint="$(cp_setting KUBEKMS_ETCD_ENDPOINT)"
kms_socket="$(cp_setting KUBEKMS_KMS_SOCKET)"

# Our own plugin in follow mode: hand the bootstrap key over to the operator.
handover=false
if ${node_mode}; then
  plugin_state="${node_plugin_state}"
  plugin_socket="${node_plugin_run}/kms.sock"
fi
if [[ "${kms_socket}" == "${plugin_socket}" ]]; then
  handover=true
fi

# ---------------------------------------------------------------- KubeKMS on it

operator_log="${state}/logs/kubekms-operator.log"

# show_failure WHAT NAMESPACE OBJECT : print the object and the operator's log tail, exit 1.
show_failure() {
  echo "[local-up] error: $1" >&2
  echo "---- kubectl get -n $2 $3 -o yaml ----" >&2
  kubectl get -n "$2" "$3" -o yaml >&2 2>&1 || true
  if ${node_mode}; then
    echo "---- kubectl logs -n ${KEY_NS} deployment/kubekms-operator --tail 40 ----" >&2
    kubectl logs -n "${KEY_NS}" deployment/kubekms-operator --tail 40 >&2 2>&1 || true
  else
    echo "---- last 40 lines of ${operator_log} ----" >&2
    tail -n 40 "${operator_log}" >&2 2>/dev/null || echo "(no log)" >&2
  fi
  echo "---- end ----" >&2
  echo "[local-up] the control plane is left running for a look: hack/control-plane.sh status --state-dir ${state}; stop it with hack/control-plane.sh down --state-dir ${state}" >&2
  exit 1
}

# wait_obj CONDITION NAMESPACE OBJECT... : kubectl wait, or show_failure.
wait_obj() {
  local cond="$1" ns="$2"
  shift 2
  local obj
  for obj in "$@"; do
    if ! kubectl wait "--for=${cond}" -n "${ns}" "${obj}" --timeout="${WAIT_TIMEOUT}s" >/dev/null; then
      show_failure "${ns}/${obj} did not reach ${cond} within ${WAIT_TIMEOUT}s" "${ns}" "${obj}"
    fi
  done
}

log "CRDs (crds/)"
kubectl apply --server-side --force-conflicts -f crds/ >/dev/null
kubectl wait --for=condition=Established --timeout=60s \
  crd/kmskeys.kubekms.io crd/kmskeymaterials.kubekms.io crd/kmsaliases.kubekms.io crd/kmsgrants.kubekms.io >/dev/null
kubectl get namespace "${KEY_NS}" >/dev/null 2>&1 || kubectl create namespace "${KEY_NS}" >/dev/null

if ${handover}; then
  if kubectl get kmskey "${KEY_NAME}" -n "${KEY_NS}" >/dev/null 2>&1; then
    log "KmsKey ${KEY_NS}/${KEY_NAME} exists already"
  else
    log "handing the bootstrap key over: kubekms-plugin export --namespace ${KEY_NS} --name ${KEY_NAME} | kubectl apply --server-side -f -"
    if ${node_mode}; then
      node_handover
    else
      "${plugin_bin}" export --namespace "${KEY_NS}" --name "${KEY_NAME}" --state-dir "${plugin_state}" |
        kubectl apply --server-side -f - >/dev/null
    fi
  fi
  root_key="${plugin_state}/root.key"
  root_key_args=(--root-key "${root_key}")
else
  # Another plugin: the operator gets a root key of its own.
  root_key="${local_state}/kubekms-operator/root.key"
  mkdir -p "$(dirname "${root_key}")"
  root_key_args=(--root-key "${root_key}" --init-root-key)
fi

log "admission policies (deploy/admission/: served keys protected, only the operator writes KmsKeyMaterial)"
kubectl apply --server-side --force-conflicts -f deploy/admission/ >/dev/null

if ${node_mode}; then
  log "RBAC of the plugin, the operator and the server (deploy/rbac/)"
  kubectl apply --server-side --force-conflicts -f deploy/rbac/ >/dev/null
else
  log "RBAC of the operator and the server (deploy/rbac/operator.yaml, deploy/rbac/server.yaml)"
  kubectl apply --server-side --force-conflicts -f deploy/rbac/operator.yaml -f deploy/rbac/server.yaml >/dev/null
fi

# sa_kubeconfig NAMESPACE NAME FILE : a kubeconfig for this API server that authenticates
# as that ServiceAccount (a TokenRequest token valid for a year), so a process runs with
# exactly its RBAC.
sa_kubeconfig() {
  local token server ca
  token="$(kubectl create token "$2" -n "$1" --duration=8760h)"
  server="$(kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.server}')"
  ca="$(kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')"
  (
    umask 077
    cat >"$3" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: kubekms-local
  cluster:
    server: ${server}
    certificate-authority-data: ${ca}
users:
- name: $1/$2
  user:
    token: ${token}
contexts:
- name: $1/$2
  context: {cluster: kubekms-local, user: $1/$2}
current-context: $1/$2
YAML
  )
}

# http_status HOST:PORT PATH : the status code of a plain HTTP GET (empty if none).
http_status() {
  local line
  line="$(
    exec 3<>"/dev/tcp/${1%:*}/${1##*:}" 2>/dev/null || exit 0
    printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$2" "$1" >&3
    timeout 5 head -n 1 <&3
  )" || true
  awk '{ print $2 }' <<<"${line}"
}

# proc_running NAME : that process of the control plane runs. (The status is read whole
# first: `grep -q` on the pipe would close it early, and pipefail turn SIGPIPE into "no".)
proc_running() {
  local status
  status="$(hack/control-plane.sh status --state-dir "${state}" 2>/dev/null || true)"
  grep -q "^$1: running" <<<"${status}"
}

# proc_flag NAME FLAG : the value of FLAG in the command line of a running process.
proc_flag() {
  tr '\0' '\n' <"/proc/$(cut -d' ' -f1 "${state}/pids/$1.pid")/cmdline" 2>/dev/null | sed -n "/^$2\$/{n;p;q}"
}

# deploy_manifest FILE : a Deployment file of deploy/ with the root key's hostPath on this host.
deploy_manifest() {
  grep -q '^ *path: /var/lib/kubekms/root.key$' "$1" || die "$1 no longer mounts /var/lib/kubekms/root.key (update $0)"
  sed "s|^\( *\)path: /var/lib/kubekms/root.key$|\1path: ${root_key}|" "$1"
}

# rollout DEPLOYMENT : every replica of it Ready, or show_failure.
rollout() {
  kubectl rollout status "deployment/$1" -n "${KEY_NS}" --timeout="${WAIT_TIMEOUT}s" >/dev/null ||
    show_failure "deployment ${KEY_NS}/$1 did not become Ready within ${WAIT_TIMEOUT}s (pods: kubectl get pods -n ${KEY_NS} -o wide; kubectl logs -n ${KEY_NS} deployment/$1)" "${KEY_NS}" "deployment/$1"
}

if ${node_mode}; then
  server_dir="${state}/kubekms-server"
  mkdir -p "${server_dir}"
  log "the operator and kubekms-server as the Deployments of deploy/operator/ and deploy/server/ (root key: hostPath ${root_key})"
  deploy_manifest deploy/operator/deployment.yaml | kubectl apply --server-side --force-conflicts -f - >/dev/null
  deploy_manifest deploy/server/deployment.yaml | kubectl apply --server-side --force-conflicts -f - >/dev/null
  cluster_ip="$(kubectl get service kubekms-server -n "${KEY_NS}" -o jsonpath='{.spec.clusterIP}')"
  [[ -n "${cluster_ip}" ]] || die "the Service ${KEY_NS}/kubekms-server has no ClusterIP"
  if ! kubectl get secret kubekms-server-tls -n "${KEY_NS}" >/dev/null 2>&1; then
    log "the Secret ${KEY_NS}/kubekms-server-tls: a certificate of kubekms-server.${KEY_NS}.svc and ${cluster_ip} signed by ${state}/pki/ca.crt (what cert-manager would issue)"
    (
      cd "${server_dir}"
      umask 077
      printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=serverAuth" \
        "subjectAltName=DNS:kubekms-server.${KEY_NS}.svc,DNS:kubekms-server.${KEY_NS}.svc.cluster.local,IP:${cluster_ip}" >tls.ext
      openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout tls.key -out tls.csr -subj "/CN=kubekms-server.${KEY_NS}.svc" 2>/dev/null
      openssl x509 -req -in tls.csr -CA "${state}/pki/ca.crt" -CAkey "${state}/pki/ca.key" \
        -CAcreateserial -CAserial "${server_dir}/ca.srl" -out tls.crt -days 365 -extfile tls.ext 2>/dev/null
      rm -f tls.csr tls.ext
    ) || die "making the certificate of kubekms-server with openssl failed in ${server_dir}"
    kubectl create secret tls kubekms-server-tls -n "${KEY_NS}" --cert "${server_dir}/tls.crt" \
      --key "${server_dir}/tls.key" >/dev/null
  fi

  log "samples (deploy/samples/): KmsKey app-key, KmsAlias alias/app, KmsGrant app and Role app-key-user in ${DEMO_NS}"
  kubectl apply --server-side -f deploy/samples/ >/dev/null

  log "waiting for the operator's pods and keys (at most ${WAIT_TIMEOUT}s each)"
  rollout kubekms-operator
  if ${handover}; then
    wait_obj 'jsonpath={.status.keyState}=Enabled' "${KEY_NS}" "kmskey/${KEY_NAME}"
  fi
  wait_obj 'jsonpath={.status.keyState}=Enabled' "${DEMO_NS}" kmskey/app-key
  wait_obj condition=Ready "${DEMO_NS}" kmsalias/app kmsgrant/app
  log "waiting for kubekms-server's pods"
  rollout kubekms-server
  server_port="$(kubectl get service kubekms-server -n "${KEY_NS}" -o jsonpath='{.spec.ports[0].port}')"
  server_url="https://${cluster_ip}:${server_port}"
  # The Service answers from the host (kube-proxy has its endpoints) before the AWS CLI,
  # whose connections would otherwise wait out its 60 s connect timeout.
  for ((i = 0; ; i++)); do
    if curl -s -o /dev/null --connect-timeout 2 --max-time 5 --cacert "${state}/pki/ca.crt" "${server_url}/"; then
      break
    fi
    ((i < WAIT_TIMEOUT / 2)) || die "kubekms-server's Service ${server_url} does not answer from this host after ${WAIT_TIMEOUT}s (kube-proxy: ${state}/logs/kube-proxy.log)"
    sleep 1
  done
  server_health="(pods) kubectl get pods -n ${KEY_NS} -l app.kubernetes.io/name=kubekms-server"
  server_log="(pods) kubectl logs -n ${KEY_NS} deployment/kubekms-server"
  operator_log="(pods) kubectl logs -n ${KEY_NS} deployment/kubekms-operator"
  operator_metrics=""
else
  operator_pid_file="${state}/pids/kubekms-operator.pid"
  if proc_running kubekms-operator; then
    log "the operator is running already (pid $(cut -d' ' -f1 "${operator_pid_file}"))"
  else
    operator_kubeconfig="${state}/kubekms-operator.kubeconfig"
    sa_kubeconfig "${KEY_NS}" kubekms-operator "${operator_kubeconfig}"
    # `env` sets the ServiceAccount's kubeconfig over the admin one start-process gives.
    hack/control-plane.sh start-process kubekms-operator --state-dir "${state}" -- \
      env KUBECONFIG="${operator_kubeconfig}" "${operator_bin}" "${root_key_args[@]}" \
      --lease-namespace "${KEY_NS}" --metrics-addr "127.0.0.1:$(free_port)" --log-format text
  fi
  # The address of /metrics, from the running operator's command line.
  operator_metrics="$(proc_flag kubekms-operator --metrics-addr)" || true

  log "samples (deploy/samples/): KmsKey app-key, KmsAlias alias/app, KmsGrant app and Role app-key-user in ${DEMO_NS}"
  kubectl apply --server-side -f deploy/samples/ >/dev/null

  log "waiting for the operator (at most ${WAIT_TIMEOUT}s each)"
  if ${handover}; then
    wait_obj 'jsonpath={.status.keyState}=Enabled' "${KEY_NS}" "kmskey/${KEY_NAME}"
  fi
  wait_obj 'jsonpath={.status.keyState}=Enabled' "${DEMO_NS}" kmskey/app-key
  wait_obj condition=Ready "${DEMO_NS}" kmsalias/app kmsgrant/app

  # ---------------------------------------------------------------- kubekms-server

  server_dir="${state}/kubekms-server"
  server_log="${state}/logs/kubekms-server.log"
  mkdir -p "${server_dir}"
  if [[ ! -s "${server_dir}/tls.crt" ]]; then
    log "a serving certificate for kubekms-server (IP 127.0.0.1, DNS localhost) signed by ${state}/pki/ca.crt"
    (
      cd "${server_dir}"
      umask 077
      printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1,DNS:localhost" >tls.ext
      openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout tls.key -out tls.csr -subj "/CN=kubekms-server" 2>/dev/null
      openssl x509 -req -in tls.csr -CA "${state}/pki/ca.crt" -CAkey "${state}/pki/ca.key" \
        -CAcreateserial -out tls.crt -days 365 -extfile tls.ext 2>/dev/null
      rm -f tls.csr tls.ext
    ) || die "making the certificate of kubekms-server with openssl failed in ${server_dir}"
  fi
  if proc_running kubekms-server; then
    log "kubekms-server is running already (pid $(cut -d' ' -f1 "${state}/pids/kubekms-server.pid"))"
  else
    sa_kubeconfig "${KEY_NS}" kubekms-server "${server_dir}/kubeconfig"
    hack/control-plane.sh start-process kubekms-server --state-dir "${state}" -- "${server_bin}" \
      --root-key "${root_key}" --kubeconfig "${server_dir}/kubeconfig" \
      --listen "127.0.0.1:$(free_port)" --health-addr "127.0.0.1:$(free_port)" \
      --tls-cert "${server_dir}/tls.crt" --tls-key "${server_dir}/tls.key" \
      --audit-log "${server_dir}/audit.log" --log-format text
  fi
  server_listen="$(proc_flag kubekms-server --listen)"
  server_health="$(proc_flag kubekms-server --health-addr)"
  [[ -n "${server_listen}" && -n "${server_health}" ]] || die "kubekms-server does not run; see ${server_log}"
  for ((i = 0; ; i++)); do
    if [[ "$(http_status "${server_health}" /readyz)" == 200 ]]; then
      break
    fi
    if ((i > WAIT_TIMEOUT * 5)); then
      tail -n 40 "${server_log}" >&2 || true
      die "kubekms-server is not ready (http://${server_health}/readyz) after ${WAIT_TIMEOUT}s; log: ${server_log}"
    fi
    sleep 0.2
  done
  server_url="https://${server_listen}"
fi

# The ServiceAccount kubekms-demo/app through the AWS CLI's own web-identity flow: a
# token for the server's audience, exchanged at the server's STS (AWS_ENDPOINT_URL_STS,
# which botocore's web-identity provider honours) for session credentials.
app_token="${server_dir}/app.token"
(umask 077 && kubectl create token app -n "${DEMO_NS}" --audience kubekms --duration=24h >"${app_token}")
demo_account="$(kubectl get kmskey app-key -n "${DEMO_NS}" -o jsonpath='{.status.accountId}')"
aws_env="${server_dir}/aws-env.sh"
cat >"${aws_env}" <<ENV
# The AWS CLI and SDKs as the ServiceAccount ${DEMO_NS}/app, through kubekms-server
# (written by hack/local-up.sh; source it: . ${aws_env}).
unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_PROFILE
export AWS_WEB_IDENTITY_TOKEN_FILE=${app_token}
export AWS_ROLE_ARN=arn:aws:iam::${demo_account}:role/kubekms
# A session name per control plane: the AWS CLI caches sessions in ~/.aws/cli/cache by it.
export AWS_ROLE_SESSION_NAME=local-up-$(basename "${state}")
export AWS_ENDPOINT_URL_KMS=${server_url}
export AWS_ENDPOINT_URL_STS=${server_url}
export AWS_REGION=local AWS_DEFAULT_REGION=local
export AWS_CA_BUNDLE=${state}/pki/ca.crt
ENV
encrypt_cmd="aws kms encrypt --key-id alias/app --plaintext 'hello from kubekms-demo/app' --output text --query CiphertextBlob | base64 -d > /tmp/kubekms-demo.bin"
decrypt_cmd="aws kms decrypt --ciphertext-blob fileb:///tmp/kubekms-demo.bin --output text --query Plaintext | base64 -d; echo"
log "aws kms encrypt and decrypt as ${DEMO_NS}/app (${aws_bin})"
# Run once here to prove it, with a HOME of its own (the CLI caches sessions there).
demo_home="${server_dir}/aws-home"
mkdir -p "${demo_home}"
demo_blob="${server_dir}/demo.bin"
demo_out="$(
  # shellcheck disable=SC1090
  . "${aws_env}"
  export HOME="${demo_home}"
  "${aws_bin}" kms encrypt --key-id alias/app --plaintext 'hello from kubekms-demo/app' \
    --output text --query CiphertextBlob | base64 -d >"${demo_blob}"
  "${aws_bin}" kms decrypt --ciphertext-blob "fileb://${demo_blob}" --output text --query Plaintext | base64 -d
)" || {
  if ${node_mode}; then
    kubectl logs -n "${KEY_NS}" deployment/kubekms-server --tail 20 >&2 || true
  else
    tail -n 20 "${server_log}" >&2 || true
  fi
  die "aws kms encrypt/decrypt as ${DEMO_NS}/app through ${server_url} failed; server log ${server_log}"
}
[[ "${demo_out}" == "hello from kubekms-demo/app" ]] || die "aws kms decrypt returned '${demo_out}'"

# ---------------------------------------------------------------- the demo Secret

kms_note="Secrets are encrypted by the KMS v2 plugin on ${kms_socket:-?}: etcd shows 'k8s:enc:kms:v2:kubekms:', then kube-apiserver's EncryptedObject (the plugin's key_id in clear, no plaintext)."
demo_note=""
key_note=""
if [[ -n "${kms_socket}" ]]; then
  kubectl create secret generic kubekms-demo --from-literal=password=s3cr3t >/dev/null 2>&1 || true
  stored_file="$(mktemp)"
  etcdctl get /registry/secrets/default/kubekms-demo --print-value-only >"${stored_file}"
  stored="$(hexdump -C "${stored_file}" | head -n 8)"
  if grep -q s3cr3t "${stored_file}"; then
    leak="WARNING: the plaintext s3cr3t IS visible in etcd"
  else
    leak="the plaintext s3cr3t does not appear in etcd"
  fi
  if ${handover}; then
    key_id="$(kubectl get kmskey "${KEY_NAME}" -n "${KEY_NS}" -o jsonpath='{.status.keyId}')"
    key_arn="$(kubectl get kmskey "${KEY_NAME}" -n "${KEY_NS}" -o jsonpath='{.status.arn}' 2>/dev/null || true)"
    stored_key_id="$(grep -a -o -E "${key_id}/v[0-9]+" "${stored_file}" | head -n 1 || true)"
    if [[ -n "${key_id}" && -n "${stored_key_id}" ]]; then
      key_note="Stored under key_id ${stored_key_id}: version ${stored_key_id##*/v} of the operator-managed KmsKey ${KEY_NS}/${KEY_NAME} (status.keyId ${key_id}${key_arn:+, ${key_arn}})."
    else
      key_note="WARNING: the stored value does not name the KmsKey ${KEY_NS}/${KEY_NAME} (status.keyId '${key_id}'); see ${state}/logs/kms-plugin.log"
    fi
  fi
  rm -f "${stored_file}"
  demo_note="
The Secret default/kubekms-demo (password=s3cr3t) as etcd stores it (${leak}):

${stored}
${key_note}
"
fi

plugin_note=""
if ${handover}; then
  plugin_log="${state}/logs/kms-plugin.log"
  if ${node_mode}; then plugin_log="kubectl logs -n kube-system kubekms-plugin-kubekms-node; static pod ${state}/manifests/kubekms-plugin.yaml"; fi
  plugin_note="
The plugin follows KmsKey ${KEY_NS}/${KEY_NAME} (log: ${plugin_log}, its keys in ${plugin_state}):

$("${plugin_bin}" status --socket "${plugin_socket}" 2>&1 | sed 's/^/  /')
"
fi

# How to call control-plane.sh for this control plane from another shell.
cp_cmd="hack/control-plane.sh"
cp_dir_arg=""
if ${custom_state} || [[ "$(readlink -f "${REPO_ROOT}/.state/control-plane" 2>/dev/null)" != "${state}" ]]; then
  cp_dir_arg=" --state-dir ${state}"
fi

if ${handover}; then
  rotate_note="Rotate the key kube-apiserver encrypts with, on demand (the operator stages a version, the
plugin loads it within a second, the operator makes it current once every plugin holds it,
kube-apiserver writes under the new key_id within a minute, then the operator re-encrypts
every Secret under it; see docs/operator.md):

  kubectl patch kmskey ${KEY_NAME} -n ${KEY_NS} --type=merge -p '{\"spec\":{\"rotation\":{\"onDemandToken\":\"'\$(date +%s)'\"}}}'
  kubectl get kmskey ${KEY_NAME} -n ${KEY_NS} -o jsonpath='{.status.reencryption}'; echo   # WaitingForPlugins, Rewriting, Done
"
else
  rotate_note="Rotate the sample key on demand (the Secrets' key belongs to the plugin given in KUBEKMS_KMS_SOCKET):

  kubectl patch kmskey app-key -n ${DEMO_NS} --type=merge -p '{\"spec\":{\"rotation\":{\"onDemandToken\":\"'\$(date +%s)'\"}}}'
"
fi

kept_note="the keys stay in ${plugin_state}"
if ${node_mode}; then kept_note="and the node with its pods, network namespaces, mounts and iptables chains; ${kept_note}"; fi
if ! ${handover}; then kept_note="the operator's root key stays in ${root_key}"; fi

reuse_note=""
if ${reused}; then reuse_note=", reusing the control plane that was running"; fi

if ${node_mode}; then
  components="  node             kubekms-node (containerd, kubelet, kube-proxy, kube-controller-manager,
                   kube-scheduler; logs in ${state}/logs, containers' in ${state}/pod-logs)
  kubekms-plugin   static pod kube-system/kubekms-plugin-kubekms-node (deploy/static-pod/kubekms-plugin.yaml)
  kubekms-operator Deployment ${KEY_NS}/kubekms-operator (deploy/operator/)   log: kubectl logs -n ${KEY_NS} deployment/kubekms-operator
  kubekms-server   Deployment ${KEY_NS}/kubekms-server (deploy/server/), Service ${server_url} (AWS KMS and STS API)
                   log: kubectl logs -n ${KEY_NS} deployment/kubekms-server
  kubectl get pods -A -o wide"
else
  components="  kubekms-operator /metrics on ${operator_metrics:-?}   log: ${operator_log}
  kubekms-server   ${server_url} (AWS KMS and STS API)   /metrics, /readyz on ${server_health}
                   log: ${server_log}   audit: ${server_dir}/audit.log"
fi

cat <<MSG

KubeKMS is up${reuse_note} (state, certificates and logs in ${state}).
  kube-apiserver   ${apiserver_url}   log: ${state}/logs/kube-apiserver.log
  etcd             ${etcd_endpoint}   log: ${state}/logs/etcd.log
${components}
${plugin_note}${demo_note}
The AWS KMS API as the ServiceAccount ${DEMO_NS}/app (its Role lets it encrypt, decrypt and
generatedatakey on app-key and nothing else; see deploy/samples/40-role-app.yaml). Ran once
just now, and it printed: ${demo_out}

  . ${aws_env}       # AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_ARN, AWS_ENDPOINT_URL_KMS/_STS, AWS_CA_BUNDLE, ...
  export PATH="$(dirname "${aws_bin}"):\$PATH"
  ${encrypt_cmd}
  ${decrypt_cmd}
  aws kms describe-key --key-id alias/app    # AccessDeniedException: the Role does not allow describekey

Use it from your shell:

  eval "\$(${cp_cmd} env${cp_dir_arg})"     # sets KUBECONFIG, ETCDCTL_ENDPOINTS, PATH to the built kubectl/etcdctl
  # or: export KUBECONFIG=${KUBECONFIG}

  kubectl get kmskeys -A                      # keys, their ids, states and next rotations
  kubectl get kmsaliases,kmsgrants -n ${DEMO_NS}
  kubectl create secret generic demo --from-literal=password=s3cr3t
  etcdctl get /registry/secrets/default/demo --print-value-only | hexdump -C | head

${kms_note}

${rotate_note}
Stop it (stops the server, the operator, the plugin, kube-apiserver and etcd; ${kept_note}):

  ${cp_cmd} down${cp_dir_arg}
MSG
