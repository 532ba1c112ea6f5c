#!/usr/bin/env bash
# Bundles the prebuilt GPU checks and the CUDA goldens for tests/gpu/run.sh on a bare GPU machine:
# the binaries, the shared libraries they need that such a machine lacks (abseil, ...; not glibc,
# not the CUDA libraries), and the golden fixtures.
#   tests/gpu/package.sh [BUILD_DIR (default: build)] [OUT_DIR (default: BUILD_DIR/gpu-bundle)]
# BUILD_DIR must be configured with CUDA (-DMPLUS_CUDA=ON or AUTO with nvcc) and have built
#   ninja mplus_gpu_check mplus-probe mplus-compare-golden mplus_cuda_plugin
# `ninja -C BUILD_DIR mplus_gpu_bundle` builds those and runs this script into BUILD_DIR/gpu-bundle.
# Then carry OUT_DIR to the GPU machine and run: OUT_DIR/run.sh OUT_DIR (or tests/gpu/run.sh OUT_DIR).
# Bundle layout: the executables, libmplus_cuda.so, run.sh (+ env.sh, profile.sh) and
# golden-tolerances.txt at the top;
# lib/ (lib/compat/: libstdc++, used only where the system's is too old); fixtures/<name>/ as in
# tests/fixtures (scenario JSON finds its checkpoint by a relative path).
set -euo pipefail

build_dir=${1:-build}
out=${2:-$build_dir/gpu-bundle}
src=$(cd "$(dirname "$0")/../.." && pwd)
limit_bytes=$((64 * 1024 * 1024))

bins=()
for f in "$build_dir"/tests/gpu/*; do
  [[ -f $f && -x $f ]] && bins+=("$f")
done
# Where CMake puts the golden tools and the plugin (tools/, tests/golden/golden.cmake, engine/).
golden_files=("$build_dir/tools/mplus-probe" "$build_dir/tests/mplus-compare-golden"
  "$build_dir/engine/libmplus_cuda.so")
missing=()
((${#bins[@]} == 0)) && missing+=("$build_dir/tests/gpu/mplus_gpu_check")
for f in "${golden_files[@]}"; do
  [[ -f $f ]] || missing+=("$f")
done
if ((${#missing[@]} > 0)); then
  echo "package.sh: missing ${missing[*]} (configure $build_dir with -DMPLUS_CUDA=ON and build" \
    "mplus_gpu_check mplus-probe mplus-compare-golden mplus_cuda_plugin)" >&2
  exit 1
fi
objects=("${bins[@]}" "${golden_files[@]}")

rm -rf "$out"
mkdir -p "$out/lib/compat" "$out/fixtures"
for b in "${objects[@]}"; do
  # Debug info is most of the size and useless there.
  objcopy --strip-debug "$b" "$out/$(basename "$b")"
done

# Provided by the GPU machine: glibc and the loader, the driver, the CUDA toolkit libraries.
system_re='^(linux-vdso|ld-linux|libc\.so|libm\.so|libdl\.so|libpthread\.so|librt\.so|libcuda\.so|libcudart\.so|libcublas|libcublasLt|libnvidia|libnvrtc)'
# libstdc++/libgcc_s go to lib/compat: run.sh uses them only if the system ones are too old.
compat_re='^(libstdc\+\+\.so|libgcc_s\.so)'
for b in "${objects[@]}"; do
  while read -r name _ path _; do
    [[ -z ${path:-} || $path != /* ]] && continue
    if [[ $name =~ $system_re ]]; then continue; fi
    if [[ $name =~ $compat_re ]]; then
      cp -L "$path" "$out/lib/compat/$name"
    else
      cp -L "$path" "$out/lib/$name"
    fi
  done < <(ldd "$b")
done

# The goldens' fixtures, whole: scenario, checkpoint and golden tensors side by side.
cp "$src/tests/golden/tolerances.txt" "$out/golden-tolerances.txt"
while read -r fixture _; do
  [[ -z $fixture || $fixture == \#* ]] && continue
  cp -r "$src/tests/fixtures/$fixture" "$out/fixtures/$fixture"
done <"$src/tests/golden/tolerances.txt"
for script in run.sh env.sh profile.sh; do cp "$src/tests/gpu/$script" "$out/$script"; done

size=$(du -sb "$out" | cut -f1)
glibc=$(objdump -T "$out"/mplus[-_]* "$out"/*.so "$out"/lib/*.so* 2>/dev/null |
  grep -o 'GLIBC_[0-9.]*' | sort -V | tail -1)
echo "package.sh: $out: $((size / 1024)) KiB, needs $glibc and the CUDA 13 libraries" \
  "(libcudart.so.13, libcublas.so.13, libcublasLt.so.13) on the GPU machine"
if ((size > limit_bytes)); then
  echo "package.sh: bundle exceeds 64 MiB" >&2
  exit 1
fi
