#!/usr/bin/env bash
# Installs dependencies, builds everything (CUDA code too when nvcc exists) and runs the whole
# test suite with ctest: unit tests, goldens against the official code, integration tests with
# the real server, the checkpoint-validation tests again under AddressSanitizer and the thread
# pool's tests under ThreadSanitizer.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh
ctest --test-dir "${MPLUS_BUILD_DIR:-build}" --output-on-failure -j "${MPLUS_TEST_JOBS:-2}"

# Malformed-input tests once more under ASan (engine only: quick to build), and the decoder LoRA
# merge, whose merged weights the CPU backend reads in place (a lifetime slip would not fail a
# plain run).
ASAN_DIR=${MPLUS_ASAN_BUILD_DIR:-build-asan}
MPLUS_BUILD_DIR=$ASAN_DIR MPLUS_CMAKE_ARGS="-DMPLUS_SANITIZE=address -DMPLUS_CUDA=OFF" \
  ./scripts/build.sh bad_checkpoint_test safetensors_test lora_merge_test mplus-probe \
  mplus-compare-golden
ctest --test-dir "$ASAN_DIR" --output-on-failure \
  -R 'unit\.(bad_checkpoint|safetensors|lora_merge)_test|merged-lora'

# The thread pool (shared by every host loop and the CPU backend) under TSan: common/ only.
TSAN_DIR=${MPLUS_TSAN_BUILD_DIR:-build-tsan}
MPLUS_BUILD_DIR=$TSAN_DIR MPLUS_CMAKE_ARGS="-DMPLUS_SANITIZE=thread -DMPLUS_CUDA=OFF" \
  ./scripts/build.sh common_test
ctest --test-dir "$TSAN_DIR" --output-on-failure -R 'unit\.common_test'
