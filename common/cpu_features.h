// Instruction-set checks for the hand-vectorised CPU paths, each chosen at run time so one
// binary runs (more slowly) on CPUs without them.
#ifndef MPLUS_COMMON_CPU_FEATURES_H_
#define MPLUS_COMMON_CPU_FEATURES_H_

// Compiles a function for the instruction sets HasAvx2Fma() checks; call it only when that
// returns true.
#define MPLUS_TARGET_AVX2_FMA __attribute__((target("avx2,fma,f16c")))

namespace mplus {

// True when this CPU has AVX2, FMA and F16C: the set MPLUS_TARGET_AVX2_FMA compiles for. Checked
// once.
inline bool HasAvx2Fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
  return has;
}

}  // namespace mplus

#endif  // MPLUS_COMMON_CPU_FEATURES_H_
