#!/usr/bin/env bash
# The venv of the pinned grpcio (hack/tools/grpcio/requirements.txt): gRPC C-core, the
# client of another gRPC implementation that kms-plugin/tests/grpcio.rs runs against the
# plugin's socket. Made and cached by hack/tools/python.sh (see there).
#
# Usage: hack/tools/grpcio.sh [--print-dir]
#   --print-dir   print the venv's bin folder on stdout (and nothing else) once it is
#                 ready: "$(hack/tools/grpcio.sh --print-dir)/python -c 'import grpc'"
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/python.sh" --set grpcio "$@"
