#!/usr/bin/env bash
# Runs the goldens on the CUDA backend (and on the CPU as a control), then the GPU checks with
# their op timing table, then the timing table of an 8B-shaped M+ checkpoint, on a machine with
# an NVIDIA GPU.
#   tests/gpu/run.sh [BUNDLE (default: build/gpu-bundle)] [gtest flags for mplus_gpu_check...]
# BUNDLE comes from tests/gpu/package.sh (`ninja mplus_gpu_bundle`); the libraries in BUNDLE/lib
# are used. Needs the CUDA 13 runtime + cuBLAS (from /usr/local/cuda, CUDA_HOME or a Python wheel)
# and a driver that supports CUDA 13. Prints one PASS/FAIL line per golden and device; runs
# everything even after a failure; exits non-zero when anything failed (a timing target missed is
# reported, not a failure). Bounded by MPLUS_GPU_RUN_SECONDS (default 470) in all, of which about
# half is kept for the 8B table: give the device call at least 30 s more. The table writes a ~21 GB
# random checkpoint to /dev/shm/mplus-8b-bench, or /tmp/mplus-8b-bench where /dev/shm has no room
# (kept, and reused by the next run on that machine).
set -uo pipefail

dir=${1:-build/gpu-bundle}
run_seconds=${MPLUS_GPU_RUN_SECONDS:-470}
deadline=$((SECONDS + run_seconds))
model_reserve=$((run_seconds * 240 / 470))
bin="$dir/mplus_gpu_check"
model_bench="$dir/mplus_gpu_model_bench"
probe="$dir/mplus-probe"
compare="$dir/mplus-compare-golden"
plugin="$dir/libmplus_cuda.so"
for f in "$bin" "$model_bench" "$probe" "$compare" "$plugin" "$dir/golden-tolerances.txt"; do
  if [[ ! -f $f ]]; then
    echo "run.sh: $f not found (pass the bundle from tests/gpu/package.sh)" >&2
    exit 2
  fi
done

objects=("$bin" "$model_bench" "$probe" "$compare" "$plugin")
# shellcheck source=tests/gpu/env.sh
source "$(dirname "$0")/env.sh"
failed=0
# Missing libraries are reported, and what can still run runs (the CPU control needs no CUDA).
if ldd "${objects[@]}" | grep -q "not found"; then
  echo "run.sh: missing shared libraries:" >&2
  ldd "${objects[@]}" | grep "^/\|not found" >&2
  failed=1
fi

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total \
  --format=csv,noheader

