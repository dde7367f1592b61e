#!/usr/bin/env bash
# Checks a KubeKMS backup (docs/disaster-recovery.md, "Check a backup"): restores the etcd
# snapshot into a scratch etcd on loopback, reads the KubeKMS objects from it, and runs
# `kubekms-plugin verify` with the root key copy: every version of every KmsKeyMaterial must
# unwrap, bound to its KmsKey. Prints ids, specs and counts, never material. Exit 0 only
# when the snapshot restores and every key unwraps. Nothing outlives the script.
#
# Usage: hack/dr-check-backup.sh --snapshot FILE --root-key FILE
#                                [--tools-bin DIR] [--plugin-bin PATH] [--timeout SECS]
#   --tools-bin DIR    etcd, etcdctl, etcdutl (default: hack/tools/build.sh --print-dir)
#   --plugin-bin PATH  kubekms-plugin (default: on PATH)
set -euo pipefail
unset "${!ETCDCTL_@}"

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { echo "[dr-check] $*" >&2; }
die() { echo "[dr-check] error: $*" >&2; exit 1; }
usage() { awk 'NR == 1 { next } !/^#/ { exit } { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; }

SNAPSHOT="" ROOT_KEY="" TOOLS_BIN="" PLUGIN_BIN="" TIMEOUT=60
while (($#)); do
  case "$1" in
    --snapshot) SNAPSHOT="${2:?}"; shift 2 ;;
    --root-key) ROOT_KEY="${2:?}"; shift 2 ;;
    --tools-bin) TOOLS_BIN="${2:?}"; shift 2 ;;
    --plugin-bin) PLUGIN_BIN="${2:?}"; shift 2 ;;
    --timeout) TIMEOUT="${2:?}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
[[ -f "${SNAPSHOT}" ]] || die "--snapshot ${SNAPSHOT:-(none)}: no such file"
[[ -n "${ROOT_KEY}" ]] || die "--root-key is required"
[[ -n "${TOOLS_BIN}" ]] || TOOLS_BIN="$("${HACK_DIR}/tools/build.sh" --print-dir)"
[[ -n "${PLUGIN_BIN}" ]] || PLUGIN_BIN="$(command -v kubekms-plugin || true)"
[[ -x "${PLUGIN_BIN}" ]] || die "kubekms-plugin not found (give --plugin-bin)"
for b in etcd etcdctl etcdutl; do
  [[ -x "${TOOLS_BIN}/${b}" ]] || die "${TOOLS_BIN}/${b} is missing; run hack/tools/build.sh"
done

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() {
  local port i
  for ((i = 0; i < 200; i++)); do
    port=$((20000 + RANDOM % 12000))
    if [[ "${port}" != "${1:-}" ]] && ! port_in_use "${port}"; then echo "${port}"; return 0; fi
  done
  die "found no free loopback port"
}

work="$(mktemp -d "${TMPDIR:-/tmp}/kubekms-dr-check.XXXXXX")"
etcd_pid=""
cleanup() {
  if [[ -n "${etcd_pid}" ]]; then
    kill "${etcd_pid}" 2>/dev/null || true
    wait "${etcd_pid}" 2>/dev/null || true
  fi
  rm -rf "${work}"
}
trap cleanup EXIT

client_port="$(pick_port)"
peer_port="$(pick_port "${client_port}")"
peer="http://127.0.0.1:${peer_port}"
client="http://127.0.0.1:${client_port}"

"${TOOLS_BIN}/etcdutl" snapshot status "${SNAPSHOT}" -w table >&2 ||
  die "${SNAPSHOT} is not a readable etcd snapshot"
"${TOOLS_BIN}/etcdutl" snapshot restore "${SNAPSHOT}" --data-dir "${work}/etcd" --name check \
  --initial-cluster "check=${peer}" --initial-advertise-peer-urls "${peer}" \
  >"${work}/restore.log" 2>&1 || { cat "${work}/restore.log" >&2; die "etcdutl snapshot restore failed"; }
"${TOOLS_BIN}/etcd" --name check --data-dir "${work}/etcd" \
  --listen-client-urls "${client}" --advertise-client-urls "${client}" \
  --listen-peer-urls "${peer}" --initial-advertise-peer-urls "${peer}" \
  --initial-cluster "check=${peer}" --log-level warn >"${work}/etcd.log" 2>&1 &
etcd_pid=$!
deadline=$((SECONDS + TIMEOUT))
until "${TOOLS_BIN}/etcdctl" --endpoints "${client}" --command-timeout=2s endpoint health >/dev/null 2>&1; do
  kill -0 "${etcd_pid}" 2>/dev/null || { cat "${work}/etcd.log" >&2; die "etcd exited"; }
  ((SECONDS < deadline)) || { cat "${work}/etcd.log" >&2; die "etcd not healthy after ${TIMEOUT}s"; }
  sleep 0.2
done
"${TOOLS_BIN}/etcdctl" --endpoints "${client}" --command-timeout=30s \
  get --prefix /registry/kubekms.io/ --print-value-only >"${work}/objects.json"
log "snapshot ${SNAPSHOT} restored into a scratch etcd; verifying with ${ROOT_KEY}"
"${PLUGIN_BIN}" verify --root-key "${ROOT_KEY}" --objects "${work}/objects.json"
