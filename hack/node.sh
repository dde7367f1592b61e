# shellcheck shell=bash
# A node beside the local control plane: containerd, kubelet, kube-proxy, a CNI bridge, and
# kube-controller-manager + kube-scheduler, all in the control plane's state folder.
#
# Sourced by hack/control-plane.sh (`up --node`), never run on its own: it uses that
# script's STATE, TOOLS_BIN, APISERVER_PORT, start_proc, stop_proc, alive, wait_for,
# fail_proc, pick_port and log. See docs/node.md.
#
# Layout under the state folder:
#   node/            configs (containerd.toml, kubelet.yaml, kube-proxy.yaml, kubeconfigs)
#   node/pki/        client certificates signed by the launcher's CA (pki/ca.key)
#   containerd/      containerd's root, state, socket and runc root
#   kubelet/         the kubelet's root dir (pod volumes are mounted under it)
#   pod-logs/        container logs (the kubelet's podLogsDir)
#   manifests/       the kubelet's staticPodPath
#   cni/             CNI config (net.d/) and host-local IP allocations
#   logs/{containerd,kubelet,kube-proxy,kube-controller-manager,kube-scheduler}.log
#
# One node per host: kube-proxy's iptables chains and the kubelet's cgroups are host-wide,
# so a second node would fight the first. /run/kubekms-node.owner names the state folder of
# the node that runs.

NODE_NAME="kubekms-node"
NODE_POD_CIDR="10.244.0.0/24"
NODE_BRIDGE="kubekms0"
NODE_OWNER="/run/kubekms-node.owner"
# How long `up --node` waits for another node that is stopping to be gone.
NODE_OWNER_WAIT=90
NODE_CNI_BIN="${KUBEKMS_CNI_BIN:-/usr/lib/cni}"
# Image references are kubekms.local/NAME:dev (hack/images.sh); the pause image is the
# pod sandbox.
NODE_IMAGE_REPO="kubekms.local"
NODE_PAUSE_IMAGE="${NODE_IMAGE_REPO}/pause:dev"
# The node's processes, for `status`.
# shellcheck disable=SC2034 # used by hack/control-plane.sh
NODE_PROCS=(kube-scheduler kube-controller-manager kubelet kube-proxy containerd)

is_node_proc() {
  case "$1" in
    containerd | kubelet | kube-proxy | kube-controller-manager | kube-scheduler) return 0 ;;
    *) return 1 ;;
  esac
}

node_ctr() {
  timeout 30 ctr --address "${STATE}/containerd/containerd.sock" --namespace k8s.io "$@"
}

node_kubectl() {
  # shellcheck disable=SC2153 # set by hack/control-plane.sh
  "${TOOLS_BIN}/kubectl" --kubeconfig "${STATE}/kubeconfig" --request-timeout 5s "$@"
}

node_check_prereqs() {
  [[ "$(id -u)" == 0 ]] || die "--node needs root (containerd, network namespaces, iptables)"
  local b
  for b in kubelet kube-proxy kube-controller-manager kube-scheduler; do
    [[ -x "${TOOLS_BIN}/${b}" ]] || die "${TOOLS_BIN}/${b} is missing; run hack/tools/build.sh"
  done
  for b in containerd containerd-shim-runc-v2 runc ctr iptables conntrack ip; do
    command -v "${b}" >/dev/null || die "--node: ${b} is not installed (run hack/install-deps.sh)"
  done
  for b in bridge host-local loopback; do
    [[ -x "${NODE_CNI_BIN}/${b}" ]] || die "--node: CNI plugin ${NODE_CNI_BIN}/${b} is missing (containernetworking-plugins; run hack/install-deps.sh)"
  done
  [[ -f "${NODE_IMAGES}/pause.oci.tar" ]] ||
    die "--node: ${NODE_IMAGES}/pause.oci.tar is missing (the pod sandbox image); build it with: hack/images.sh build --out ${NODE_IMAGES} pause busybox"
  if [[ -f "${NODE_OWNER}" ]]; then
    local other waited=0
    other="$(cat "${NODE_OWNER}")"
    # A node on its way down (say, the one of the test process that just exited, whose
    # watchdog runs `down`) is gone within about 20 s: wait for it rather than fail.
    while [[ "${other}" != "${STATE}" ]] && node_running_in "${other}" &&
      node_stopping "${other}" && ((waited < NODE_OWNER_WAIT)); do
      ((waited > 0)) || log "the node of ${other} is stopping; waiting up to ${NODE_OWNER_WAIT}s for it"
      sleep 1
      waited=$((waited + 1))
    done
    if [[ "${other}" != "${STATE}" ]] && node_running_in "${other}"; then
      die "a node already runs on this host (state folder ${other}); stop it first: $0 down --state-dir ${other}"
    fi
  fi
}

