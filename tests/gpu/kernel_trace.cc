#include "tests/gpu/kernel_trace.h"

#include <cuda_runtime.h>
#include <cupti.h>
#include <cxxabi.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <memory>
#include <tuple>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"

namespace mplus::model_bench {
namespace {

constexpr size_t kBufferBytes = size_t{8} << 20;
constexpr size_t kBufferAlign = 8;  // CUPTI's requirement for activity buffers
constexpr CUpti_ActivityKind kKinds[] = {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL,
                                         CUPTI_ACTIVITY_KIND_MEMCPY, CUPTI_ACTIVITY_KIND_MEMSET};

struct Totals {
  int64_t count = 0;
  uint64_t ns = 0;
};

// A kernel as launched: the same kernel with another grid is usually another shape (a GEMV of
// another matrix, say), so they are summed apart.
struct Launch {
  std::string raw_name;  // mangled
  int32_t grid[3];
  bool operator<(const Launch& o) const {
    return std::tie(raw_name, grid[0], grid[1], grid[2]) <
           std::tie(o.raw_name, o.grid[0], o.grid[1], o.grid[2]);
  }
};

// What the completion callback (a CUPTI thread) has collected since Start.
struct Collected {
  std::map<Launch, Totals> kernels;
  Totals copies;
  std::vector<std::pair<uint64_t, uint64_t>> intervals;  // [start, end) ns of every record
};

absl::Mutex mu;
Collected* collected ABSL_GUARDED_BY(mu) = nullptr;

absl::Status CuptiStatus(CUptiResult result, const char* what) {
  if (result == CUPTI_SUCCESS) return absl::OkStatus();
  const char* text = "unknown CUPTI error";
  cuptiGetResultString(result, &text);
  return absl::InternalError(absl::StrCat("CUPTI ", what, ": ", text));
}

void CUPTIAPI BufferRequested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(kBufferAlign, kBufferBytes));
  *size = *buffer == nullptr ? 0 : kBufferBytes;
  *max_records = 0;  // as many as fit
}

void CUPTIAPI BufferCompleted(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  absl::MutexLock lock(&mu);
  CUpti_Activity* record = nullptr;
  while (collected != nullptr &&
         cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
    uint64_t start = 0, end = 0;
    if (record->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL ||
        record->kind == CUPTI_ACTIVITY_KIND_KERNEL) {
      const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(record);
      start = k->start;
      end = k->end;
      Totals& t =
          collected
              ->kernels[Launch{k->name != nullptr ? k->name : "?", {k->gridX, k->gridY, k->gridZ}}];
      ++t.count;
      t.ns += end - start;
    } else if (record->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
      const auto* c = reinterpret_cast<const CUpti_ActivityMemcpy6*>(record);
      start = c->start;
      end = c->end;
    } else if (record->kind == CUPTI_ACTIVITY_KIND_MEMSET) {
      const auto* s = reinterpret_cast<const CUpti_ActivityMemset4*>(record);
      start = s->start;
      end = s->end;
    } else {
      continue;
    }
    if (record->kind == CUPTI_ACTIVITY_KIND_MEMCPY || record->kind == CUPTI_ACTIVITY_KIND_MEMSET) {
      ++collected->copies.count;
      collected->copies.ns += end - start;
    }
    collected->intervals.emplace_back(start, end);
  }
  std::free(buffer);
}

std::string Demangle(const std::string& raw) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> out(
      abi::__cxa_demangle(raw.c_str(), nullptr, nullptr, &status), std::free);
  return status == 0 && out != nullptr ? std::string(out.get()) : raw;
}

}  // namespace

std::string ShortKernelName(const std::string& demangled) {
  constexpr std::string_view kAnonymous = "(anonymous namespace)";
  std::string_view s = demangled;
  if (s.substr(0, 5) == "void ") s.remove_prefix(5);
  // The name ends where its parameter list opens: the first '(' outside template arguments
  // that is not "(anonymous namespace)"; it starts after the last "::" outside them.
  size_t name_begin = 0, name_end = s.size();
  int depth = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '<') {
      ++depth;
    } else if (s[i] == '>') {
      --depth;
    } else if (depth == 0 && s[i] == '(') {
      if (s.substr(i, kAnonymous.size()) != kAnonymous) {
        name_end = i;
        break;
      }
      i += kAnonymous.size() - 1;
    } else if (depth == 0 && s.substr(i, 2) == "::") {
      name_begin = i + 2;
      ++i;
    }
  }
  constexpr size_t kMaxChars = 72;  // cuBLAS's kernel names run to ~150 characters
  std::string name(s.substr(name_begin, name_end - name_begin));
  if (name.size() > kMaxChars) name = name.substr(0, kMaxChars - 3) + "...";
  return name;
}

