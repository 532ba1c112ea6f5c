// mplus-compare-golden OUT GOLDEN TOLERANCE: every golden tensor must be in OUT with the same
// shape; float tensors within relative L2 error TOLERANCE (||out - golden|| / ||golden||,
// float64), integer tensors exactly equal, no non-finite values. Prints one line per tensor.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "engine/safetensors.h"

namespace {

using mplus::engine::DType;
using mplus::engine::SafetensorsFile;
using mplus::engine::TensorView;

bool IsInt(DType d) { return d == DType::kI64 || d == DType::kI32; }

int64_t IntAt(const TensorView& t, int64_t i) {
  return t.dtype == DType::kI64 ? static_cast<const int64_t*>(t.data)[i]
                                : static_cast<const int32_t*>(t.data)[i];
}

std::string Shape(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? "," : "") + std::to_string(s[i]);
  return out + "]";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s OUT.safetensors GOLDEN.safetensors TOLERANCE\n", argv[0]);
    return 2;
  }
  auto out = SafetensorsFile::Open(argv[1]);
  auto golden = SafetensorsFile::Open(argv[2]);
  const double tol = std::strtod(argv[3], nullptr);
  if (!out.ok() || !golden.ok()) {
    std::fprintf(stderr, "cannot open: %s\n",
                 std::string((out.ok() ? golden.status() : out.status()).ToString()).c_str());
    return 2;
  }
  int failures = 0;
  for (const auto& [name, g] : (*golden)->tensors()) {
    auto it = (*out)->tensors().find(name);
    if (it == (*out)->tensors().end()) {
      std::printf("FAIL %-16s missing\n", name.c_str());
      ++failures;
      continue;
    }
    const TensorView& o = it->second;
    if (o.shape != g.shape || IsInt(o.dtype) != IsInt(g.dtype)) {
      std::printf("FAIL %-16s shape/dtype %s vs golden %s\n", name.c_str(), Shape(o.shape).c_str(),
                  Shape(g.shape).c_str());
      ++failures;
      continue;
    }
    if (IsInt(g.dtype)) {
      int64_t mismatches = 0;
      for (int64_t i = 0; i < g.numel(); ++i) mismatches += IntAt(o, i) != IntAt(g, i);
      std::printf("%s %-16s %lld of %lld integers differ\n", mismatches ? "FAIL" : "ok  ",
                  name.c_str(), static_cast<long long>(mismatches),
                  static_cast<long long>(g.numel()));
      failures += mismatches != 0;
      continue;
    }
    double diff = 0, norm = 0;
    bool finite = true;
    for (int64_t i = 0; i < g.numel(); ++i) {
      const double a = o.GetFloat(i), b = g.GetFloat(i);
      finite = finite && std::isfinite(a);
      diff += (a - b) * (a - b);
      norm += b * b;
    }
    const double rel = norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
    const bool ok = finite && rel <= tol;
    std::printf("%s %-16s rel_err %.3e%s\n", ok ? "ok  " : "FAIL", name.c_str(), rel,
                finite ? "" : " (non-finite values)");
    failures += !ok;
  }
  std::printf("%s: %d failing tensor(s)\n", failures ? "FAILED" : "PASSED", failures);
  return failures ? 1 : 0;
}
