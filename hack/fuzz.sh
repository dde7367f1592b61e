#!/usr/bin/env bash
# Builds and runs the cargo-fuzz targets of fuzz/ (see docs/reliability.md).
#
# Usage: hack/fuzz.sh [--quick | --full | --build] [TARGET...]
#   --quick   (default) each target for ${KUBEKMS_FUZZ_QUICK_SECONDS:-15} s on its committed
#             seed corpus: the bounded run CI makes
#   --full    each target until ${KUBEKMS_FUZZ_RUNS:-10000000} executions or
#             ${KUBEKMS_FUZZ_SECONDS:-1800} s, whichever comes first, one after another;
#             the figures go to ${KUBEKMS_FUZZ_RESULTS:-fuzz/results.tsv} (appended)
#   --build   build the targets only
#   TARGET... only these targets (default: every target of fuzz/Cargo.toml)
#
# A target with a dictionary (fuzz/dicts/TARGET.dict) runs with it.
# Every run is under AddressSanitizer with LeakSanitizer (libFuzzer's defaults), with a
# 10 s limit per input and 2 GiB of memory. New inputs found go to a temporary folder,
# not to fuzz/corpus (which holds the small committed seeds); a crash, leak or timeout
# leaves its input in fuzz/artifacts/TARGET/ and makes the script exit 1 after the other
# targets ran.
#
# Tooling, installed by this script when missing:
# - cargo-fuzz ${CARGO_FUZZ_VERSION}, `cargo install --locked` into
#   ${KUBEKMS_TOOLS_CACHE:-$HOME/.cache/kubekms/tools}/cargo-fuzz-<version> (once per machine);
# - no nightly toolchain: cargo-fuzz needs unstable flags (-Zsanitizer=address), and a
#   machine that reaches only package registries cannot download a nightly with rustup,
#   so the stable toolchain the project builds with runs with RUSTC_BOOTSTRAP=1 (its
#   AddressSanitizer runtime ships with rust-std on x86_64-unknown-linux-gnu).
#   KUBEKMS_FUZZ_TOOLCHAIN=nightly uses an installed nightly instead (`cargo +nightly`).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CARGO_FUZZ_VERSION=0.13.2
mode=quick
targets=()
for arg in "$@"; do
  case "${arg}" in
    --quick) mode=quick ;;
    --full) mode=full ;;
    --build) mode=build ;;
    -h|--help) sed -n '2,29p' "${BASH_SOURCE[0]}"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option: ${arg}" >&2; exit 2 ;;
    *) targets+=("${arg}") ;;
  esac
done

log() { echo "[fuzz] $*" >&2; }

# cargo-fuzz, pinned, in the tools cache (a failed install leaves nothing behind).
cache_root="${KUBEKMS_TOOLS_CACHE:-${HOME}/.cache/kubekms/tools}"
fuzz_root="${cache_root}/cargo-fuzz-${CARGO_FUZZ_VERSION}"
if [[ ! -x "${fuzz_root}/bin/cargo-fuzz" ]]; then
  log "installing cargo-fuzz ${CARGO_FUZZ_VERSION} into ${fuzz_root}"
  mkdir -p "${cache_root}"
  rm -rf "${fuzz_root}.partial"
  cargo install --locked --quiet cargo-fuzz --version "${CARGO_FUZZ_VERSION}" \
    --root "${fuzz_root}.partial"
  rm -rf "${fuzz_root}"
  mv "${fuzz_root}.partial" "${fuzz_root}"
fi
export PATH="${fuzz_root}/bin:${PATH}"

cargo_cmd=(cargo)
if [[ -n "${KUBEKMS_FUZZ_TOOLCHAIN:-}" ]]; then
  cargo_cmd=(cargo "+${KUBEKMS_FUZZ_TOOLCHAIN}")
else
  export RUSTC_BOOTSTRAP=1
fi

cd "${REPO_ROOT}"
if ((${#targets[@]} == 0)); then
  # The [[bin]]s under fuzz_targets/ (make-seeds is a bin, not a target).
  mapfile -t targets < <(sed -n 's|^path = "fuzz_targets/\(.*\)\.rs"$|\1|p' fuzz/Cargo.toml)
fi

start=${SECONDS}
log "building ${#targets[@]} targets (release, debug assertions, AddressSanitizer)"
"${cargo_cmd[@]}" fuzz build
log "built in $((SECONDS - start))s"
if [[ "${mode}" == build ]]; then
  exit 0
fi

case "${mode}" in
  quick) limits=(-max_total_time="${KUBEKMS_FUZZ_QUICK_SECONDS:-15}") ;;
  full) limits=(-max_total_time="${KUBEKMS_FUZZ_SECONDS:-1800}" -runs="${KUBEKMS_FUZZ_RUNS:-10000000}") ;;
esac
results="${KUBEKMS_FUZZ_RESULTS:-${REPO_ROOT}/fuzz/results.tsv}"
if [[ "${mode}" == full && ! -f "${results}" ]]; then
  printf 'date\tcommit\ttarget\texecutions\tseconds\texec_per_s\tpeak_rss_mb\tcorpus\tresult\n' >"${results}"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/kubekms-fuzz.XXXXXX")"
trap 'rm -rf "${work}"' EXIT
failed=()
for target in "${targets[@]}"; do
  seeds="fuzz/corpus/${target}"
  if [[ ! -d "${seeds}" ]]; then
    log "error: ${target} has no seed corpus in ${seeds}"
    failed+=("${target}")
    continue
  fi
  mkdir -p "${work}/${target}" "fuzz/artifacts/${target}"
  extra=()
  if [[ -f "fuzz/dicts/${target}.dict" ]]; then
    extra+=(-dict="fuzz/dicts/${target}.dict")
  fi
  log "${target}: ${limits[*]} ${extra[*]}"
  began=${SECONDS}
  rc=0
  "${cargo_cmd[@]}" fuzz run "${target}" "${work}/${target}" "${seeds}" -- \
    "${limits[@]}" "${extra[@]}" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"${work}/${target}.log" 2>&1 || rc=$?
  seconds=$((SECONDS - began))
  stat() { sed -n "s/^stat::$1: *//p" "${work}/${target}.log" | tail -1; }
  executions="$(stat number_of_executed_units)"
  rate="$(stat average_exec_per_sec)"
  rss="$(stat peak_rss_mb)"
  corpus="$(find "${work}/${target}" "${seeds}" -type f | wc -l)"
  if ((rc == 0)); then
    result=ok
  else
    result="FAILED (exit ${rc})"
    failed+=("${target}")
    grep -E 'ERROR: |SUMMARY: |panicked at|Test unit written' "${work}/${target}.log" | head -20 >&2 || true
    cp "${work}/${target}.log" "fuzz/artifacts/${target}/last-run.log"
  fi
  log "${target}: ${result}: ${executions:-?} executions in ${seconds}s (${rate:-?}/s), peak RSS ${rss:-?} MB, corpus ${corpus}"
  if [[ "${mode}" == full ]]; then
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" \
      "$(git rev-parse --short HEAD)" "${target}" "${executions:-?}" "${seconds}" \
      "${rate:-?}" "${rss:-?}" "${corpus}" "${result}" >>"${results}"
  fi
done

log "done in $((SECONDS - start))s"
if ((${#failed[@]})); then
  log "failed: ${failed[*]} (inputs and logs in fuzz/artifacts/)"
  exit 1
fi
