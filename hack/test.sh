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
#   4. cargo test --workspace with KUBEKMS_E2E_STATE naming that control plane
#
# The shared control plane encrypts Secrets with the kubekms KMS v2 plugin (built here,
# its state folder made by `kubekms-plugin init` inside the control plane's state folder);
# KUBEKMS_KMS_SOCKET / KUBEKMS_PLUGIN_CMD, when set, replace it with another plugin. The
# plugin's own e2e tests (e2e/tests/plugin.rs) start private control planes, since they
# restart kube-apiserver and the plugin. Extra arguments go to `cargo test` (e.g.
# hack/test.sh -p kubekms-e2e).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO_ROOT}"

log() { echo "[test] $*" >&2; }
start=${SECONDS}

hack/install-deps.sh
TOOLS_BIN="$(hack/tools/build.sh --print-dir)"

if command -v shellcheck >/dev/null 2>&1; then
  log "shellcheck"
  shellcheck hack/*.sh hack/tools/*.sh .ci/run
fi
log "cargo fmt --check"
cargo fmt --all --check
log "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
log "dependency audit (offline RustSec database)"
hack/audit.sh
log "building the tests"
cargo test --workspace --no-run "$@"
log "building the kubekms plugin"
cargo build -p kubekms-plugin --bin kubekms-plugin
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

log "cargo test --workspace (e2e against ${state})"
KUBEKMS_E2E_STATE="${state}" cargo test --workspace "$@"
log "Wycheproof vector counts"
cargo test -q -p kubekms-core --test wycheproof -- --show-output 2>&1 | grep -E '^wycheproof '
log "all tests passed in $((SECONDS - start))s"