# node_running_in DIR : containerd or the kubelet of the state folder DIR runs.
node_running_in() {
  [[ -d "$1/pids" ]] && { node_alive_in "$1" containerd || node_alive_in "$1" kubelet; }
}

# node_stopping DIR : the control plane of DIR is being stopped: its `down` runs, or its
# watchdog's watched process has exited (the watchdog runs `down` within a second).
node_stopping() {
  local dir="$1" pid st watched
  pgrep -f -- "control-plane.sh down --state-dir ${dir}( |$)" >/dev/null && return 0
  node_alive_in "${dir}" watchdog || return 1
  read -r pid st <"${dir}/pids/watchdog.pid" || return 1
  # The watchdog's command line: bash -c SCRIPT watchdog WATCHED_PID CONTROL_PLANE STATE.
  watched="$(tr '\0' '\n' <"/proc/${pid}/cmdline" 2>/dev/null | sed -n 5p)"
  [[ "${watched}" =~ ^[0-9]+$ ]] && ! kill -0 "${watched}" 2>/dev/null
}

# node_alive_in DIR NAME : `alive NAME` for the state folder DIR.
node_alive_in() {
  local f="$1/pids/$2.pid" pid st
  [[ -f "${f}" ]] || return 1
  read -r pid st <"${f}" || return 1
  [[ "$(proc_starttime "${pid}" 2>/dev/null)" == "${st}" ]]
}

node_sign() { # node_sign NAME SUBJECT EXTENSIONS
  local pki="${STATE}/node/pki"
  (
    cd "${pki}"
    umask 077
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
    printf '%s\n' "$3" >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA "${STATE}/pki/ca.crt" -CAkey "${STATE}/pki/ca.key" \
      -CAcreateserial -CAserial "${pki}/ca.srl" -out "$1.crt" -days 3650 -extfile "$1.ext" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
  ) || die "signing the ${1} certificate with openssl failed"
}

node_client_cert() { # node_client_cert NAME SUBJECT
  node_sign "$1" "$2" "$(printf '%s\n' "basicConstraints=CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=clientAuth")"
}

node_kubeconfig() { # node_kubeconfig NAME : node/NAME.kubeconfig with node/pki/NAME.{crt,key}
  local pki="${STATE}/node/pki"
  cat >"${STATE}/node/$1.kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: kubekms-local
  cluster:
    server: https://127.0.0.1:${APISERVER_PORT}
    certificate-authority: ${STATE}/pki/ca.crt
users:
- name: $1
  user:
    client-certificate: ${pki}/$1.crt
    client-key: ${pki}/$1.key
contexts:
- name: kubekms-local
  context: {cluster: kubekms-local, user: $1}
current-context: kubekms-local
YAML
  chmod 600 "${STATE}/node/$1.kubeconfig"
}

