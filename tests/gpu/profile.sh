#!/usr/bin/env bash
# Nsight Compute (ncu) profile of CUDA kernels of the GPU checks' op timing table, on a machine
# with a GPU and ncu:
#   tests/gpu/profile.sh BUNDLE [ncu kernel selection...]
# e.g. the first bf16 decode attention of the table (after 51 float32 ones and their merges):
#   profile.sh BUNDLE --kernel-name regex:'DecodeAttention|CombineKernel' --launch-skip 102 \
#     --launch-count 2
# The checks themselves are filtered out (MPLUS_PROFILE_TESTS, a gtest filter, selects some), so
# launch counts follow the table in tests/gpu/gpu_bench.cc. Prints ncu's speed-of-light,
# occupancy, launch, warp-state and memory sections.
set -uo pipefail

dir=${1:?usage: profile.sh BUNDLE [ncu args...]}
shift
bin="$dir/mplus_gpu_check"
objects=("$bin")
# shellcheck source=tests/gpu/env.sh
source "$(dirname "$0")/env.sh"
if ! command -v ncu >/dev/null; then
  echo "profile.sh: ncu (Nsight Compute) not found" >&2
  exit 2
fi
exec ncu --section SpeedOfLight --section Occupancy --section LaunchStats \
  --section WarpStateStats --section MemoryWorkloadAnalysis "$@" \
  "$bin" --gtest_color=no --gtest_filter="${MPLUS_PROFILE_TESTS:--*}"
