#!/usr/bin/env bash
# Several control-plane hosts on one machine, each a network namespace, for the partition
# drills of issue 11 (docs/reliability.md, "Several control-plane hosts"):
#
#   host 1: etcd member, kube-apiserver, its kubekms plugin (follow mode), an operator
#   host 2: etcd member, kube-apiserver, its kubekms plugin (follow mode), an operator
#           (one of the two leads; each runs under a restart loop, as the kubelet would
#           restart its pod: an operator exits when it cannot renew its leader Lease)
#   host 3: etcd member
#   host 4..N: nothing (spare hosts for clients)
#
# Each host is a network namespace `kkms<NET>-h<i>` with one interface eth0, 10.213.<NET>.<i>/24,
# joined by a veth pair to the bridge `kk<NET>br` (10.213.<NET>.254, in the root namespace,
# where the tests and kubectl run). Every host has its own loopback and its own ports:
# etcd 2379/2380, kube-apiserver 6443, operator /metrics 8080. The hosts share the machine's
# file system (the state folder below) but nothing else: each plugin has its own state
# folder (a copy of host 1's after `init`: the same root key and bootstrap key, as an
# installer copies it to every control-plane node) and its own socket, and follows the
# KmsKey kubekms-system/apiserver-key through its own host's kube-apiserver at
# https://10.213.<NET>.<i>:6443 (not 127.0.0.1, so that a partition from the API servers
# also cuts a plugin from its own host's API server while that API server still reaches
# etcd and the plugin's Unix socket).
#
# Usage:
#   hack/multi-host.sh up   [options]   make the hosts and start everything; prints the state folder
#   hack/multi-host.sh down [--state-dir DIR]   stop every process, delete namespaces and bridge
#   hack/multi-host.sh env  [--state-dir DIR]   `export ...` lines (KUBECONFIG of host 1,
#                         ETCDCTL_ENDPOINTS of all members, PATH with kubectl/etcdctl)
#   hack/multi-host.sh status [--state-dir DIR]   every process of every host; exit 1 if one is down
#   hack/multi-host.sh cut HOST [--from HOST2 | --apiserver] [--state-dir DIR]
#                         a partition, with iptables in HOST's namespace (DROP, so that
#                         established connections stall as in a real partition):
#                           cut HOST              HOST loses its network (eth0), both ways;
#                                                 its own loopback traffic still flows
#                           cut HOST --from H2    HOST and H2 cannot reach each other
#                           cut HOST --apiserver  nothing on HOST reaches any kube-apiserver
#                                                 (port 6443 on the subnet, its own included):
#                                                 its plugin and operator are cut off; its
#                                                 kube-apiserver still reaches etcd and the
#                                                 plugin's socket, and clients still reach it
#                         Cuts add up until `heal`.
#   hack/multi-host.sh heal [HOST] [--state-dir DIR]   remove the cuts (of HOST, or of all)
#   hack/multi-host.sh start HOST PROCESS [--state-dir DIR]   start again a process that was
#                         stopped or killed (etcd, kms-plugin, kube-apiserver, kubekms-operator)
#                         with the command line `up` gave it, in its host's namespace
#   hack/multi-host.sh stop HOST PROCESS [--kill] [--state-dir DIR]   stop one (SIGTERM, or SIGKILL)
#
# Options for `up`:
#   --state-dir DIR       where everything lives (default: a new mktemp folder, recorded in
#                         .state/multi-host for the other commands)
#   --hosts N             number of hosts, at least 3 (default 3)
#   --net NET             third octet of the subnet 10.213.NET.0/24, 0..99 (default: the
#                         first whose bridge does not exist, so several runs can coexist)
#   --watch-pid PID       tear everything down (processes, namespaces, bridge) when PID
#                         exits, however it exits; tests pass their own pid
#   --tools-bin DIR       kube-apiserver, etcd, etcdctl, kubectl (default: hack/tools/build.sh)
#   --plugin-bin PATH, --operator-bin PATH   (default: target/debug/ of this repository)
#   --operator-args "ARGS"   extra arguments for both operators (split on spaces), e.g.
#                         "--lease-duration-seconds 6 --lease-renew-seconds 1"
#   --no-operator         start no operator (the KmsKey is still handed over)
#   --timeout SECS        how long to wait for each process to become ready (default 120)
#
# Layout of the state folder: pki/ (one CA, one serving certificate valid for every
# host's address, one admin client certificate, one service-account key pair: shared by
# both API servers, as in any HA control plane), env (for the harness), and hosts/h<i>/ with
# env (in the format of control-plane.sh's, so e2e's ControlPlane::from_state_dir reads
# it), kubeconfig (admin, server = this host's API server; for a host without one, host
# 1's), etcd-data/, plugin/ (the plugin's state folder), kms.sock, encryption-config.yaml,
# logs/<process>.log, pids/<process>.pid ("PID STARTTIME", as control-plane.sh writes them),
# cmd/<process> (the command line, for `start`).
#
# etcd speaks plain HTTP on the private subnet, as control-plane.sh's does on loopback: the
# subnet is a bridge with no uplink, reachable from this machine only, and TLS between the
# members would add certificate plumbing that no drill here is about (what the drills check
# is the data path kube-apiserver -> plugin -> etcd under partitions).
#
# Shared with hack/control-plane.sh through hack/lib/: the process records (process.sh;
# here one process folder a host), the certificates (pki.sh; here with every host's address
# in the serving certificate), the kubeconfigs and the EncryptionConfiguration.
set -euo pipefail
unset "${!ETCDCTL_@}"

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/lib/process.sh
. "${HACK_DIR}/lib/process.sh"
# shellcheck source=hack/lib/pki.sh
. "${HACK_DIR}/lib/pki.sh"
REPO_ROOT="$(cd "${HACK_DIR}/.." && pwd)"
POINTER="${REPO_ROOT}/.state/multi-host"
SYSTEM_NAMESPACE=kubekms-system
APISERVER_KEY=apiserver-key
APISERVER_PORT=6443
ETCD_HOSTS=(1 2 3)
APISERVER_HOSTS=(1 2)

