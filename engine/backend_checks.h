// Argument checks every Backend implementation shares (engine/cpu, engine/cuda), so that both
// reject the same calls with the same messages.
#ifndef MPLUS_ENGINE_BACKEND_CHECKS_H_
#define MPLUS_ENGINE_BACKEND_CHECKS_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "engine/backend.h"

namespace mplus::engine {

bool IsFloatDType(DType dtype);
// "[rows,cols]".
std::string ShapeString(const Tensor& t);
absl::Status ShapeError(const char* op, const Tensor& a, const Tensor& b);

// Not null (unless empty) and on `device`.
absl::Status CheckOnDevice(const Tensor& t, Device device, const char* what);
// ... and float32 / any float dtype.
absl::Status CheckF32(const Tensor& t, Device device, const char* what);
absl::Status CheckFloat(const Tensor& t, Device device, const char* what);

// Whether byte ranges [a, a + a_bytes) and [b, b + b_bytes) share a byte. Compared as integers:
// the relational order of pointers into different allocations is unspecified in C++.
bool Overlap(const void* a, size_t a_bytes, const void* b, size_t b_bytes);

// Backend::Embedding's contract, device aside: out F32 or the table's dtype, [ids, table cols],
// every id in range (all checked before anything is written).
absl::Status CheckEmbedding(const Tensor& table, absl::Span<const int32_t> ids, const Tensor& out);

// Backend::Rope's contract: x and inv_freq float32 on `device`, head_dim even and dividing x's
// columns, inv_freq [head_dim / 2], one position per row of x.
absl::Status CheckRope(const Tensor& x, Device device, int64_t head_dim,
                       absl::Span<const int64_t> positions, const Tensor& inv_freq);

}  // namespace mplus::engine

#endif  // MPLUS_ENGINE_BACKEND_CHECKS_H_
