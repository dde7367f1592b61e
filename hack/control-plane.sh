#!/usr/bin/env bash
# A real, local Kubernetes control plane: etcd + kube-apiserver built from their Go modules
# by hack/tools/build.sh, on loopback, with RBAC, service-account keys and an admin
# kubeconfig, and optionally a KMS v2 EncryptionConfiguration for Secrets.
#
# Usage:
#   hack/control-plane.sh up   [options]   start etcd (+ plugin) + kube-apiserver, wait for /readyz
#   hack/control-plane.sh down [--state-dir DIR]   stop everything that `up` started there
#   hack/control-plane.sh env  [--state-dir DIR]   print `export ...` lines for a shell:
#                         KUBECONFIG, ETCDCTL_ENDPOINTS and PATH (the built kubectl and
#                         etcdctl) only; nothing that this script or the others read
#   hack/control-plane.sh status [--state-dir DIR]   exit 0 only while etcd and kube-apiserver run
#   hack/control-plane.sh start-process NAME [--state-dir DIR] -- CMD [ARG...]
#                         start one more long-running process (an operator, a controller)
#                         once kube-apiserver is ready: own session, KUBECONFIG set to the
#                         admin kubeconfig, log in logs/NAME.log, pid in pids/NAME.pid;
#                         `down` stops it first (before kube-apiserver) and the watchdog
#                         covers it. Fails if it is already running or exits within 1 s.
#
# Options for `up`:
#   --state-dir DIR       where certs, etcd data, logs and pids live (default: a new mktemp
#                         folder; `down`/`env` then find it through .state/control-plane)
#   --kms-socket PATH     (env KUBEKMS_KMS_SOCKET) encrypt Secrets with a KMS v2 provider
#                         named "kubekms" at unix://PATH, identity as fallback for reads.
#                         Given through the environment without a plugin command, PATH must
#                         already be a socket (else `up` fails at once instead of waiting
#                         for an API server that cannot become ready)
#   --plugin-cmd CMD      (env KUBEKMS_PLUGIN_CMD) a long-running command started after etcd
#                         and before kube-apiserver (the KMS plugin must be up first); its
#                         log is logs/kms-plugin.log and `down` stops it. With --kms-socket,
#                         `up` waits for that socket to appear before starting the apiserver.
#                         It runs with KUBECONFIG set to the admin kubeconfig (written
#                         before it starts; the API server is not up yet) and
#                         KUBEKMS_ETCD_ENDPOINT set to etcd's URL (a restore reads the
#                         plugin's KmsKeyMaterial from etcd before serving).
#   --etcd-port N, --etcd-peer-port N, --apiserver-port N
#                         fixed loopback ports (default: free ports picked at random);
#                         a busy port is an immediate error
#   --timeout SECS        how long to wait for each process to become ready (default 90)
#   --watch-pid PID       tear everything down when process PID exits (used by tests so
#                         nothing outlives them, even after SIGKILL)
#   --tools-bin DIR       use binaries from DIR instead of running hack/tools/build.sh
#   --etcd-snapshot FILE  restore etcd from FILE (`etcdctl snapshot save` output) with
#                         `etcdutl snapshot restore` into a new etcd-data/ before etcd
#                         starts (docs/disaster-recovery.md); refused if etcd-data/ exists
#   --node                also start a node (hack/node.sh, docs/node.md): containerd,
#                         kubelet, kube-proxy, a CNI bridge, kube-controller-manager and
#                         kube-scheduler; `up` returns once the node is Ready. Needs root.
#   --static-pods DIR     (with --node) put DIR/*.yaml into the kubelet's staticPodPath
#                         and start containerd and the kubelet before kube-apiserver, as
#                         kubeadm does: a KMS plugin running as a static pod must serve
#                         before kube-apiserver can become ready (with --kms-socket, `up`
#                         waits for that socket first). DIR/NAME.client (a certificate
#                         subject) gets DIR/NAME.kubeconfig, a client certificate of the
#                         CA (hack/node.sh node_static_pods). Used by hack/local-up.sh --node
#   --images DIR          (with --node) import every DIR/NAME.oci.tar as
#                         kubekms.local/NAME:dev; DIR must hold pause.oci.tar (default
#                         <repo>/target/images, written by hack/images.sh)
#
#   hack/control-plane.sh import-image [--state-dir DIR] FILE...
#                         import more NAME.oci.tar archives into the node's containerd
#
# Everything lives in the state folder: pki/, etcd-data/, logs/<process>.log, pids/,
# kubeconfig, encryption-config.yaml, and env (KEY=VALUE lines read by the e2e harness and
# hack/local-up.sh; the `env` command prints the part a shell needs).
set -euo pipefail