log() { echo "[multi-host] $*" >&2; }
die() { echo "[multi-host] error: $*" >&2; exit 1; }
usage() { awk 'NR == 1 { next } !/^#/ { exit } { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; }

# ---------------------------------------------------------------- names

netns_of() { echo "kkms${NET}-h$1"; }
veth_of() { echo "kk${NET}h$1"; }
bridge_name() { echo "kk${NET}br"; }
ip_of() { echo "10.213.${NET}.$1"; }
subnet() { echo "10.213.${NET}.0/24"; }
host_dir() { echo "${STATE}/hosts/h$1"; }
etcd_client_urls() {
  local urls="" i
  for i in "${ETCD_HOSTS[@]}"; do urls+="${urls:+,}http://$(ip_of "${i}"):2379"; done
  echo "${urls}"
}

# ---------------------------------------------------------------- processes (hack/lib/process.sh)

# start_proc HOST NAME CMD... : CMD in HOST's namespace (HOST 0: the root namespace), own
# session, output appended to the host's logs/NAME.log, "PID STARTTIME" in pids/NAME.pid,
# the command line kept in cmd/NAME for `start`.
start_proc() {
  local host="$1" name="$2"
  shift 2
  local dir
  dir="$(host_dir "${host}")"
  mkdir -p "${dir}/logs" "${dir}/pids" "${dir}/cmd"
  printf '%q ' "$@" >"${dir}/cmd/${name}"
  if ((host > 0)); then
    # `ip netns exec` enters the namespace and execs CMD: the pid is CMD's.
    proc_start "${dir}" "${name}" ip netns exec "$(netns_of "${host}")" "$@"
  else
    proc_start "${dir}" "${name}" "$@"
  fi
}

alive() { proc_alive "$(host_dir "$1")" "$2"; } # alive HOST NAME

stop_proc() { # stop_proc HOST NAME [SIGNAL] [GRACE]
  proc_stop "$(host_dir "$1")" "$2" "${3:-TERM}" "${4:-20}" "h$1 $2"
}

fail_proc() {
  local host="$1" name="$2" why="$3" file
  file="$(host_dir "${host}")/logs/${name}.log"
  echo "[multi-host] error: h${host} ${name} ${why}; log ${file}" >&2
  tail -n 40 "${file}" >&2 2>/dev/null || true
  if [[ -z "${KUBEKMS_KEEP_ON_FAILURE:-}" ]]; then
    do_down >/dev/null 2>&1 || true
    echo "[multi-host] stopped what was started; state kept in ${STATE}" >&2
  fi
  exit 1
}

# wait_for HOST NAME TIMEOUT CHECK...
wait_for() {
  local host="$1" name="$2" timeout="$3"
  shift 3
  local deadline=$((SECONDS + timeout))
  while ! "$@" >/dev/null 2>&1; do
    alive "${host}" "${name}" || fail_proc "${host}" "${name}" "exited before it became ready"
    ((SECONDS < deadline)) || fail_proc "${host}" "${name}" "was not ready after ${timeout}s"
    sleep 0.5
  done
}

resolve_state_for_existing() {
  if [[ -z "${STATE}" ]]; then
    [[ -L "${POINTER}" ]] || die "no --state-dir given and no hosts recorded at ${POINTER}"
    STATE="$(readlink -f "${POINTER}")"
  fi
  [[ -f "${STATE}/net" ]] || die "${STATE} is not the state folder of '$0 up'"
  STATE="$(cd "${STATE}" && pwd)"
  # shellcheck disable=SC1091
  source "${STATE}/net"
}

# ---------------------------------------------------------------- network

make_network() {
  local br i ns veth
  br="$(bridge_name)"
  ip link add "${br}" type bridge || die "cannot create bridge ${br} (run as root)"
  ip addr add "10.213.${NET}.254/24" dev "${br}"
  ip link set "${br}" up
  for ((i = 1; i <= HOSTS; i++)); do
    ns="$(netns_of "${i}")"
    veth="$(veth_of "${i}")"
    ip netns add "${ns}"
    # A namespace is destroyed asynchronously: the veth of an earlier run on this subnet
    # (whose bridge is gone, else this run would have been refused) may still exist.
    ip link del "${veth}" 2>/dev/null || true
    ip link add "${veth}" type veth peer name eth0 netns "${ns}"
    ip link set "${veth}" master "${br}"
    ip link set "${veth}" up
    ip -n "${ns}" link set lo up
    ip -n "${ns}" addr add "$(ip_of "${i}")/24" dev eth0
    ip -n "${ns}" link set eth0 up
  done
}

delete_network() {
  local i ns pid
  for ((i = 1; i <= HOSTS; i++)); do
    ns="$(netns_of "${i}")"
    ip netns list 2>/dev/null | grep -qw "^${ns}" || continue
    # Anything still running in the namespace was started by `up` or `start` (by id).
    for pid in $(ip netns pids "${ns}" 2>/dev/null); do kill -KILL "${pid}" 2>/dev/null || true; done
    # Deleting the veth now (both ends go) rather than with the namespace, which the
    # kernel destroys later: the next `up` may reuse the names at once.
    ip link del "$(veth_of "${i}")" 2>/dev/null || true
    ip netns del "${ns}" 2>/dev/null || true
  done
  ip link del "$(bridge_name)" 2>/dev/null || true
}

# The chains KKMS-IN (from INPUT) and KKMS-OUT (from OUTPUT) in a host's namespace hold
# every cut; heal flushes them.
cut_chains() {
  local ns="$1"
  if ! ip netns exec "${ns}" iptables -n -L KKMS-IN >/dev/null 2>&1; then
    ip netns exec "${ns}" iptables -N KKMS-IN
    ip netns exec "${ns}" iptables -N KKMS-OUT
    ip netns exec "${ns}" iptables -I INPUT 1 -j KKMS-IN
    ip netns exec "${ns}" iptables -I OUTPUT 1 -j KKMS-OUT
  fi
}

do_cut() {
  if ! [[ "${CUT_HOST}" =~ ^[0-9]+$ ]] || ((CUT_HOST < 1 || CUT_HOST > HOSTS)); then
    die "cut: no host ${CUT_HOST} (1..${HOSTS})"
  fi
  local ns
  ns="$(netns_of "${CUT_HOST}")"
  cut_chains "${ns}"
  if [[ -n "${CUT_FROM}" ]]; then
    if ! [[ "${CUT_FROM}" =~ ^[0-9]+$ ]] || ((CUT_FROM < 1 || CUT_FROM > HOSTS)); then
      die "cut --from: no host ${CUT_FROM} (1..${HOSTS})"
    fi
    ip netns exec "${ns}" iptables -A KKMS-IN -s "$(ip_of "${CUT_FROM}")" -j DROP
    ip netns exec "${ns}" iptables -A KKMS-OUT -d "$(ip_of "${CUT_FROM}")" -j DROP
    log "cut: h${CUT_HOST} <-/-> h${CUT_FROM}"
  elif ${CUT_APISERVER}; then
    # The host's own connections to port 6443, both ways (dropping only what goes out
    # would still deliver a watch's events to the plugin: TCP takes in-order data whose
    # ACKs are lost). Clients elsewhere still reach this host's kube-apiserver: their
    # packets come in to port 6443 and its answers go out from it, which neither rule
    # matches. Traffic to the host's own address passes OUTPUT and INPUT too (over lo), so
    # its plugin loses its own API server as well.
    ip netns exec "${ns}" iptables -A KKMS-OUT -p tcp -d "$(subnet)" --dport "${APISERVER_PORT}" -j DROP
    ip netns exec "${ns}" iptables -A KKMS-IN -p tcp -s "$(subnet)" --sport "${APISERVER_PORT}" -j DROP
    log "cut: h${CUT_HOST} -/-> every kube-apiserver"
  else
    ip netns exec "${ns}" iptables -A KKMS-IN -i eth0 -j DROP
    ip netns exec "${ns}" iptables -A KKMS-OUT -o eth0 -j DROP
    log "cut: h${CUT_HOST} off the network"
  fi
}

do_heal() {
  local i ns
  for ((i = 1; i <= HOSTS; i++)); do
    [[ -z "${CUT_HOST}" || "${CUT_HOST}" == "${i}" ]] || continue
    ns="$(netns_of "${i}")"
    ip netns exec "${ns}" iptables -F KKMS-IN 2>/dev/null || true
    ip netns exec "${ns}" iptables -F KKMS-OUT 2>/dev/null || true
  done
  log "healed ${CUT_HOST:+h${CUT_HOST}}${CUT_HOST:-every host}"
}

# ---------------------------------------------------------------- down / env / status

do_down() {
  local i name f
  # Clients of the API servers first, then the plugins (an open watch would hold
  # kube-apiserver's shutdown), the API servers, etcd.
  for name in kubekms-operator kms-plugin kube-apiserver etcd; do
    for ((i = 1; i <= HOSTS; i++)); do stop_proc "${i}" "${name}" TERM 20; done
  done
  for ((i = 1; i <= HOSTS; i++)); do
    for f in "$(host_dir "${i}")"/pids/*.pid; do
      [[ -e "${f}" ]] || continue
      stop_proc "${i}" "$(basename "${f}" .pid)" TERM 5
    done
  done
  delete_network
  f="$(host_dir 0)/pids/watchdog.pid"
  if [[ -f "${f}" ]]; then
    local pid
    read -r pid _ <"${f}" || true
    if [[ "${pid}" == "$$" || "${pid}" == "${PPID}" ]]; then rm -f "${f}"; else stop_proc 0 watchdog TERM 2; fi
  fi
  if [[ -L "${POINTER}" && "$(readlink -f "${POINTER}")" == "${STATE}" ]]; then rm -f "${POINTER}"; fi
}

do_env() {
  printf 'export KUBECONFIG=%q\n' "$(host_dir 1)/kubeconfig"
  printf 'export ETCDCTL_ENDPOINTS=%q\n' "$(etcd_client_urls)"
  # shellcheck disable=SC2016
  printf 'export PATH=%q:"${PATH}"\n' "${TOOLS_BIN}"
}

do_status() {
  local i f rc=0 name
  for ((i = 1; i <= HOSTS; i++)); do
    for f in "$(host_dir "${i}")"/cmd/*; do
      [[ -e "${f}" ]] || continue
      name="$(basename "${f}")"
      if alive "${i}" "${name}"; then
        echo "h${i} ${name}: running (pid $(cut -d' ' -f1 "$(host_dir "${i}")/pids/${name}.pid"))"
      else
        echo "h${i} ${name}: NOT running, log $(host_dir "${i}")/logs/${name}.log"
        rc=1
      fi
    done
    local rules
    rules="$( (ip netns exec "$(netns_of "${i}")" iptables -S KKMS-IN 2>/dev/null
      ip netns exec "$(netns_of "${i}")" iptables -S KKMS-OUT 2>/dev/null) | grep DROP | sed 's/^-A //' | paste -sd ';')" || true
    [[ -z "${rules}" ]] || echo "h${i} cut: ${rules}"
  done
  return "${rc}"
}

do_start_one() {
  local dir
  dir="$(host_dir "${CUT_HOST}")"
  [[ -f "${dir}/cmd/${PROCESS}" ]] || die "h${CUT_HOST} never ran ${PROCESS}"
  alive "${CUT_HOST}" "${PROCESS}" && die "h${CUT_HOST} ${PROCESS} already runs"
  local -a argv
  eval "argv=($(cat "${dir}/cmd/${PROCESS}"))"
  start_proc "${CUT_HOST}" "${PROCESS}" "${argv[@]}"
  sleep 0.5
  alive "${CUT_HOST}" "${PROCESS}" || fail_proc "${CUT_HOST}" "${PROCESS}" "exited right after its start"
  log "started h${CUT_HOST} ${PROCESS}"
}

# ---------------------------------------------------------------- up

gen_pki() { # the serving certificate is valid for every host's address
  local -a sans=()
  local i
  for ((i = 1; i <= HOSTS; i++)); do sans+=("IP:$(ip_of "${i}")"); done
  pki_generate "${STATE}/pki" kubekms-multi-host-ca "${sans[@]}"
}

write_kubeconfig() { # write_kubeconfig FILE SERVER_IP
  admin_kubeconfig "$1" "${STATE}/pki" "https://$2:${APISERVER_PORT}" kubekms-multi-host
}

is_apiserver_host() { [[ " ${APISERVER_HOSTS[*]} " == *" $1 "* ]]; }
is_etcd_host() { [[ " ${ETCD_HOSTS[*]} " == *" $1 "* ]]; }

kubectl_h() { # kubectl_h HOST ARGS...
  local host="$1"
  shift
  "${TOOLS_BIN}/kubectl" --kubeconfig "$(host_dir "${host}")/kubeconfig" --request-timeout 10s "$@"
}

do_up() {
  [[ "$(id -u)" == 0 ]] || die "network namespaces need root"
  command -v ip >/dev/null || die "iproute2 is needed"
  command -v iptables >/dev/null || die "iptables is needed"
  ((HOSTS >= 3)) || die "--hosts: at least 3 (the etcd members)"
  [[ -n "${TOOLS_BIN}" ]] || TOOLS_BIN="$("${HACK_DIR}/tools/build.sh" --print-dir)"
  local b
  for b in etcd etcdctl kube-apiserver kubectl; do
    [[ -x "${TOOLS_BIN}/${b}" ]] || die "${TOOLS_BIN}/${b} is missing; run hack/tools/build.sh"
  done
  [[ -n "${PLUGIN_BIN}" ]] || PLUGIN_BIN="${REPO_ROOT}/target/debug/kubekms-plugin"
  [[ -n "${OPERATOR_BIN}" ]] || OPERATOR_BIN="${REPO_ROOT}/target/debug/kubekms-operator"
  [[ -x "${PLUGIN_BIN}" ]] || die "${PLUGIN_BIN} is missing (cargo build -p kubekms-plugin, or --plugin-bin)"
  ${NO_OPERATOR} || [[ -x "${OPERATOR_BIN}" ]] || die "${OPERATOR_BIN} is missing (cargo build -p kubekms-operator, or --operator-bin)"

  if [[ -z "${NET}" ]]; then
    local n
    for ((n = 0; n < 100; n++)); do
      if ! ip link show "kk${n}br" >/dev/null 2>&1; then NET="${n}"; break; fi
    done
    [[ -n "${NET}" ]] || die "no free subnet 10.213.0..99.0/24 (100 runs up?)"
  fi
  if ! [[ "${NET}" =~ ^[0-9]+$ ]] || ((NET >= 100)); then die "--net: 0..99"; fi
  ! ip link show "$(bridge_name)" >/dev/null 2>&1 || die "bridge $(bridge_name) exists: 10.213.${NET}.0/24 is in use; pick another --net"

  local record_pointer=false
  if [[ -z "${STATE}" ]]; then
    STATE="$(mktemp -d "${TMPDIR:-/tmp}/kubekms-mh.XXXXXX")"
    record_pointer=true
  fi
  mkdir -p "${STATE}"
  STATE="$(cd "${STATE}" && pwd)"
  [[ ! -e "${STATE}/net" ]] || die "${STATE} was used by an earlier 'up'; give a new folder"
  printf 'NET=%q\nHOSTS=%q\nTOOLS_BIN=%q\n' "${NET}" "${HOSTS}" "${TOOLS_BIN}" >"${STATE}/net"
  if ${record_pointer}; then
    mkdir -p "$(dirname "${POINTER}")"
    ln -sfn "${STATE}" "${POINTER}"
  fi
  mkdir -p "$(host_dir 0)"
  if [[ -n "${WATCH_PID}" ]]; then
    kill -0 "${WATCH_PID}" 2>/dev/null || die "--watch-pid ${WATCH_PID}: no such process"
    # shellcheck disable=SC2016
    start_proc 0 watchdog bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; exec "$2" down --state-dir "$3"' \
      watchdog "${WATCH_PID}" "${HACK_DIR}/multi-host.sh" "${STATE}"
  fi
  trap 'echo "[multi-host] interrupted; stopping" >&2; exit 130' INT TERM
  # Whatever ends `up` early (a failed step under `set -e`, die, a signal) stops what it
  # started, unless KUBEKMS_KEEP_ON_FAILURE is set.
  trap 'rc=$?; if [[ -z "${KUBEKMS_KEEP_ON_FAILURE:-}" ]]; then do_down >/dev/null 2>&1 || true; echo "[multi-host] up failed; stopped what it started (state kept in ${STATE})" >&2; fi; exit "${rc}"' EXIT

  log "state folder ${STATE}; hosts 10.213.${NET}.1..${HOSTS} on bridge $(bridge_name)"
  make_network
  gen_pki
  local i dir ip
  for ((i = 1; i <= HOSTS; i++)); do
    dir="$(host_dir "${i}")"
    mkdir -p "${dir}/logs" "${dir}/pids" "${dir}/cmd"
    if is_apiserver_host "${i}"; then ip="$(ip_of "${i}")"; else ip="$(ip_of "${APISERVER_HOSTS[0]}")"; fi
    write_kubeconfig "${dir}/kubeconfig" "${ip}"
    {
      echo "KUBECONFIG=${dir}/kubeconfig"
      echo "KUBEKMS_STATE_DIR=${dir}"
      echo "KUBEKMS_ETCD_ENDPOINT=$(etcd_client_urls)"
      echo "KUBEKMS_APISERVER_URL=https://${ip}:${APISERVER_PORT}"
      echo "KUBEKMS_TOOLS_BIN=${TOOLS_BIN}"
      if is_apiserver_host "${i}"; then echo "KUBEKMS_KMS_SOCKET=${dir}/kms.sock"; fi
    } >"${dir}/env"
  done
  cp "$(host_dir 1)/env" "${STATE}/env"
  {
    echo "KUBEKMS_MULTI_HOST_NET=${NET}"
    echo "KUBEKMS_MULTI_HOST_HOSTS=${HOSTS}"
  } >>"${STATE}/env"

  # etcd: one member per host, all started before any is waited for (a member alone has no
  # quorum and is never healthy).
  local cluster="" m
  for m in "${ETCD_HOSTS[@]}"; do cluster+="${cluster:+,}h${m}=http://$(ip_of "${m}"):2380"; done
  for m in "${ETCD_HOSTS[@]}"; do
    ip="$(ip_of "${m}")"
    start_proc "${m}" etcd "${TOOLS_BIN}/etcd" \
      --name "h${m}" \
      --data-dir "$(host_dir "${m}")/etcd-data" \
      --listen-client-urls "http://${ip}:2379,http://127.0.0.1:2379" \
      --advertise-client-urls "http://${ip}:2379" \
      --listen-peer-urls "http://${ip}:2380" \
      --initial-advertise-peer-urls "http://${ip}:2380" \
      --initial-cluster "${cluster}" \
      --initial-cluster-state new \
      --initial-cluster-token "kubekms-mh-${NET}" \
      --log-level warn
  done
  for m in "${ETCD_HOSTS[@]}"; do
    wait_for "${m}" etcd "${TIMEOUT}" "${TOOLS_BIN}/etcdctl" --endpoints "http://$(ip_of "${m}"):2379" --command-timeout=2s endpoint health
  done
  log "etcd: 3 members healthy ($(etcd_client_urls))"

  # One plugin state folder per API server host: host 1's made by init, copied (root key,
  # bootstrap key) to the others, as an installer does.
  "${PLUGIN_BIN}" init --state-dir "$(host_dir "${APISERVER_HOSTS[0]}")/plugin" >>"${STATE}/hosts/h0/plugin-init.log" 2>&1 ||
    die "kubekms-plugin init failed; see ${STATE}/hosts/h0/plugin-init.log"
  for i in "${APISERVER_HOSTS[@]:1}"; do
    cp -a "$(host_dir "${APISERVER_HOSTS[0]}")/plugin" "$(host_dir "${i}")/plugin"
    rm -f "$(host_dir "${i}")/plugin/seeded.json"
  done
  for i in "${APISERVER_HOSTS[@]}"; do
    dir="$(host_dir "${i}")"
    start_proc "${i}" kms-plugin "${PLUGIN_BIN}" serve --state-dir "${dir}/plugin" --socket "${dir}/kms.sock" \
      --reload-interval-ms 1000 --follow "${SYSTEM_NAMESPACE}/${APISERVER_KEY}" --instance "h${i}" \
      --kubeconfig "${dir}/kubeconfig"
    kms_encryption_config "${dir}/encryption-config.yaml" "${dir}/kms.sock"
  done
  local pki="${STATE}/pki"
  for i in "${APISERVER_HOSTS[@]}"; do
    dir="$(host_dir "${i}")"
    wait_for "${i}" kms-plugin "${TIMEOUT}" test -S "${dir}/kms.sock"
    start_proc "${i}" kube-apiserver "${TOOLS_BIN}/kube-apiserver" \
      --advertise-address "$(ip_of "${i}")" \
      --bind-address 0.0.0.0 \
      --secure-port "${APISERVER_PORT}" \
      --etcd-servers "$(etcd_client_urls)" \
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
      --encryption-provider-config "${dir}/encryption-config.yaml" \
      --encryption-provider-config-automatic-reload=true
  done
  for i in "${APISERVER_HOSTS[@]}"; do
    wait_for "${i}" kube-apiserver "${TIMEOUT}" kubectl_h "${i}" get --raw /readyz
  done
  log "kube-apiservers ready: $(for i in "${APISERVER_HOSTS[@]}"; do printf 'https://%s:%s ' "$(ip_of "${i}")" "${APISERVER_PORT}"; done)"

  # The hand-over of the bootstrap key (docs/plugin.md): CRDs, the record and the KmsKey.
  local h1="${APISERVER_HOSTS[0]}"
  kubectl_h "${h1}" apply --server-side --force-conflicts -f "${REPO_ROOT}/crds" >/dev/null
  local deadline=$((SECONDS + TIMEOUT))
  until kubectl_h "${h1}" wait --for=condition=Established --timeout=30s \
    crd/kmskeys.kubekms.io crd/kmskeymaterials.kubekms.io crd/kmsaliases.kubekms.io crd/kmsgrants.kubekms.io >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "the CRDs were not Established after ${TIMEOUT}s"
    sleep 0.5
  done
  kubectl_h "${h1}" create namespace "${SYSTEM_NAMESPACE}" >/dev/null
  "${PLUGIN_BIN}" export --state-dir "$(host_dir "${h1}")/plugin" --namespace "${SYSTEM_NAMESPACE}" --name "${APISERVER_KEY}" |
    kubectl_h "${h1}" apply --server-side -f - >/dev/null

  if ! ${NO_OPERATOR}; then
    local -a extra=()
    # shellcheck disable=SC2206 # split on spaces on purpose
    [[ -z "${OPERATOR_ARGS}" ]] || extra=(${OPERATOR_ARGS})
    for i in "${APISERVER_HOSTS[@]}"; do
      dir="$(host_dir "${i}")"
      # Under a restart loop, as the kubelet restarts an operator pod: an operator exits by
      # design when it cannot renew its leader Lease in time (and comes back as a
      # standby). The loop leads the process group, so `stop`/SIGKILL end both.
      # shellcheck disable=SC2016 # expanded by the inner bash
      start_proc "${i}" kubekms-operator bash -c 'while :; do "$@"; echo "---- kubekms-operator exited ($?); restarting in 1 s"; sleep 1; done' \
        restart-loop env KUBECONFIG="${dir}/kubeconfig" "${OPERATOR_BIN}" \
        --root-key "${dir}/plugin/root.key" --namespace "${SYSTEM_NAMESPACE}" \
        --metrics-addr "0.0.0.0:8080" --lease-namespace "${SYSTEM_NAMESPACE}" --identity "h${i}" \
        --log-format text "${extra[@]}"
    done
    deadline=$((SECONDS + TIMEOUT))
    until [[ "$(kubectl_h "${h1}" get kmskey "${APISERVER_KEY}" -n "${SYSTEM_NAMESPACE}" -o 'jsonpath={.status.keyState}' 2>/dev/null)" == Enabled ]]; do
      for i in "${APISERVER_HOSTS[@]}"; do alive "${i}" kubekms-operator || fail_proc "${i}" kubekms-operator "exited"; done
      ((SECONDS < deadline)) || fail_proc "${h1}" kubekms-operator "did not make ${SYSTEM_NAMESPACE}/${APISERVER_KEY} Enabled in ${TIMEOUT}s"
      sleep 0.5
    done
    log "operators on $(printf 'h%s ' "${APISERVER_HOSTS[@]}")(one leads); ${SYSTEM_NAMESPACE}/${APISERVER_KEY} Enabled"
  fi
  trap - INT TERM EXIT
  log "ready"
  echo "${STATE}"
}

# ---------------------------------------------------------------- main

cmd="${1:-}"
[[ -n "${cmd}" ]] || { usage >&2; exit 2; }
shift
STATE="" NET="" HOSTS=3 WATCH_PID="" TOOLS_BIN="" PLUGIN_BIN="" OPERATOR_BIN="" OPERATOR_ARGS=""
NO_OPERATOR=false TIMEOUT="${KUBEKMS_CONTROL_PLANE_TIMEOUT:-120}"
CUT_HOST="" CUT_FROM="" CUT_APISERVER=false PROCESS="" STOP_SIGNAL=TERM
case "${cmd}" in
  cut | start | stop)
    CUT_HOST="${1:?${cmd} needs a HOST number}"
    shift
    if [[ "${cmd}" != cut ]]; then PROCESS="${1:?${cmd} needs a PROCESS name}"; shift; fi
    ;;
  heal)
    if [[ -n "${1:-}" && "${1}" != --* ]]; then CUT_HOST="$1"; shift; fi
    ;;
esac
while (($#)); do
  case "$1" in
    --state-dir) STATE="${2:?}"; shift 2 ;;
    --hosts) HOSTS="${2:?}"; shift 2 ;;
    --net) NET="${2:?}"; shift 2 ;;
    --watch-pid) WATCH_PID="${2:?}"; shift 2 ;;
    --tools-bin) TOOLS_BIN="${2:?}"; shift 2 ;;
    --plugin-bin) PLUGIN_BIN="${2:?}"; shift 2 ;;
    --operator-bin) OPERATOR_BIN="${2:?}"; shift 2 ;;
    --operator-args) OPERATOR_ARGS="${2:?}"; shift 2 ;;
    --no-operator) NO_OPERATOR=true; shift ;;
    --timeout) TIMEOUT="${2:?}"; shift 2 ;;
    --from) CUT_FROM="${2:?}"; shift 2 ;;
    --apiserver) CUT_APISERVER=true; shift ;;
    --kill) STOP_SIGNAL=KILL; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

case "${cmd}" in
  up) do_up ;;
  down) resolve_state_for_existing; do_down; log "down: nothing left from ${STATE}" ;;
  env) resolve_state_for_existing; do_env ;;
  status) resolve_state_for_existing; do_status ;;
  cut) resolve_state_for_existing; do_cut ;;
  heal) resolve_state_for_existing; do_heal ;;
  start) resolve_state_for_existing; do_start_one ;;
  stop) resolve_state_for_existing; stop_proc "${CUT_HOST}" "${PROCESS}" "${STOP_SIGNAL}" 20 ;;
  -h | --help | help) usage ;;
  *) usage >&2; exit 2 ;;
esac
