#!/usr/bin/env bash
# Runs every test of the workspace: formatting, lints, unit, integration and end-to-end.
#
#   1. hack/install-deps.sh and hack/tools/build.sh (kube-apiserver, kubectl, etcd;
#      cached outside the clone, rebuilt only when a pin changes)
#   2. shellcheck of hack/ and .ci/ (when shellcheck is installed), cargo fmt --check,
#      cargo clippy --workspace --all-targets -- -D warnings
#   3. a real control plane (hack/control-plane.sh up) for the e2e tests, stopped by a
#      trap on exit, Ctrl-C or TERM, and by the launcher's watchdog if this script is
#      killed outright
#   4. cargo test --workspace with KUBEKMS_E2E_STATE naming that control plane, then the
#      Wycheproof vector counts of kms-core
#   5. as root, the tests that are #[ignore]d in the workspace run: the node (containerd,
#      kubelet, pods, the plugin as a static pod; e2e/tests/node.rs, ~4 min), the README's
#      `hack/local-up.sh --node` (e2e/tests/local_up_node.rs, ~1 min) and the partition
#      drills between control-plane hosts in network namespaces (e2e/tests/multi_host.rs,
#      ~8 min)
#   6. every fuzz target for a short bounded time on its committed seed corpus
#      (hack/fuzz.sh --quick, under AddressSanitizer; docs/reliability.md)
#
# Extra arguments replace `--workspace`: they go to `cargo test` and choose what runs,
# e.g. `hack/test.sh -p kubekms-e2e`, `hack/test.sh -p kubekms-e2e --test e2e`,
# `hack/test.sh -p kubekms-core -- wycheproof`. Steps 1-3 run all the same (whole
# workspace); steps 5 and 6 and the Wycheproof counts run only without arguments.
#
# The shared control plane encrypts Secrets with the kubekms KMS v2 plugin (built here,
# its state folder made by `kubekms-plugin init` inside the control plane's state folder);
# KUBEKMS_KMS_SOCKET / KUBEKMS_PLUGIN_CMD, when set, replace it with another plugin
# (KUBEKMS_KMS_SOCKET alone must name a socket a plugin serves already). The plugin's own
# e2e tests (e2e/tests/plugin.rs) start private control planes, since they restart
# kube-apiserver and the plugin.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO_ROOT}"

log() { echo "[test] $*" >&2; }
die() { echo "[test] error: $*" >&2; exit 1; }
start=${SECONDS}

if (($#)); then
  test_selection=("$@")
else
  test_selection=(--workspace)
fi
if [[ -n "${KUBEKMS_KMS_SOCKET:-}" && -z "${KUBEKMS_PLUGIN_CMD:-}" && ! -S "${KUBEKMS_KMS_SOCKET}" ]]; then
  die "KUBEKMS_KMS_SOCKET=${KUBEKMS_KMS_SOCKET} is set, KUBEKMS_PLUGIN_CMD is not, and nothing serves that socket. Unset KUBEKMS_KMS_SOCKET to test with the kubekms plugin (it may be left over from an older 'eval \"\$(hack/control-plane.sh env)\"'), or start your plugin first"
fi

hack/install-deps.sh
TOOLS_BIN="$(hack/tools/build.sh --print-dir)"

if command -v shellcheck >/dev/null 2>&1; then
  log "shellcheck"
  shellcheck hack/*.sh hack/lib/*.sh hack/tools/*.sh .ci/run
fi
log "cargo fmt --check"
cargo fmt --all --check
log "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
log "dependency audit (offline RustSec database)"
hack/audit.sh
log "building the tests (cargo test ${test_selection[*]})"
cargo test --no-run "${test_selection[@]}"
# The three binaries in one build, as the e2e harness builds them (same packages, so the
# same feature resolution: the harness's own build then finds nothing to do).
log "building the kubekms plugin, operator and server"
cargo build --bins -p kubekms-plugin -p kubekms-operator -p kubekms-server
target_dir="${CARGO_TARGET_DIR:-target}"
[[ "${target_dir}" == /* ]] || target_dir="${REPO_ROOT}/${target_dir}"
export KUBEKMS_PLUGIN_BIN="${target_dir}/debug/kubekms-plugin"

state="$(mktemp -d "${TMPDIR:-/tmp}/kubekms-test.XXXXXX")"
cleanup() {
  local rc=$?
  hack/control-plane.sh down --state-dir "${state}" || true
  if ((rc == 0)); then
    rm -rf "${state}"
  else
    log "failed (exit ${rc}); control-plane logs kept in ${state}/logs"
  fi
  exit "${rc}"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

plugin_args=()
if [[ -z "${KUBEKMS_PLUGIN_CMD:-}" && -z "${KUBEKMS_KMS_SOCKET:-}" ]]; then
  "${KUBEKMS_PLUGIN_BIN}" init --state-dir "${state}/kubekms-plugin" >/dev/null
  plugin_args=(--kms-socket "${state}/kms.sock" --plugin-cmd
    "exec $(printf '%q ' "${KUBEKMS_PLUGIN_BIN}" serve --state-dir "${state}/kubekms-plugin" --socket "${state}/kms.sock")")
fi
hack/control-plane.sh up --state-dir "${state}" --tools-bin "${TOOLS_BIN}" --watch-pid "$$" "${plugin_args[@]}" >/dev/null

log "cargo test ${test_selection[*]} (e2e against ${state})"
KUBEKMS_E2E_STATE="${state}" cargo test "${test_selection[@]}"
if (($#)); then
  log "selected tests passed in $((SECONDS - start))s (Wycheproof counts: run without arguments)"
else
  log "Wycheproof vector counts"
  cargo test -q -p kubekms-core --test wycheproof -- --show-output 2>&1 | grep -E '^wycheproof '
  if [[ "$(id -u)" == "0" ]]; then
    log "the node: containerd, kubelet, pods, the plugin as a static pod (e2e/tests/node.rs)"
    cargo test -p kubekms-e2e --test node -- --include-ignored
    log "the README's first command, hack/local-up.sh --node, then down leaves nothing (e2e/tests/local_up_node.rs)"
    cargo test -p kubekms-e2e --test local_up_node -- --include-ignored
    log "partitions between control-plane hosts in network namespaces (e2e/tests/multi_host.rs)"
    cargo test -p kubekms-e2e --test multi_host -- --include-ignored --test-threads 1
  else
    log "skipped, they need root: the node, local-up --node and multi-host tests (cargo test -p kubekms-e2e --test node|local_up_node|multi_host -- --include-ignored)"
  fi
  log "fuzz targets, each ${KUBEKMS_FUZZ_QUICK_SECONDS:-15}s on its seed corpus (hack/fuzz.sh --quick)"
  hack/fuzz.sh --quick
  log "all tests passed in $((SECONDS - start))s"
fi
