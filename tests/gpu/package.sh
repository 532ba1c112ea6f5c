#!/usr/bin/env bash
# Bundles the prebuilt GPU check binaries with the shared libraries they need that a bare GPU
# machine lacks (abseil, ...; not glibc, not the CUDA libraries), for tests/gpu/run.sh there.
#   tests/gpu/package.sh [BUILD_DIR (default: build)] [OUT_DIR (default: BUILD_DIR/gpu-bundle)]
# Then carry OUT_DIR to the GPU machine and run: tests/gpu/run.sh OUT_DIR
set -euo pipefail

build_dir=${1:-build}
out=${2:-$build_dir/gpu-bundle}
limit_bytes=$((64 * 1024 * 1024))

bins=()
for f in "$build_dir"/tests/gpu/*; do
  [[ -f $f && -x $f ]] && bins+=("$f")
done
if ((${#bins[@]} == 0)); then
  echo "package.sh: no GPU binaries in $build_dir/tests/gpu (configure with -DMPLUS_CUDA=ON" \
    "and build mplus_gpu_check)" >&2
  exit 1
fi

rm -rf "$out"
mkdir -p "$out/lib/compat"
for b in "${bins[@]}"; do
  # Debug info is most of the size and useless there.
  objcopy --strip-debug "$b" "$out/$(basename "$b")"
done

# Provided by the GPU machine: glibc and the loader, the driver, the CUDA toolkit libraries.
system_re='^(linux-vdso|ld-linux|libc\.so|libm\.so|libdl\.so|libpthread\.so|librt\.so|libcuda\.so|libcudart\.so|libcublas|libcublasLt|libnvidia|libnvrtc)'
# libstdc++/libgcc_s go to lib/compat: run.sh uses them only if the system ones are too old.
compat_re='^(libstdc\+\+\.so|libgcc_s\.so)'
for b in "${bins[@]}"; do
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
cp "$(dirname "$0")/run.sh" "$out/run.sh"

size=$(du -sb "$out" | cut -f1)
glibc=$(objdump -T "$out"/mplus_* "$out"/lib/*.so* 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -V |
  tail -1)
echo "package.sh: $out: $((size / 1024)) KiB, needs $glibc and the CUDA 13 libraries" \
  "(libcudart.so.13, libcublas.so.13, libcublasLt.so.13) on the GPU machine"
if ((size > limit_bytes)); then
  echo "package.sh: bundle exceeds 64 MiB" >&2
  exit 1
fi