absl::Status KernelTrace::Start() {
  static const absl::Status registered =
      CuptiStatus(cuptiActivityRegisterCallbacks(BufferRequested, BufferCompleted),
                  "cuptiActivityRegisterCallbacks");
  if (!registered.ok()) return registered;
  {
    absl::MutexLock lock(&mu);
    if (collected != nullptr) return absl::FailedPreconditionError("a kernel trace is running");
    collected = new Collected;
  }
  for (CUpti_ActivityKind kind : kKinds) {
    if (absl::Status s = CuptiStatus(cuptiActivityEnable(kind), "cuptiActivityEnable"); !s.ok()) {
      for (CUpti_ActivityKind k : kKinds) cuptiActivityDisable(k);
      absl::MutexLock lock(&mu);
      delete collected;
      collected = nullptr;
      return s;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<TraceSummary> KernelTrace::Stop() {
  const cudaError_t synced = cudaDeviceSynchronize();
  const CUptiResult flushed = cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
  for (CUpti_ActivityKind kind : kKinds) cuptiActivityDisable(kind);
  size_t dropped = 0;
  cuptiActivityGetNumDroppedRecords(nullptr, 0, &dropped);
  std::unique_ptr<Collected> got;
  {
    absl::MutexLock lock(&mu);
    got.reset(collected);
    collected = nullptr;
  }
  if (got == nullptr) return absl::FailedPreconditionError("no kernel trace is running");
  if (synced != cudaSuccess) {
    return absl::InternalError(absl::StrCat("cudaDeviceSynchronize: ", cudaGetErrorString(synced)));
  }
  if (absl::Status s = CuptiStatus(flushed, "cuptiActivityFlushAll"); !s.ok()) return s;
  if (dropped > 0) {
    return absl::ResourceExhaustedError(absl::StrCat("CUPTI dropped ", dropped, " records"));
  }

  TraceSummary summary;
  std::map<std::string, KernelTotal> by_name;  // instances with equal short names and grids merge
  for (const auto& [launch, totals] : got->kernels) {
    const std::string name = absl::StrCat(ShortKernelName(Demangle(launch.raw_name)), " grid ",
                                          launch.grid[0], "x", launch.grid[1], "x", launch.grid[2]);
    KernelTotal& k = by_name[name];
    k.name = name;
    k.count += totals.count;
    k.gpu_us += static_cast<double>(totals.ns) / 1e3;
  }
  for (auto& [name, k] : by_name) summary.kernels.push_back(std::move(k));
  std::sort(summary.kernels.begin(), summary.kernels.end(),
            [](const KernelTotal& a, const KernelTotal& b) { return a.gpu_us > b.gpu_us; });
  summary.copies = got->copies.count;
  summary.copy_us = static_cast<double>(got->copies.ns) / 1e3;

  std::vector<std::pair<uint64_t, uint64_t>>& iv = got->intervals;
  if (!iv.empty()) {
    std::sort(iv.begin(), iv.end());
    uint64_t busy = 0, cur_begin = iv[0].first, cur_end = iv[0].second, last = 0;
    for (const auto& [b, e] : iv) {
      if (b > cur_end) {
        busy += cur_end - cur_begin;
        cur_begin = b;
      }
      cur_end = std::max(cur_end, e);
      last = std::max(last, e);
    }
    busy += cur_end - cur_begin;
    summary.busy_us = static_cast<double>(busy) / 1e3;
    summary.span_us = static_cast<double>(last - iv[0].first) / 1e3;
  }
  return summary;
}

std::string FormatTrace(const TraceSummary& summary, int steps, int top) {
  const double per = 1.0 / std::max(steps, 1);
  const double span = std::max(summary.span_us, 1e-9);
  std::string out = "| kernel | launches/step | GPU us/step | % of span |\n|---|---:|---:|---:|\n";
  auto row = [&](const std::string& name, double count, double us) {
    absl::StrAppendFormat(&out, "| %s | %.1f | %.1f | %.1f%% |\n", name, count * per, us * per,
                          100 * us / span);
  };
  int64_t launches = 0, rest_count = 0, rest_kinds = 0;
  double rest_us = 0;
  for (size_t i = 0; i < summary.kernels.size(); ++i) {
    const KernelTotal& k = summary.kernels[i];
    launches += k.count;
    if (static_cast<int>(i) < top) {
      row(k.name, static_cast<double>(k.count), k.gpu_us);
    } else {
      ++rest_kinds;
      rest_count += k.count;
      rest_us += k.gpu_us;
    }
  }
  if (rest_kinds > 0) {
    row(absl::StrCat("(", rest_kinds, " other kernels)"), static_cast<double>(rest_count), rest_us);
  }
  row("(memcpy / memset)", static_cast<double>(summary.copies), summary.copy_us);
  row("(GPU idle between them)", 0, summary.span_us - summary.busy_us);
  absl::StrAppendFormat(&out, "| **span** | %.1f kernels | %.1f | 100%% |\n",
                        static_cast<double>(launches) * per, summary.span_us * per);
  return out;
}

}  // namespace mplus::model_bench
