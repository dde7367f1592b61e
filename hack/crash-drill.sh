#!/usr/bin/env bash
# The crash drill of issue 11 (see docs/reliability.md, "Crash drill"): on a private
# control plane (real etcd and kube-apiserver, the plugin following the API server's
# KmsKey, the operator, kubekms-server), each trial rotates the API server's key and the
# KMS client's key while writers keep applying and reading Secrets and a client of
# kubekms-server's AWS API keeps calling it (Encrypt, GenerateDataKey, Decrypt of earlier
# blobs, Sign, Verify); it SIGKILLs one component (the plugin, the operator,
# kube-apiserver, etcd or kubekms-server, in turn from a seeded offset) at a seeded point
# chosen by phase (mostly after a seeded number of Secrets of the re-encryption pass are
# rewritten, otherwise 0-4 s after the rotation), starts it again with the same command
# line, and checks: re-encryption Done for the new version, every acknowledged Secret
# reads back with its last acknowledged value, etcd holds every Secret under the new
# key_id, both keys' records hold versions 1..n that all unwrap, and every blob and
# signature the server acknowledged still decrypts or verifies through it. It ends with a
# SUMMARY line (seed, kills per component, phase at each kill, Secrets written and lost,
# server calls acknowledged and lost).
#
# Usage: hack/crash-drill.sh [--trials N] [--seed S] [--secrets N] [--release]
#   --trials N   trials (default 50, as runs of at most 25; the test's own default, as
#                CI runs it, is 3)
#   --seed S     replay one run (--trials 25 at most): its seed is the first line it
#                prints (default: random)
#   --secrets N  Secrets created before the first trial, rewritten by every pass
#                (default 3000; CI: 500)
#   --release    release build of the test and the binaries
#
# Needs the Go tools of hack/tools/build.sh. A trial takes 20-90 s (kube-apiserver
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
    -h | --help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "hack/crash-drill.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
cd "${REPO_ROOT}"
# Each trial rotates the keys on demand, 25 times at most per key (AWS KMS's quota): a
# longer drill is several runs of at most 25 trials, each on a new control plane with its
# own seed (printed first) and SUMMARY line. --seed replays one run.
per_run=25
if [[ -n "${seed}" ]] && ((trials > per_run)); then
  echo "hack/crash-drill.sh: --seed replays one run: --trials ${per_run} at most" >&2
  exit 2
fi
export KUBEKMS_CRASH_SECRETS="${secrets}"
# A private control plane: never the suite's shared one.
unset KUBEKMS_E2E_STATE
run=0 left="${trials}"
while ((left > 0)); do
  export KUBEKMS_CRASH_TRIALS=$((left < per_run ? left : per_run))
  if [[ -n "${seed}" ]]; then export KUBEKMS_CRASH_SEED="${seed}"; else unset KUBEKMS_CRASH_SEED; fi
  echo "hack/crash-drill.sh: run $((run + 1)): ${KUBEKMS_CRASH_TRIALS} trials" >&2
  cargo test "${profile[@]}" -p kubekms-e2e --test crash_drill -- --nocapture
  left=$((left - KUBEKMS_CRASH_TRIALS)) run=$((run + 1))
done
