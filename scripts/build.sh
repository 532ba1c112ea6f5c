#!/usr/bin/env bash
# Configures (once) and builds mplus into ${MPLUS_BUILD_DIR:-build}; incremental on re-runs.
# Extra arguments are ninja/make targets (default: everything).
set -euo pipefail
cd "$(dirname "$0")/.."
"$(pwd)/scripts/install-deps.sh"
BUILD_DIR=${MPLUS_BUILD_DIR:-build}
# ccache hits across clones in different folders (CI builds a fresh clone each time).
export CCACHE_BASEDIR="$(pwd)" CCACHE_NOHASHDIR=true
GENERATOR=()
if command -v ninja >/dev/null 2>&1; then GENERATOR=(-G Ninja); fi
if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
  cmake -S . -B "$BUILD_DIR" "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo ${MPLUS_CMAKE_ARGS:-}
fi
JOBS=${MPLUS_JOBS:-$(nproc)}
cmake --build "$BUILD_DIR" --parallel "$JOBS" ${1:+--target "$@"}