# etcdctl refuses a flag that an environment variable also sets, and this script passes
# --endpoints: an ETCDCTL_ENDPOINTS exported by `eval "$(hack/control-plane.sh env)"` (for
# the user's own etcdctl calls) would make every health check of a new etcd fail.
unset "${!ETCDCTL_@}"

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${HACK_DIR}/.." && pwd)"
POINTER="${REPO_ROOT}/.state/control-plane"

log() { echo "[control-plane] $*" >&2; }
die() { echo "[control-plane] error: $*" >&2; exit 1; }

# shellcheck source=hack/lib/process.sh
. "${HACK_DIR}/lib/process.sh"
# shellcheck source=hack/lib/pki.sh
. "${HACK_DIR}/lib/pki.sh"
# shellcheck source=hack/node.sh
. "${HACK_DIR}/node.sh"

# The header comment, up to the first line that is not a comment.
usage() { awk 'NR == 1 { next } !/^#/ { exit } { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; }

# ---------------------------------------------------------------- helpers

port_in_use() {
  # A successful connect means something listens there.
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

who_listens() {
  if command -v ss >/dev/null 2>&1; then
    ss -ltnpH "sport = :$1" 2>/dev/null || true
  fi
}

check_port_free() {
  local name="$1" port="$2"
  if ! [[ "${port}" =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then
    die "${name}: not a port: ${port}"
  fi
  if port_in_use "${port}"; then
    die "${name} port ${port} on 127.0.0.1 is already in use; pick another or stop that process: $(who_listens "${port}")"
  fi
}

declare -a PICKED_PORTS=()
pick_port() {
  local port i
  for ((i = 0; i < 200; i++)); do
    # Below the usual ephemeral range (32768+), where outgoing connections take ports.
    port=$((20000 + RANDOM % 12000))
    if [[ " ${PICKED_PORTS[*]} " == *" ${port} "* ]]; then continue; fi
    if ! port_in_use "${port}"; then
      PICKED_PORTS+=("${port}")
      echo "${port}"
      return 0
    fi
  done
  die "found no free loopback port"
}

# The processes of this control plane live in the state folder (hack/lib/process.sh).
# start_proc NAME CMD... ; alive NAME ; stop_proc NAME [GRACE]
start_proc() { proc_start "${STATE}" "$@"; }
alive() { proc_alive "${STATE}" "$1"; }
stop_proc() { proc_stop "${STATE}" "$1" TERM "${2:-15}" "$1"; }

log_tail() {
  local name="$1" file="${STATE}/logs/$1.log"
  echo "---- last 40 lines of ${file} ----" >&2
  tail -n 40 "${file}" >&2 2>/dev/null || echo "(no log)" >&2
  echo "---- end of ${name} log ----" >&2
}

# fail_proc NAME WHY : explain which process failed, where its log is, show its tail,
# stop everything, exit non-zero.
fail_proc() {
  local name="$1" why="$2"
  echo "[control-plane] error: ${name} ${why}" >&2
  echo "[control-plane] ${name} log: ${STATE}/logs/${name}.log" >&2
  log_tail "${name}"
  if [[ "${name}" == "kube-apiserver" ]] && alive kube-apiserver; then
    echo "[control-plane] failing /readyz checks:" >&2
    "${TOOLS_BIN}/kubectl" --kubeconfig "${STATE}/kubeconfig" --request-timeout 5s \
      get --raw '/readyz?verbose' 2>&1 | grep -E '^\[-\]|error' >&2 || true
  fi
  if [[ -z "${KUBEKMS_KEEP_ON_FAILURE:-}" ]]; then
    do_down >/dev/null 2>&1 || true
    echo "[control-plane] stopped what was started; state kept in ${STATE}" >&2
  else
    echo "[control-plane] KUBEKMS_KEEP_ON_FAILURE set: processes left running; stop with: $0 down --state-dir ${STATE}" >&2
  fi
  exit 1
}

# wait_for NAME TIMEOUT CHECK... : poll CHECK until it succeeds; fail clearly if NAME dies
# or the timeout passes.
wait_for() {
  local name="$1" timeout="$2"
  shift 2
  local deadline=$((SECONDS + timeout))
  while ! "$@" >/dev/null 2>&1; do
    alive "${name}" || fail_proc "${name}" "exited before it became ready"
    ((SECONDS < deadline)) || fail_proc "${name}" "was not ready after ${timeout}s"
    sleep 0.5
  done
}

resolve_state_for_existing() {
  if [[ -z "${STATE}" ]]; then
    [[ -L "${POINTER}" || -e "${POINTER}" ]] || die "no --state-dir given and no running control plane recorded at ${POINTER}"
    STATE="$(readlink -f "${POINTER}")"
  fi
  [[ -d "${STATE}" ]] || die "state folder ${STATE} does not exist"
  STATE="$(cd "${STATE}" && pwd)"
}

# ---------------------------------------------------------------- down / env / status

# The processes `up` itself starts; any other pid file is one of `start-process`.
is_core_proc() {
  case "$1" in
    etcd | kms-plugin | kube-apiserver | watchdog) return 0 ;;
    *) is_node_proc "$1" ;;
  esac
}

do_down() {
  [[ -d "${STATE}/pids" ]] || return 0
  local f name
  # Processes of `start-process` first: they are clients of kube-apiserver (an operator
  # releases its Lease on SIGTERM, and an open watch would hold kube-apiserver's shutdown).
  for f in "${STATE}"/pids/*.pid; do
    [[ -e "${f}" ]] || continue
    name="$(basename "${f}" .pid)"
    is_core_proc "${name}" || stop_proc "${name}"
  done
  # Then the node (its containers, network namespaces, mounts, iptables chains, bridge).
  node_down
  # Then the plugin (a plugin that follows objects holds a watch, which would hold
  # kube-apiserver's graceful shutdown for a minute; kube-apiserver needs no KMS to stop),
  # kube-apiserver, and etcd last.
  for name in kms-plugin kube-apiserver etcd; do
    stop_proc "${name}"
  done
  for f in "${STATE}"/pids/*.pid; do
    [[ -e "${f}" ]] || continue
    name="$(basename "${f}" .pid)"
    if [[ "${name}" == "watchdog" ]]; then
      local pid st
      read -r pid st <"${f}" || true
      # The watchdog runs `down` itself when its target exits; don't kill ourselves.
      if [[ "${pid}" == "$$" ]]; then rm -f "${f}"; continue; fi
      stop_proc watchdog 2
      continue
    fi
    stop_proc "${name}"
  done
  if [[ -L "${POINTER}" && "$(readlink -f "${POINTER}")" == "${STATE}" ]]; then
    rm -f "${POINTER}"
  fi
}

# Only what a user's shell needs. The env file also holds KUBEKMS_KMS_SOCKET and the
# like, which the scripts read as settings: exported into a shell, they would outlive
# this control plane and send the next `hack/test.sh` or `hack/local-up.sh` of that shell
# to a dead socket.
do_env() {
  [[ -f "${STATE}/env" ]] || die "${STATE} has no env file; was the control plane started there?"
  printf 'export KUBECONFIG=%q\n' "$(sed -n 's/^KUBECONFIG=//p' "${STATE}/env")"
  printf 'export ETCDCTL_ENDPOINTS=%q\n' "$(sed -n 's/^KUBEKMS_ETCD_ENDPOINT=//p' "${STATE}/env")"
  # shellcheck disable=SC2016 # ${PATH} is for the shell that evals this
  printf 'export PATH=%q:"${PATH}"\n' "$(sed -n 's/^KUBEKMS_TOOLS_BIN=//p' "${STATE}/env")"
}

do_status() {
  local name f rc=0
  local -a names=(etcd kms-plugin kube-apiserver watchdog "${NODE_PROCS[@]}")
  for f in "${STATE}"/pids/*.pid; do
    [[ -e "${f}" ]] || continue
    name="$(basename "${f}" .pid)"
    is_core_proc "${name}" || names+=("${name}")
  done
  for name in "${names[@]}"; do
    if [[ -f "${STATE}/pids/${name}.pid" ]]; then
      if alive "${name}"; then
        echo "${name}: running (pid $(cut -d' ' -f1 "${STATE}/pids/${name}.pid")), log ${STATE}/logs/${name}.log"
      else
        echo "${name}: NOT running, log ${STATE}/logs/${name}.log"
        rc=1
      fi
    elif [[ "${name}" == etcd || "${name}" == kube-apiserver ]]; then
      echo "${name}: not started"
      rc=1
    fi
  done
  return "${rc}"
}

# start-process NAME -- CMD... : one more long-running process of this control plane.
do_start_process() {
  local name="${PROC_NAME}"
  [[ "${name}" =~ ^[a-z0-9][a-z0-9._-]*$ ]] || die "start-process: not a process name: '${name}' (lowercase letters, digits, . _ -)"
  if is_core_proc "${name}"; then die "start-process: ${name} is started by 'up' itself"; fi
  ((${#PROC_CMD[@]})) || die "start-process ${name}: no command given (start-process NAME -- CMD [ARG...])"
  [[ -d "${STATE}/pids" && -f "${STATE}/kubeconfig" ]] || die "${STATE} is not the state folder of a control plane started by '$0 up'"
  alive kube-apiserver || die "kube-apiserver of ${STATE} is not running; start the control plane first ('$0 up')"
  if alive "${name}"; then
    die "${name} already runs (pid $(cut -d' ' -f1 "${STATE}/pids/${name}.pid")), log ${STATE}/logs/${name}.log"
  fi
  rm -f "${STATE}/pids/${name}.pid" # left by a process that exited
  log "starting ${name}: ${PROC_CMD[*]} (log: ${STATE}/logs/${name}.log)"
  KUBECONFIG="${STATE}/kubeconfig" start_proc "${name}" "${PROC_CMD[@]}"
  sleep 1
  alive "${name}" || {
    echo "[control-plane] error: ${name} exited right after it started" >&2
    log_tail "${name}"
    rm -f "${STATE}/pids/${name}.pid"
    exit 1
  }
}

# ---------------------------------------------------------------- up

gen_pki() {
  # APISERVER_EXTRA_SAN is ",IP:<node IP>" with --node (hack/node.sh), empty without.
  local extra=()
  [[ -z "${APISERVER_EXTRA_SAN}" ]] || extra+=("${APISERVER_EXTRA_SAN#,}")
  pki_generate "${STATE}/pki" kubekms-local-ca "${extra[@]}"
}

write_kubeconfig() {
  admin_kubeconfig "${STATE}/kubeconfig" "${STATE}/pki" "https://127.0.0.1:${APISERVER_PORT}" kubekms-local
}

write_encryption_config() { kms_encryption_config "${STATE}/encryption-config.yaml" "${KMS_SOCKET}"; }

do_up() {
  if ${KMS_SOCKET_FROM_ENV} && [[ -z "${PLUGIN_CMD}" && ! -S "${KMS_SOCKET}" ]]; then
    die "KUBEKMS_KMS_SOCKET=${KMS_SOCKET} is set, KUBEKMS_PLUGIN_CMD is not, and nothing serves that socket: kube-apiserver could never become ready. Start the plugin that serves it first, or unset KUBEKMS_KMS_SOCKET (left over from an older 'eval \"\$($0 env)\"'?)"
  fi
  if [[ -z "${TOOLS_BIN}" ]]; then
    TOOLS_BIN="$("${HACK_DIR}/tools/build.sh" --print-dir)"
  fi
  local b
  local -a needed=(etcd etcdctl kube-apiserver kubectl)
  [[ -z "${ETCD_SNAPSHOT}" ]] || needed+=(etcdutl)
  if ${NODE}; then needed+=(kubelet kube-proxy kube-controller-manager kube-scheduler); fi
  for b in "${needed[@]}"; do
    [[ -x "${TOOLS_BIN}/${b}" ]] || die "${TOOLS_BIN}/${b} is missing; run hack/tools/build.sh"
  done
  command -v openssl >/dev/null || die "openssl is not installed (run hack/install-deps.sh)"
  command -v setsid >/dev/null || die "setsid (util-linux) is not installed (run hack/install-deps.sh)"

  local record_pointer=false
  if [[ -z "${STATE}" ]]; then
    STATE="$(mktemp -d "${TMPDIR:-/tmp}/kubekms-cp.XXXXXX")"
    record_pointer=true
  fi
  mkdir -p "${STATE}"
  STATE="$(cd "${STATE}" && pwd)"
  local f
  for f in "${STATE}"/pids/*.pid; do
    [[ -e "${f}" ]] || continue
    if alive "$(basename "${f}" .pid)"; then
      die "${STATE} has a running $(basename "${f}" .pid); run '$0 down --state-dir ${STATE}' first"
    fi
    rm -f "${f}" # left by a run that was killed
  done
  mkdir -p "${STATE}/logs" "${STATE}/pids"
  if ${record_pointer}; then
    mkdir -p "$(dirname "${POINTER}")"
    if [[ -L "${POINTER}" ]] && [[ -d "$(readlink -f "${POINTER}")/pids" ]] &&
      compgen -G "$(readlink -f "${POINTER}")/pids/*.pid" >/dev/null; then
      log "note: another control plane is recorded at ${POINTER} ($(readlink -f "${POINTER}")); pointing it at the new one"
    fi
    ln -sfn "${STATE}" "${POINTER}"
  fi

  # Stop what was started if we are interrupted half-way.
  trap 'echo "[control-plane] interrupted; stopping" >&2; do_down; exit 130' INT TERM

  if [[ -n "${ETCD_PORT}" ]]; then check_port_free etcd "${ETCD_PORT}"; else ETCD_PORT="$(pick_port)"; fi
  if [[ -n "${ETCD_PEER_PORT}" ]]; then check_port_free etcd-peer "${ETCD_PEER_PORT}"; else ETCD_PEER_PORT="$(pick_port)"; fi
  if [[ -n "${APISERVER_PORT}" ]]; then check_port_free kube-apiserver "${APISERVER_PORT}"; else APISERVER_PORT="$(pick_port)"; fi
  PICKED_PORTS+=("${ETCD_PORT}" "${ETCD_PEER_PORT}" "${APISERVER_PORT}")

  # With a node, pods reach kube-apiserver through the `kubernetes` Service, whose
  # endpoint is the advertise address: the node's IP (docs/node.md).
  APISERVER_ADVERTISE=127.0.0.1 APISERVER_BIND=127.0.0.1 APISERVER_EXTRA_SAN=""
  if ${NODE}; then node_apiserver_address; fi
  gen_pki
  write_kubeconfig
  local etcd_url="http://127.0.0.1:${ETCD_PORT}"
  {
    echo "KUBECONFIG=${STATE}/kubeconfig"
    echo "KUBEKMS_STATE_DIR=${STATE}"
    echo "KUBEKMS_ETCD_ENDPOINT=${etcd_url}"
    echo "KUBEKMS_APISERVER_URL=https://127.0.0.1:${APISERVER_PORT}"
    echo "KUBEKMS_TOOLS_BIN=${TOOLS_BIN}"
    if [[ -n "${KMS_SOCKET}" ]]; then echo "KUBEKMS_KMS_SOCKET=${KMS_SOCKET}"; fi
  } >"${STATE}/env"

  if [[ -n "${WATCH_PID}" ]]; then
    kill -0 "${WATCH_PID}" 2>/dev/null || die "--watch-pid ${WATCH_PID}: no such process"
    # shellcheck disable=SC2016 # expanded by the inner bash
    start_proc watchdog bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; exec "$2" down --state-dir "$3"' \
      watchdog "${WATCH_PID}" "${HACK_DIR}/control-plane.sh" "${STATE}"
  fi

  log "state folder: ${STATE}"
  if [[ -n "${ETCD_SNAPSHOT}" ]]; then
    [[ -f "${ETCD_SNAPSHOT}" ]] || die "--etcd-snapshot ${ETCD_SNAPSHOT}: no such file"
    [[ ! -e "${STATE}/etcd-data" ]] || die "--etcd-snapshot: ${STATE}/etcd-data exists; a restore needs a new data folder"
    log "restoring etcd from ${ETCD_SNAPSHOT} into ${STATE}/etcd-data"
    "${TOOLS_BIN}/etcdutl" snapshot restore "${ETCD_SNAPSHOT}" \
      --data-dir "${STATE}/etcd-data" \
      --name kubekms-local \
      --initial-cluster "kubekms-local=http://127.0.0.1:${ETCD_PEER_PORT}" \
      --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER_PORT}" \
      >>"${STATE}/logs/etcd-restore.log" 2>&1 ||
      die "etcdutl snapshot restore failed; see ${STATE}/logs/etcd-restore.log"
  fi
  log "starting etcd on ${etcd_url} (log: ${STATE}/logs/etcd.log)"
  start_proc etcd "${TOOLS_BIN}/etcd" \
    --name kubekms-local \
    --data-dir "${STATE}/etcd-data" \
    --listen-client-urls "${etcd_url}" \
    --advertise-client-urls "${etcd_url}" \
    --listen-peer-urls "http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-cluster "kubekms-local=http://127.0.0.1:${ETCD_PEER_PORT}" \
    --log-level warn
  wait_for etcd "${TIMEOUT}" "${TOOLS_BIN}/etcdctl" --endpoints "${etcd_url}" --command-timeout=2s endpoint health

  if [[ -n "${PLUGIN_CMD}" ]]; then
    log "starting KMS plugin: ${PLUGIN_CMD} (log: ${STATE}/logs/kms-plugin.log)"
    # The kubeconfig exists already (a plugin that follows the API server may use it); the
    # API server itself comes up after the plugin.
    KUBECONFIG="${STATE}/kubeconfig" KUBEKMS_ETCD_ENDPOINT="${etcd_url}" \
      start_proc kms-plugin bash -c "${PLUGIN_CMD}"
  fi
  if ${NODE} && [[ -n "${STATIC_PODS}" ]]; then
    node_static_pods "${STATIC_PODS}"
    node_start_runtime
  fi
  local enc_args=() node_args=()
  if ${NODE}; then
    # kubectl logs/exec reach the kubelet at the node's InternalIP (its hostname resolves nowhere).
    node_args=(--kubelet-client-certificate "${STATE}/pki/admin.crt"
      --kubelet-client-key "${STATE}/pki/admin.key"
      --kubelet-certificate-authority "${STATE}/pki/ca.crt"
      --kubelet-preferred-address-types InternalIP)
  fi
  if [[ -n "${KMS_SOCKET}" ]]; then
    write_encryption_config
    enc_args=(--encryption-provider-config "${STATE}/encryption-config.yaml"
      --encryption-provider-config-automatic-reload=true)
    if [[ -n "${PLUGIN_CMD}" ]]; then
      wait_for kms-plugin "${TIMEOUT}" test -S "${KMS_SOCKET}"
    elif ${NODE} && [[ -n "${STATIC_PODS}" ]]; then
      log "waiting for a static pod to serve ${KMS_SOCKET}"
      wait_for kubelet "${TIMEOUT}" test -S "${KMS_SOCKET}"
    elif [[ ! -S "${KMS_SOCKET}" ]]; then
      log "warning: ${KMS_SOCKET} is not a socket yet; kube-apiserver will not be ready until a KMS v2 plugin serves it"
    fi
  fi

  local pki="${STATE}/pki"
  log "starting kube-apiserver on https://127.0.0.1:${APISERVER_PORT} (log: ${STATE}/logs/kube-apiserver.log)"
  start_proc kube-apiserver "${TOOLS_BIN}/kube-apiserver" \
    --advertise-address "${APISERVER_ADVERTISE}" \
    --bind-address "${APISERVER_BIND}" \
    --secure-port "${APISERVER_PORT}" \
    --etcd-servers "${etcd_url}" \
    --tls-cert-file "${pki}/apiserver.crt" \
    --tls-private-key-file "${pki}/apiserver.key" \
    --client-ca-file "${pki}/ca.crt" \
    --authorization-mode Node,RBAC \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "${pki}/sa.pub" \
    --service-account-signing-key-file "${pki}/sa.key" \
    --service-cluster-ip-range 10.0.0.0/24 \
    --cert-dir "${pki}" \
    --profiling=false \
    "${enc_args[@]}" "${node_args[@]}"
  wait_for kube-apiserver "${TIMEOUT}" \
    "${TOOLS_BIN}/kubectl" --kubeconfig "${STATE}/kubeconfig" --request-timeout 5s get --raw /readyz
  if ${NODE}; then node_up; fi

  trap - INT TERM
  log "ready: kube-apiserver https://127.0.0.1:${APISERVER_PORT}, etcd ${etcd_url}"
  echo "${STATE}"
}

# ---------------------------------------------------------------- main

cmd="${1:-}"
[[ -n "${cmd}" ]] || {
  usage >&2
  exit 2
}
shift

# The state folder comes from --state-dir or .state/control-plane only: a KUBEKMS_STATE_DIR
# left in a shell (older versions of `env` exported it) must not pick a dead folder.
STATE=""
KMS_SOCKET="${KUBEKMS_KMS_SOCKET:-}"
KMS_SOCKET_FROM_ENV=false
[[ -z "${KMS_SOCKET}" ]] || KMS_SOCKET_FROM_ENV=true
PLUGIN_CMD="${KUBEKMS_PLUGIN_CMD:-}"
ETCD_PORT="" ETCD_PEER_PORT="" APISERVER_PORT="" WATCH_PID="" TOOLS_BIN="" ETCD_SNAPSHOT=""
NODE=false NODE_IMAGES="${REPO_ROOT}/target/images" STATIC_PODS=""
declare -a IMPORT_FILES=()
TIMEOUT="${KUBEKMS_CONTROL_PLANE_TIMEOUT:-90}"
PROC_NAME=""
declare -a PROC_CMD=()
if [[ "${cmd}" == start-process ]]; then
  PROC_NAME="${1:?start-process needs a NAME (start-process NAME [--state-dir DIR] -- CMD...)}"
  shift
fi

while (($#)); do
  case "$1" in
    --state-dir) STATE="${2:?--state-dir needs a value}"; shift 2 ;;
    --kms-socket) KMS_SOCKET="${2:?--kms-socket needs a value}"; KMS_SOCKET_FROM_ENV=false; shift 2 ;;
    --plugin-cmd) PLUGIN_CMD="${2:?--plugin-cmd needs a value}"; shift 2 ;;
    --etcd-port) ETCD_PORT="${2:?}"; shift 2 ;;
    --etcd-peer-port) ETCD_PEER_PORT="${2:?}"; shift 2 ;;
    --apiserver-port) APISERVER_PORT="${2:?}"; shift 2 ;;
    --timeout) TIMEOUT="${2:?}"; shift 2 ;;
    --watch-pid) WATCH_PID="${2:?}"; shift 2 ;;
    --tools-bin) TOOLS_BIN="${2:?}"; shift 2 ;;
    --etcd-snapshot) ETCD_SNAPSHOT="${2:?}"; shift 2 ;;
    --node) NODE=true; shift ;;
    --images) NODE_IMAGES="${2:?--images needs a folder}"; shift 2 ;;
    --static-pods) STATIC_PODS="${2:?--static-pods needs a folder}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --)
      [[ "${cmd}" == start-process ]] || die "'--' is for start-process only (see --help)"
      shift
      PROC_CMD=("$@")
      break
      ;;
    -*) die "unknown argument: $1 (see --help)" ;;
    *)
      [[ "${cmd}" == import-image ]] || die "unknown argument: $1 (see --help)"
      IMPORT_FILES+=("$1")
      shift
      ;;
  esac
done
if [[ "${NODE_IMAGES}" != /* ]]; then NODE_IMAGES="$(pwd)/${NODE_IMAGES}"; fi
if [[ -n "${STATIC_PODS}" && "${STATIC_PODS}" != /* ]]; then STATIC_PODS="$(pwd)/${STATIC_PODS}"; fi
if [[ -n "${STATIC_PODS}" ]] && ! ${NODE}; then die "--static-pods needs --node"; fi
if [[ -n "${KMS_SOCKET}" && "${KMS_SOCKET}" != /* ]]; then
  KMS_SOCKET="$(pwd)/${KMS_SOCKET}"
fi

case "${cmd}" in
  up) do_up ;;
  down) resolve_state_for_existing; do_down; log "down: nothing left running from ${STATE}" ;;
  env) resolve_state_for_existing; do_env ;;
  status) resolve_state_for_existing; do_status ;;
  start-process) resolve_state_for_existing; do_start_process ;;
  import-image)
    resolve_state_for_existing
    alive containerd || die "the node of ${STATE} is not running (start it with '$0 up --node')"
    ((${#IMPORT_FILES[@]})) || die "import-image: no NAME.oci.tar given"
    node_import "${IMPORT_FILES[@]}"
    ;;
  -h|--help|help) usage ;;
  *) usage >&2; exit 2 ;;
esac
