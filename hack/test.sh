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
# KUBEKMS_KMS_SOCKET / KUBEKMS_PLUGIN_CMD, when set, are passed on to the launcher so the
# e2e suite runs with Secrets encrypted by the KMS v2 plugin. Extra arguments go to
# `cargo test` (e.g. hack/test.sh -p kubekms-e2e).
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
log "building the tests"
cargo test --workspace --no-run "$@"

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

hack/control-plane.sh up --state-dir "${state}" --tools-bin "${TOOLS_BIN}" --watch-pid "$$" >/dev/null

log "cargo test --workspace (e2e against ${state})"
KUBEKMS_E2E_STATE="${state}" cargo test --workspace "$@"
log "all tests passed in $((SECONDS - start))s"