# Seconds a step may take: at most $1, and not past the deadline (but at least 1: timeout 0 would
# mean no limit).
budget() {
  local left=$((deadline - SECONDS))
  ((left < 1)) && left=1
  ((left < $1)) && echo "$left" || echo "$1"
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# run_goldens DEVICE [FIXTURE [PROBE_FLAG [LABEL]]]: every golden of every fixture in
# golden-tolerances.txt (or only FIXTURE) on DEVICE: mplus-probe [PROBE_FLAG] writes the
# intermediates, mplus-compare-golden checks them with the fixture's tolerance (as ctest does).
# LABEL names a rerun under a different environment in the output.
run_goldens() {
  local device=$1 only=${2:-} flag=${3:-} label=${4:-} passed=0 total=0 fixture tolerance
  local scenario n out log rc hung=0 name="$1${3:+ $3}${4:+ ($4)}"
  local -a args=(--device="$device")
  [[ $device == cuda ]] && args+=(--cuda_plugin="$plugin")
  [[ -n $flag ]] && args+=("$flag")
  while read -r fixture tolerance; do
    [[ -z $fixture || $fixture == \#* ]] && continue
    [[ -n $only && $fixture != "$only" ]] && continue
    for scenario in "$dir/fixtures/$fixture"/scenario-*.json; do
      n=${scenario##*/scenario-}
      n=${n%.json}
      out="$work/$device${flag//[^a-z0-9]/}${label//[^a-z0-9]/}-$fixture-$n.safetensors"
      log="${out%.safetensors}.log"
      total=$((total + 1))
      if ((SECONDS >= deadline)); then
        echo "FAIL golden $name $fixture scenario-$n: no time left"
        continue
      fi
      if ((hung)); then
        echo "FAIL golden $name $fixture scenario-$n: skipped, an earlier one hung"
        continue
      fi
      # A tiny golden takes a second or two: 30 s means a hang, and the rest would hang too
      # (one such run spent a whole device budget, 8 x 60 s; a hang in every rerun costs 3 x 30 s).
      timeout --signal=KILL "$(budget 30)" "$probe" "${args[@]}" --scenario "$scenario" \
        --out "$out" >"$log" 2>&1
      rc=$?
      if ((rc == 0)); then
        timeout --signal=KILL "$(budget 30)" "$compare" "$out" \
          "$dir/fixtures/$fixture/golden-$n.safetensors" "$tolerance" >"$log" 2>&1
        rc=$?
      fi
      if ((rc == 0)); then
        passed=$((passed + 1))
        echo "PASS golden $name $fixture scenario-$n (tolerance $tolerance)"
      else
        if ((rc == 137)); then
          echo "killed: out of time or memory" >>"$log"
          hung=1
        fi
        echo "FAIL golden $name $fixture scenario-$n (tolerance $tolerance): exit $rc"
        grep -v "^ok " "$log" | sed 's/^/    /'
      fi
    done
  done <"$dir/golden-tolerances.txt"
  echo "run.sh: goldens on $name: $passed of $total passed"
  ((passed == total))
}

if ! run_goldens cuda; then
  failed=1
  # Programmatic dependent launches and decode graphs are the newest orderings between kernels:
  # the same goldens without each tell a launch-order or replay bug from a kernel's in this one
  # run.
  MPLUS_CUDA_DEPENDENT_LAUNCH=0 run_goldens cuda "" "" "MPLUS_CUDA_DEPENDENT_LAUNCH=0"
  run_goldens cuda "" --replay_decode=false
fi
# The CUDA default folds the decoder LoRA into the weights (--merge_decoder_lora): the goldens
# again with the LoRA applied per product, so that a merge bug and a kernel bug tell apart.
run_goldens cuda "" --merge_decoder_lora=false || failed=1
run_goldens cpu || failed=1
# An fp8 KV cache holds the bf16 fixture's goldens at bf16's tolerance (as ctest checks on the CPU).
run_goldens cuda tiny-mplus-bf16 --kv_cache_dtype=fp8 || failed=1

# run_bounded RESERVE BINARY ARGS...: runs BINARY until RESERVE seconds before the deadline,
# prints and returns its exit status (124 when no time was left, 137 when killed).
run_bounded() {
  local reserve=$1 name=${2##*/} left status
  shift
  left=$((deadline - reserve - SECONDS))
  if ((left <= 0)); then
    echo "run.sh: no time left for $name" >&2
    status=124
  else
    timeout --signal=KILL "$left" "$@"
    status=$?
    ((status == 137)) && echo "run.sh: $name killed after $left s" >&2
  fi
  echo "run.sh: $name exit status $status"
  return $status
}

# Checks then their op timing table, in what is left of the run less the 8B table's share.
MPLUS_GPU_FIXTURES="$dir/fixtures" run_bounded "$model_reserve" "$bin" --gtest_color=no "${@:2}"
rc=$?
((rc == 0)) && rc=$failed
# Decode attention's pipelined tiles (MPLUS_CUDA_DECODE_PIPELINE=1, off by default until they
# pass here): the attention and decode checks again with the checks' backend pipelined.
MPLUS_CUDA_DECODE_PIPELINE=1 MPLUS_GPU_FIXTURES="$dir/fixtures" run_bounded "$model_reserve" \
  "$bin" --gtest_color=no --no_bench --gtest_filter='*Attention*:*Decode*'
pipelined_rc=$?
((rc == 0)) && rc=$pipelined_rc

# The 8B-shaped M+ timing table (markdown on stdout, progress on stderr), in what is left.
run_bounded 0 "$model_bench"
model_rc=$?
((rc == 0)) && rc=$model_rc
echo "run.sh: exit status $rc"
exit $rc
