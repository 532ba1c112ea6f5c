#!/usr/bin/env bash
# Runs the GPU checks and prints the timing table on a machine with an NVIDIA GPU.
#   tests/gpu/run.sh [DIR (default: build/tests/gpu)]
# DIR holds the prebuilt binaries; when DIR/lib exists (a bundle from tests/gpu/package.sh) the
# libraries in it are used. Needs the CUDA 13 runtime + cuBLAS (from /usr/local/cuda or
# CUDA_HOME) and a driver that supports CUDA 13. Exits non-zero when any check fails.
set -uo pipefail

dir=${1:-build/tests/gpu}
bin="$dir/mplus_gpu_check"
if [[ ! -x $bin ]]; then
  echo "run.sh: $bin not found (build mplus_gpu_check, or pass the bundle from package.sh)" >&2
  exit 2
fi

cuda_home=${CUDA_HOME:-/usr/local/cuda}
libpath="$cuda_home/lib64:$cuda_home/lib"
[[ -d $dir/lib ]] && libpath="$dir/lib:$libpath"
# The machine may carry CUDA 13's cuBLAS in a Python wheel rather than the toolkit.
if command -v python3 >/dev/null; then
  wheel_libs=$(python3 - <<'PY' 2>/dev/null
import glob, os, site
dirs = set()
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    for so in glob.glob(os.path.join(sp, "nvidia", "*", "lib", "lib*.so.13")):
        dirs.add(os.path.dirname(so))
print(":".join(sorted(dirs)))
PY
  )
  [[ -n $wheel_libs ]] && libpath="$libpath:$wheel_libs"
fi
export LD_LIBRARY_PATH="$libpath${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# Our libstdc++ only when the system's is too old for the binary.
if [[ -d $dir/lib/compat ]] && ldd "$bin" 2>&1 | grep -q "version .GLIBCXX\|version .CXXABI"; then
  export LD_LIBRARY_PATH="$dir/lib/compat:$LD_LIBRARY_PATH"
fi
if ldd "$bin" | grep -q "not found"; then
  echo "run.sh: missing shared libraries:" >&2
  ldd "$bin" | grep "not found" >&2
  exit 2
fi

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total \
  --format=csv,noheader
# Checks then the timing table; the whole run is bounded well under 8 minutes.
timeout --signal=KILL 420 "$bin" --gtest_color=no "${@:2}"
rc=$?
if ((rc == 137)); then echo "run.sh: timed out after 420 s" >&2; fi
echo "run.sh: exit status $rc"
exit $rc
