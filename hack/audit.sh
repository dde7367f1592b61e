#!/usr/bin/env bash
# Offline dependency audit: cargo-audit against the RustSec advisory database copy in
# ../shared/advisory-db (no network). Fails on any advisory that affects Cargo.lock, and on
# the RustCrypto `rsa` crate appearing at all (RUSTSEC-2023-0071, Marvin, is unpatched).
#
#   hack/audit.sh            audit; installs cargo-audit with `cargo install` when missing
#   KUBEKMS_ADVISORY_DB=DIR  another copy of the database
#   KUBEKMS_REQUIRE_AUDIT=1  fail, rather than skip, when the database is missing (.ci/run
#                            sets it: CI always has ../shared beside the clone)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO_ROOT}"
db="${KUBEKMS_ADVISORY_DB:-${REPO_ROOT}/../shared/advisory-db}"

if [[ ! -d "${db}/crates" ]]; then
  if [[ "${KUBEKMS_REQUIRE_AUDIT:-0}" == 1 ]]; then
    echo "[audit] no advisory database at ${db}; set KUBEKMS_ADVISORY_DB" >&2
    exit 1
  fi
  echo "[audit] SKIPPED: no advisory database at ${db} (set KUBEKMS_ADVISORY_DB to audit)" >&2
  exit 0
fi
if ! command -v cargo-audit >/dev/null 2>&1; then
  echo "[audit] installing cargo-audit" >&2
  cargo install cargo-audit --locked
fi
if cargo tree --workspace -i rsa >/dev/null 2>&1; then
  echo "[audit] the RustCrypto rsa crate is in the dependency tree (RUSTSEC-2023-0071 is unpatched)" >&2
  cargo tree --workspace -i rsa >&2
  exit 1
fi
cargo audit --db "${db}" --no-fetch --stale --deny warnings
