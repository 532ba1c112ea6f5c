# Sourced by run.sh and profile.sh: LD_LIBRARY_PATH for the bundle in $dir on a GPU machine —
# the bundle's libraries, then CUDA 13's (toolkit or Python wheel), and the bundle's libstdc++
# only when the system's is too old for the binaries in the array $objects.
cuda_home=${CUDA_HOME:-/usr/local/cuda}
libpath="$dir/lib:$cuda_home/lib64:$cuda_home/lib"
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
# Our libstdc++ only when the system's is too old for the binaries.
if [[ -d $dir/lib/compat ]] &&
  ldd "${objects[@]}" 2>&1 | grep -q "version .GLIBCXX\|version .CXXABI"; then
  export LD_LIBRARY_PATH="$dir/lib/compat:$LD_LIBRARY_PATH"
fi
