#!/usr/bin/env bash
# The crash drill of issue 11 (see docs/reliability.md, "Crash drill"): on a private
# control plane (real etcd and kube-apiserver, the plugin following the API server's
# KmsKey, the operator), each trial rotates the key while writers keep applying and
# reading Secrets, SIGKILLs one component (the plugin, the operator, kube-apiserver or
# etcd, in turn from a seeded offset) at a seeded random point (shortly after the
# rotation, or inside the re-encryption pass), starts it again with the same command
# line, and checks: re-encryption Done for the new version, every acknowledged Secret
# reads back with its last acknowledged value, etcd holds every Secret under the new
# key_id, the KmsKey's record holds versions 1..n that all unwrap. It ends with a
# SUMMARY line (seed, kills per component, Secrets written/acknowledged, lost).
#
# Usage: hack/crash-drill.sh [--trials N] [--seed S] [--secrets N] [--release]
#   --trials N   trials (default 50; the test's own default, as CI runs it, is 3)
#   --seed S     replay a run: its seed is the first line it prints (default: random)
#   --secrets N  Secrets created before the first trial, rewritten by every pass
#                (default 3000; CI: 500)
#   --release    release build of the test and the binaries
#
# Needs the Go tools of hack/tools/build.sh. A trial takes 30-90 s (kube-apiserver
# notices a new key_id when it polls the plugin's Status, once a minute).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
trials=50 seed="" secrets=3000 profile=()
while (($#)); do
  case "$1" in
    --trials) trials="${2:?--trials needs a number}"; shift 2 ;;
    --seed) seed="${2:?--seed needs a number}"; shift 2 ;;
    --secrets) secrets="${2:?--secrets needs a number}"; shift 2 ;;
    --release) profile=(--release); shift ;;
    -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "hack/crash-drill.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
cd "${REPO_ROOT}"
export KUBEKMS_CRASH_TRIALS="${trials}" KUBEKMS_CRASH_SECRETS="${secrets}"
if [[ -n "${seed}" ]]; then export KUBEKMS_CRASH_SEED="${seed}"; else unset KUBEKMS_CRASH_SEED; fi
# A private control plane: never the suite's shared one.
unset KUBEKMS_E2E_STATE
exec cargo test "${profile[@]}" -p kubekms-e2e --test crash_drill -- --nocapture
