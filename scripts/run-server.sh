#!/usr/bin/env bash
# Installs dependencies, builds, and starts mplus-server in the foreground.
# Defaults: CPU backend, RocksDB under ./data, gRPC on 127.0.0.1:50051, metrics on
# 127.0.0.1:9464, and the bundled tiny demo checkpoint (random weights) unless --model=DIR is
# given. Any mplus-server flag may be passed (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh mplus-server
exec "${MPLUS_BUILD_DIR:-build}/server/mplus-server" "$@"
