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
#   4. the operator (kubekms-operator, same root key file as the plugin), started with
#      `hack/control-plane.sh start-process` so that `down` and the watchdog stop it;
#   5. the admission policy deploy/admission/ and the samples deploy/samples/ (KmsKey
#      app-key, KmsAlias alias/app, KmsGrant for a ServiceAccount in kubekms-demo), waiting
#      until the keys are Enabled and the alias and grant Ready;
#   6. a demo Secret, what etcd stores for it, and how to use it all.
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
#   KUBEKMS_PLUGIN_BIN, KUBEKMS_OPERATOR_BIN
#                            use these binaries instead of `cargo build`.
#   KUBEKMS_KMS_SOCKET / KUBEKMS_PLUGIN_CMD
#                            another KMS plugin instead (see hack/control-plane.sh --help):
#                            no hand-over then, but the operator and samples still run
#                            (with a root key of their own in $KUBEKMS_LOCAL_STATE/kubekms-operator).
#                            KUBEKMS_KMS_SOCKET alone must name a socket that a plugin
#                            serves already; the script stops at once if nothing does.
#   KUBEKMS_LOCAL_UP_TIMEOUT seconds to wait for each KubeKMS object (default 120).
# Extra arguments go to `hack/control-plane.sh up` (e.g. --watch-pid PID, --tools-bin DIR).
set -euo pipefail

# This script's etcdctl and kubectl talk to the control plane it starts or reuses (the env
# of that one is sourced below), not to what a user's shell exported for another one.
unset "${!ETCDCTL_@}" KUBECONFIG

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO_ROOT}"
log() { echo "[local-up] $*" >&2; }
die() { echo "[local-up] error: $*" >&2; exit 1; }

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
# Both packages in one build, as hack/test.sh and the e2e harness build them (one feature
# resolution, so the three never rebuild each other's binaries).
build=()
[[ -n "${KUBEKMS_PLUGIN_BIN:-}" ]] || build+=(-p kubekms-plugin)
[[ -n "${KUBEKMS_OPERATOR_BIN:-}" ]] || build+=(-p kubekms-operator)
if ((${#build[@]})); then
  log "building the kubekms plugin and operator (cargo build ${build[*]})"
  cargo build --quiet "${build[@]}"
fi
[[ -x "${plugin_bin}" ]] || die "${plugin_bin} is not an executable"
[[ -x "${operator_bin}" ]] || die "${operator_bin} is not an executable"

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
  log "the control plane of the last run is still running (${state}); reusing it"
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
  state="$(hack/control-plane.sh up "${cp_args[@]}" "$@")"
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
  echo "---- last 40 lines of ${operator_log} ----" >&2
  tail -n 40 "${operator_log}" >&2 2>/dev/null || echo "(no log)" >&2
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
    "${plugin_bin}" export --namespace "${KEY_NS}" --name "${KEY_NAME}" --state-dir "${plugin_state}" |
      kubectl apply --server-side -f - >/dev/null
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

operator_pid_file="${state}/pids/kubekms-operator.pid"
if hack/control-plane.sh status --state-dir "${state}" | grep -q '^kubekms-operator: running'; then
  log "the operator is running already (pid $(cut -d' ' -f1 "${operator_pid_file}"))"
else
  metrics_port=""
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + RANDOM % 12000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/${p}") 2>/dev/null; then
      metrics_port="${p}"
      break
    fi
  done
  [[ -n "${metrics_port}" ]] || die "found no free loopback port for the operator's /metrics"
  hack/control-plane.sh start-process kubekms-operator --state-dir "${state}" -- "${operator_bin}" "${root_key_args[@]}" \
    --lease-namespace "${KEY_NS}" --metrics-addr "127.0.0.1:${metrics_port}" --log-format text
fi
# The address of /metrics, from the running operator's command line.
operator_metrics="$(tr '\0' '\n' <"/proc/$(cut -d' ' -f1 "${operator_pid_file}")/cmdline" 2>/dev/null |
  sed -n '/^--metrics-addr$/{n;p;q}')" || true

log "samples (deploy/samples/): KmsKey app-key, KmsAlias alias/app, KmsGrant app in ${DEMO_NS}"
kubectl apply --server-side -f deploy/samples/ >/dev/null

log "waiting for the operator (at most ${WAIT_TIMEOUT}s each)"
if ${handover}; then
  wait_obj 'jsonpath={.status.keyState}=Enabled' "${KEY_NS}" "kmskey/${KEY_NAME}"
fi
wait_obj 'jsonpath={.status.keyState}=Enabled' "${DEMO_NS}" kmskey/app-key
wait_obj condition=Ready "${DEMO_NS}" kmsalias/app kmsgrant/app

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
  plugin_note="
The plugin follows KmsKey ${KEY_NS}/${KEY_NAME} (log: ${state}/logs/kms-plugin.log, its keys in ${plugin_state}):

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
  rotate_note="Rotate the key kube-apiserver encrypts with, on demand (the operator adds a version, the
plugin follows within a second, kube-apiserver writes under the new key_id within a minute,
then the operator re-encrypts every Secret under it; see docs/operator.md):

  kubectl patch kmskey ${KEY_NAME} -n ${KEY_NS} --type=merge -p '{\"spec\":{\"rotation\":{\"onDemandToken\":\"'\$(date +%s)'\"}}}'
  kubectl get kmskey ${KEY_NAME} -n ${KEY_NS} -o jsonpath='{.status.reencryption}'; echo   # WaitingForPlugins, Rewriting, Done
"
else
  rotate_note="Rotate the sample key on demand (the Secrets' key belongs to the plugin given in KUBEKMS_KMS_SOCKET):

  kubectl patch kmskey app-key -n ${DEMO_NS} --type=merge -p '{\"spec\":{\"rotation\":{\"onDemandToken\":\"'\$(date +%s)'\"}}}'
"
fi

kept_note="the keys stay in ${plugin_state}"
if ! ${handover}; then kept_note="the operator's root key stays in ${root_key}"; fi

reuse_note=""
if ${reused}; then reuse_note=", reusing the control plane that was running"; fi

cat <<MSG

KubeKMS is up${reuse_note} (state, certificates and logs in ${state}).
  kube-apiserver   ${apiserver_url}   log: ${state}/logs/kube-apiserver.log
  etcd             ${etcd_endpoint}   log: ${state}/logs/etcd.log
  kubekms-operator /metrics on ${operator_metrics:-?}   log: ${operator_log}
${plugin_note}${demo_note}
Use it from your shell:

  eval "\$(${cp_cmd} env${cp_dir_arg})"     # sets KUBECONFIG, ETCDCTL_ENDPOINTS, PATH to the built kubectl/etcdctl
  # or: export KUBECONFIG=${KUBECONFIG}

  kubectl get kmskeys -A                      # keys, their ids, states and next rotations
  kubectl get kmsaliases,kmsgrants -n ${DEMO_NS}
  kubectl create secret generic demo --from-literal=password=s3cr3t
  etcdctl get /registry/secrets/default/demo --print-value-only | hexdump -C | head

${kms_note}

${rotate_note}
Stop it (stops the operator, the plugin, kube-apiserver and etcd; ${kept_note}):

  ${cp_cmd} down${cp_dir_arg}
MSG