node_write_config() {
  local n="${STATE}/node" c="${STATE}/containerd"
  mkdir -p "${n}/pki" "${c}" "${STATE}/kubelet" "${STATE}/manifests" "${STATE}/pod-logs" "${STATE}/cni/net.d" "${STATE}/cni/ipam"
  node_client_cert kubelet "/O=system:nodes/CN=system:node:${NODE_NAME}"
  node_sign kubelet-serving "/CN=${NODE_NAME}" "$(printf '%s\n' "basicConstraints=CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" \
    "subjectAltName=IP:${NODE_IP},IP:127.0.0.1,DNS:${NODE_NAME}")"
  node_client_cert kube-proxy "/CN=system:kube-proxy"
  node_client_cert kube-controller-manager "/CN=system:kube-controller-manager"
  node_client_cert kube-scheduler "/CN=system:kube-scheduler"
  local k
  for k in kubelet kube-proxy kube-controller-manager kube-scheduler; do node_kubeconfig "${k}"; done

  # No ipMasq and no portmap: neither adds iptables rules, so nothing outlives the node.
  cat >"${STATE}/cni/net.d/10-kubekms.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "kubekms",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "${NODE_BRIDGE}",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "${STATE}/cni/ipam",
        "ranges": [[{"subnet": "${NODE_POD_CIDR}"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
JSON

  # restrict_oom_score_adj: the host lacks CAP_SYS_RESOURCE (RunPodSandbox fails with
  # "can't get final child's PID from pipe: EOF" without it). The runc root is in the
  # state folder so `down` finds every container even when containerd is gone.
  cat >"${n}/containerd.toml" <<TOML
version = 2
root = "${c}/root"
state = "${c}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri.v1alpha2", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "${c}/containerd.sock"
[ttrpc]
  address = "${c}/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "${NODE_PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "${c}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "${NODE_CNI_BIN}"
    conf_dir = "${STATE}/cni/net.d"
TOML

  cat >"${n}/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# The host has cgroup v1 (no systemd): kubelet 1.35 refuses it unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://${c}/containerd.sock
staticPodPath: ${STATE}/manifests
podLogsDir: ${STATE}/pod-logs
fileCheckFrequency: 5s
# The node's address: the kubelet refuses a loopback node IP, and kube-apiserver reaches
# the kubelet (logs, exec) at the node's InternalIP. Clients must authenticate.
address: ${NODE_IP}
port: ${KUBELET_PORT}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: ${KUBELET_HEALTHZ_PORT}
tlsCertFile: ${n}/pki/kubelet-serving.crt
tlsPrivateKeyFile: ${n}/pki/kubelet-serving.key
rotateCertificates: false
serverTLSBootstrap: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: ${STATE}/pki/ca.crt}
authorization:
  mode: Webhook
clusterDomain: cluster.local
failSwapOn: false
podCIDR: ${NODE_POD_CIDR}
# A shared development machine: evict on nothing but a nearly full disk or memory.
evictionHard:
  memory.available: "50Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
YAML

  cat >"${n}/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection:
  kubeconfig: ${n}/kube-proxy.kubeconfig
hostnameOverride: ${NODE_NAME}
clusterCIDR: ${NODE_POD_CIDR}
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:${PROXY_HEALTHZ_PORT}
metricsBindAddress: 127.0.0.1:${PROXY_METRICS_PORT}
# Leave the host's conntrack table sizes alone.
conntrack:
  maxPerCore: 0
  min: 0
YAML
}

# node_import FILE... : import OCI archives (NAME.oci.tar, tag dev) as kubekms.local/NAME:dev.
node_import() {
  local f name
  for f in "$@"; do
    name="$(basename "${f}" .oci.tar)"
    node_ctr images import --base-name "${NODE_IMAGE_REPO}/${name}" "${f}" \
      >>"${STATE}/logs/image-import.log" 2>&1 ||
      die "importing ${f} into the node's containerd failed; see ${STATE}/logs/image-import.log"
    # grep reads everything: with -q it could exit first and fail the pipe (pipefail).
    node_ctr images ls -q | grep -x "${NODE_IMAGE_REPO}/${name}:dev" >/dev/null ||
      die "${f} was imported but ${NODE_IMAGE_REPO}/${name}:dev is not in containerd (its index.json must tag the image 'dev'); see ${STATE}/logs/image-import.log"
    log "imported ${NODE_IMAGE_REPO}/${name}:dev from ${f}"
  done
}

node_ready_status() {
  [[ "$(node_kubectl get node "${NODE_NAME}" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

# node_wait NAME CHECK... : like wait_for, but any node process that dies fails the start
# (naming it), not only NAME.
node_wait() {
  local name="$1"
  shift
  local deadline=$((SECONDS + TIMEOUT)) p
  while ! "$@" >/dev/null 2>&1; do
    for p in containerd kubelet kube-proxy kube-controller-manager kube-scheduler; do
      [[ ! -f "${STATE}/pids/${p}.pid" ]] || alive "${p}" || fail_proc "${p}" "exited while the node was starting"
    done
    if ((SECONDS >= deadline)); then
      if [[ "${name}" == kubelet ]]; then
        echo "[control-plane] node ${NODE_NAME}: $(node_kubectl get node "${NODE_NAME}" \
          -o jsonpath='{range .status.conditions[*]}{.type}={.status} {.message}; {end}' 2>&1)" >&2
      fi
      fail_proc "${name}" "was not ready after ${TIMEOUT}s"
    fi
    sleep 0.5
  done
}

node_healthz() { curl -fsk --max-time 3 "$1" >/dev/null; }

node_default_sa() { node_kubectl get serviceaccount default -n default; }

# The host's address on its default route (the kubelet wants a node IP that is not loopback).
node_host_ip() {
  local ip
  ip="$(ip -4 route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p' | head -n1)"
  [[ -n "${ip}" ]] || ip="$(ip -4 -o addr show scope global 2>/dev/null | awk '{ sub(/\/.*/, "", $4); print $4; exit }')"
  [[ -n "${ip}" ]] || die "--node: found no non-loopback IPv4 address for the node (KUBEKMS_NODE_IP sets one)"
  echo "${ip}"
}

# Sets, before the certificates are made, what kube-apiserver needs so that pods reach it:
# the `kubernetes` Service's endpoint is the advertise address, and a pod's packets to
# 10.0.0.1:443 are DNATed by kube-proxy to it and routed over the bridge to the host. The
# node's IP is not loopback (pods cannot reach the host's 127.0.0.1), so kube-apiserver
# listens on every address (clients still need a certificate or a token) and its serving
# certificate names that IP.
# shellcheck disable=SC2034 # read by hack/control-plane.sh
node_apiserver_address() {
  NODE_IP="${KUBEKMS_NODE_IP:-$(node_host_ip)}"
  APISERVER_ADVERTISE="${NODE_IP}"
  APISERVER_BIND=0.0.0.0
  APISERVER_EXTRA_SAN=",IP:${NODE_IP}"
}

# node_static_pods DIR : DIR/*.yaml into the kubelet's staticPodPath. A static pod cannot
# use a ServiceAccount token: for each DIR/NAME.client (one line, a certificate subject such
# as /CN=system:serviceaccount:NS:SA, which RBAC's ServiceAccount subjects match), write
# DIR/NAME.kubeconfig first, with a client certificate of that subject signed by the CA and
# kube-apiserver at https://127.0.0.1:<port> (static pods here use the host's network), owned
# like NAME.client, mode 0400.
node_static_pods() {
  local dir="$1" f name subject b64cert b64key ca
  mkdir -p "${STATE}/manifests" "${STATE}/node/pki"
  for f in "${dir}"/*.client; do
    [[ -f "${f}" ]] || continue
    name="$(basename "${f}" .client)"
    subject="$(head -n 1 "${f}")"
    node_client_cert "static-${name}" "${subject}"
    b64cert="$(base64 -w0 <"${STATE}/node/pki/static-${name}.crt")"
    b64key="$(base64 -w0 <"${STATE}/node/pki/static-${name}.key")"
    ca="$(base64 -w0 <"${STATE}/pki/ca.crt")"
    rm -f "${dir}/${name}.kubeconfig"
    (
      umask 077
      cat >"${dir}/${name}.kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: kubekms-local
  cluster:
    server: https://127.0.0.1:${APISERVER_PORT}
    certificate-authority-data: ${ca}
users:
- name: ${name}
  user:
    client-certificate-data: ${b64cert}
    client-key-data: ${b64key}
contexts:
- name: kubekms-local
  context: {cluster: kubekms-local, user: ${name}}
current-context: kubekms-local
YAML
    )
    chown --reference="${f}" "${dir}/${name}.kubeconfig"
    chmod 0400 "${dir}/${name}.kubeconfig"
  done
  for f in "${dir}"/*.yaml; do
    [[ -f "${f}" ]] || continue
    cp "${f}" "${STATE}/manifests/$(basename "${f}")"
    log "static pod ${f} -> ${STATE}/manifests/"
  done
}

# node_start_runtime : containerd (images imported) and the kubelet. node_up runs it, or
# control-plane.sh does before kube-apiserver (--static-pods): as on a kubeadm node, the
# kubelet runs the static pods (a KMS plugin kube-apiserver's readiness waits for) while
# the API server is not there yet, and registers the node once it is.
NODE_RUNTIME_STARTED=false
node_start_runtime() {
  node_check_prereqs
  NODE_IP="${NODE_IP:-${KUBEKMS_NODE_IP:-$(node_host_ip)}}"
  KUBELET_PORT="$(pick_port)" KUBELET_HEALTHZ_PORT="$(pick_port)"
  PROXY_HEALTHZ_PORT="$(pick_port)" PROXY_METRICS_PORT="$(pick_port)"
  echo "${STATE}" >"${NODE_OWNER}"
  node_write_config
  {
    echo "KUBEKMS_NODE_NAME=${NODE_NAME}"
    echo "KUBEKMS_NODE_IP=${NODE_IP}"
    echo "KUBEKMS_NODE_MANIFESTS=${STATE}/manifests"
    echo "KUBEKMS_CONTAINERD_SOCKET=${STATE}/containerd/containerd.sock"
  } >>"${STATE}/env"

  local n="${STATE}/node"
  log "starting containerd (log: ${STATE}/logs/containerd.log)"
  start_proc containerd containerd --config "${n}/containerd.toml"
  wait_for containerd "${TIMEOUT}" node_ctr version
  local -a archives=("${NODE_IMAGES}"/*.oci.tar)
  node_import "${archives[@]}"

  log "starting kubelet (log: ${STATE}/logs/kubelet.log, static pods: ${STATE}/manifests)"
  start_proc kubelet "${TOOLS_BIN}/kubelet" \
    --config "${n}/kubelet.yaml" \
    --kubeconfig "${n}/kubelet.kubeconfig" \
    --hostname-override "${NODE_NAME}" \
    --node-ip "${NODE_IP}" \
    --root-dir "${STATE}/kubelet" \
    --cert-dir "${n}/pki"
  NODE_RUNTIME_STARTED=true
}

node_up() {
  ${NODE_RUNTIME_STARTED} || node_start_runtime
  local n="${STATE}/node" pki="${STATE}/pki" kcm_port sched_port
  kcm_port="$(pick_port)" sched_port="$(pick_port)"
  log "starting kube-proxy, kube-controller-manager, kube-scheduler (logs in ${STATE}/logs)"
  start_proc kube-proxy "${TOOLS_BIN}/kube-proxy" --config "${n}/kube-proxy.yaml"
  start_proc kube-controller-manager "${TOOLS_BIN}/kube-controller-manager" \
    --kubeconfig "${n}/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig "${n}/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig "${n}/kube-controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "${kcm_port}" \
    --service-account-private-key-file "${pki}/sa.key" \
    --root-ca-file "${pki}/ca.crt" \
    --use-service-account-credentials \
    --service-cluster-ip-range 10.0.0.0/24 \
    --cluster-cidr "${NODE_POD_CIDR}" --allocate-node-cidrs=false \
    --leader-elect=false \
    --controllers '*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route'
  start_proc kube-scheduler "${TOOLS_BIN}/kube-scheduler" \
    --kubeconfig "${n}/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig "${n}/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig "${n}/kube-scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "${sched_port}" \
    --leader-elect=false

  node_wait kubelet node_ready_status
  node_wait kube-proxy node_healthz "http://127.0.0.1:${PROXY_HEALTHZ_PORT}/healthz"
  node_wait kube-controller-manager node_healthz "https://127.0.0.1:${kcm_port}/healthz"
  node_wait kube-controller-manager node_default_sa
  node_wait kube-scheduler node_healthz "https://127.0.0.1:${sched_port}/healthz"
  # It runs the control plane: deploy/ schedules the operator and the server on such nodes
  # (the kubelet may not set node-role labels on itself).
  node_kubectl label node --overwrite "${NODE_NAME}" node-role.kubernetes.io/control-plane= >/dev/null ||
    die "labelling node ${NODE_NAME} as a control-plane node failed"
  log "node ${NODE_NAME} is Ready (static pods: ${STATE}/manifests)"
}

# ---------------------------------------------------------------- cleanup

# The network namespaces containerd made for our pod sandboxes, read from what containerd
# and runc keep in the state folder (so it works even when containerd is dead).
node_netns_names() {
  {
    grep -rahoE '/var/run/netns/cni-[0-9a-f-]{36}' "${STATE}/containerd/state" "${STATE}/containerd/runc" 2>/dev/null
    grep -aoE '/var/run/netns/cni-[0-9a-f-]{36}' \
      "${STATE}/containerd/root/io.containerd.metadata.v1.bolt/meta.db" 2>/dev/null
  } | sed 's|.*/||' | sort -u || true
}

# Processes whose command line names our containerd (its shims) or whose pid is in one of
# the shims' pid files.
node_shim_pids() {
  local sock="${STATE}/containerd/containerd.sock" p
  cat "${STATE}"/containerd/state/io.containerd.runtime.v2.task/*/*/shim.pid 2>/dev/null || true
  echo
  for p in /proc/[0-9]*; do
    if tr '\0' ' ' 2>/dev/null <"${p}/cmdline" | grep -F -- "-address ${sock} " >/dev/null; then
      echo "${p#/proc/}"
    fi
  done
}

node_remove_containers() {
  local ids id
  if alive containerd; then
    ids="$(node_ctr tasks ls -q 2>/dev/null || true)"
    for id in ${ids}; do node_ctr tasks kill --signal SIGKILL "${id}" >/dev/null 2>&1 || true; done
    for id in ${ids}; do node_ctr tasks delete --force "${id}" >/dev/null 2>&1 || true; done
    for id in $(node_ctr containers ls -q 2>/dev/null || true); do
      node_ctr containers rm "${id}" >/dev/null 2>&1 || true
    done
  fi
}

node_down() {
  [[ -d "${STATE}/node" ]] || return 0
  local netns tools_bin
  netns="$(node_netns_names)"
  tools_bin="$(sed -n 's/^KUBEKMS_TOOLS_BIN=//p' "${STATE}/env" 2>/dev/null)"
  stop_proc kube-scheduler
  stop_proc kube-controller-manager
  stop_proc kubelet
  node_remove_containers
  stop_proc kube-proxy
  stop_proc containerd
  # Whatever containerd did not remove (it was dead, or a task hung): runc kills the
  # container processes through their cgroups, then the shims go.
  local runc_root id pid
  for runc_root in "${STATE}"/containerd/runc/*; do
    [[ -d "${runc_root}" ]] || continue
    for id in $(runc --root "${runc_root}" list -q 2>/dev/null); do
      runc --root "${runc_root}" kill "${id}" KILL >/dev/null 2>&1 || true
      runc --root "${runc_root}" delete --force "${id}" >/dev/null 2>&1 || true
    done
  done
  for pid in $(node_shim_pids | sort -u); do
    if [[ "${pid}" =~ ^[0-9]+$ ]]; then kill -KILL "${pid}" 2>/dev/null || true; fi
  done
  local ns
  for ns in ${netns} $(node_netns_names); do
    if [[ -e "/var/run/netns/${ns}" ]]; then ip netns delete "${ns}" 2>/dev/null || true; fi
  done
  # Pod volumes (tmpfs of projected tokens), overlay rootfs, sandbox shm: deepest first.
  local m
  while read -r m; do
    umount "${m}" 2>/dev/null || umount -l "${m}" 2>/dev/null || true
  done < <(awk -v s="${STATE}/" 'index($2, s) == 1 { print $2 }' /proc/self/mounts | sort -r)
  # containerd's content and snapshots (hundreds of MB per node; the logs stay), unless
  # something under them is still mounted: never delete through a mount.
  if [[ -d "${STATE}/containerd" ]] &&
    ! awk -v s="${STATE}/containerd/" 'index($2, s) == 1 { found = 1 } END { exit !found }' /proc/self/mounts; then
    rm -rf "${STATE}/containerd"
  fi
  ip link delete "${NODE_BRIDGE}" 2>/dev/null || true
  # kube-proxy's own chains, then what `kube-proxy --cleanup` leaves: the canaries of the
  # kubelet and kube-proxy, and KUBE-FIREWALL (kube-proxy's "block incoming localnet
  # connections" rule, jumped to from INPUT and OUTPUT).
  if [[ -x "${tools_bin}/kube-proxy" ]]; then
    "${tools_bin}/kube-proxy" --cleanup >>"${STATE}/logs/kube-proxy.log" 2>&1 || true
  fi
  local table chain cmd
  for cmd in iptables ip6tables; do
    for chain in INPUT OUTPUT; do
      while "${cmd}" -t filter -D "${chain}" -j KUBE-FIREWALL 2>/dev/null; do :; done
    done
  done
  for table in mangle nat filter; do
    for chain in KUBE-KUBELET-CANARY KUBE-PROXY-CANARY KUBE-IPTABLES-HINT KUBE-FIREWALL; do
      for cmd in iptables ip6tables; do
        if "${cmd}" -t "${table}" -F "${chain}" 2>/dev/null; then
          "${cmd}" -t "${table}" -X "${chain}" 2>/dev/null || true
        fi
      done
    done
  done
  # The kubelet's cgroups (cgroupfs driver, root /): leaves first.
  local d
  for d in /sys/fs/cgroup/*/kubepods; do
    [[ -d "${d}" ]] || continue
    find "${d}" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  if [[ -f "${NODE_OWNER}" && "$(cat "${NODE_OWNER}")" == "${STATE}" ]]; then rm -f "${NODE_OWNER}"; fi
}
