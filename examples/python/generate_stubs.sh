#!/usr/bin/env bash
# Generates the Python gRPC stubs of mplus.v1 into OUT_DIR (default: ./gen next to this script,
# which git ignores). Needs Debian's python3-grpcio and python3-grpc-tools
# (scripts/install-deps.sh installs them).
# Usage: examples/python/generate_stubs.sh [OUT_DIR]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PROTO_DIR=$(cd "$HERE/../../proto" && pwd)
OUT_DIR=${1:-$HERE/gen}

# The first interpreter with grpc_tools: $PYTHON, then python3 on PATH, then Debian's.
PY=""
for candidate in ${PYTHON:-} python3 /usr/bin/python3; do
  if command -v "$candidate" >/dev/null 2>&1 &&
     "$candidate" -c 'import grpc, grpc_tools.protoc' >/dev/null 2>&1; then
    PY=$candidate
    break
  fi
done
if [ -z "$PY" ]; then
  echo "generate_stubs: no python3 with grpcio and grpc_tools (apt-get install python3-grpcio python3-grpc-tools)" >&2
  exit 1
fi

mkdir -p "$OUT_DIR"
"$PY" -m grpc_tools.protoc -I"$PROTO_DIR" --python_out="$OUT_DIR" --grpc_python_out="$OUT_DIR" \
  "$PROTO_DIR/mplus/v1/memory_service.proto"
echo "stubs in $OUT_DIR (python: $PY)"
