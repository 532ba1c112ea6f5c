// Model::Decode with recorded steps (Backend::Record / Recording::Replay), which the CUDA backend
// implements with graphs. Here a CPU backend records each op as a closure instead of running it
// and replays the closures: the contract a CUDA graph keeps (same tensors, same arguments, only
// what lives in device memory changes), checkable without a GPU. Replayed decode must give the
// logits of op-by-op decode bit for bit, step after step.
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/cpu/cpu_backend.h"
#include "engine/model.h"
#include "gtest/gtest.h"
#include "memstore/in_memory_session.h"

namespace mplus::engine {
namespace {

using Op = std::function<absl::Status()>;

class ClosureRecording : public Recording {
 public:
  explicit ClosureRecording(std::vector<Op> ops) : ops_(std::move(ops)) {}
  absl::Status Replay() override {
    for (const Op& op : ops_) {
      if (absl::Status s = op(); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

 private:
  std::vector<Op> ops_;
};

// A CPU backend whose ops, while a recording is being made, are kept for Replay instead of run.
// Allocation still happens at once (a recorded op holds its tensors); what must come from the
// host at replay time cannot be recorded (as on a GPU): host copies fail while recording.
class RecordingCpuBackend : public cpu::CpuBackend {
 public:
  RecordingCpuBackend() : cpu::CpuBackend(1) {}

  absl::StatusOr<std::unique_ptr<Recording>> Record(const Op& enqueue) override {
    std::vector<Op> ops;
    recording_ = &ops;
    const absl::Status s = enqueue();
    recording_ = nullptr;
    if (!s.ok()) return s;
    ++recordings_;
    return std::make_unique<ClosureRecording>(std::move(ops));
  }
  int recordings() const { return recordings_; }

  absl::Status CopyFromHost(const void* src, DType src_dtype, const Tensor& dst) override {
    if (recording_ != nullptr) return NotRecordable("CopyFromHost");
    return CpuBackend::CopyFromHost(src, src_dtype, dst);
  }
  absl::Status CopyToHost(const Tensor& src, void* dst) override {
    if (recording_ != nullptr) return NotRecordable("CopyToHost");
    return CpuBackend::CopyToHost(src, dst);
  }
  absl::Status Embedding(const Tensor& table, absl::Span<const int32_t> ids,
                         const Tensor& out) override {
    if (recording_ != nullptr) return NotRecordable("Embedding");
    return CpuBackend::Embedding(table, ids, out);
  }
  absl::Status Copy(const Tensor& src, const Tensor& dst) override {
    return Run([=, this] { return CpuBackend::Copy(src, dst); });
  }
  absl::Status MatMul(const Tensor& x, const Tensor& w, const Tensor& out, float alpha,
                      bool accumulate) override {
    return Run([=, this] { return CpuBackend::MatMul(x, w, out, alpha, accumulate); });
  }
  absl::Status RmsNorm(const Tensor& x, const Tensor& weight, float eps,
                       const Tensor& out) override {
    return Run([=, this] { return CpuBackend::RmsNorm(x, weight, eps, out); });
  }
  absl::Status Rope(const Tensor& x, int64_t head_dim, absl::Span<const int64_t> positions,
                    const Tensor& inv_freq) override {
    std::vector<int64_t> p(positions.begin(), positions.end());
    return Run([=, this] { return CpuBackend::Rope(x, head_dim, p, inv_freq); });
  }
  absl::Status Attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t num_heads,
                         int64_t num_kv_heads, int64_t head_dim, const Tensor& out) override {
    return Run([=, this] {
      return CpuBackend::Attention(q, k, v, num_heads, num_kv_heads, head_dim, out);
    });
  }
  absl::Status SiluMul(const Tensor& gate, const Tensor& up, const Tensor& out) override {
    return Run([=, this] { return CpuBackend::SiluMul(gate, up, out); });
  }
  absl::Status Silu(const Tensor& x) override {
    return Run([=, this] { return CpuBackend::Silu(x); });
  }
  absl::Status Add(const Tensor& a, const Tensor& b, const Tensor& out) override {
    return Run([=, this] { return CpuBackend::Add(a, b, out); });
  }
  absl::Status AddRow(const Tensor& x, const Tensor& row) override {
    return Run([=, this] { return CpuBackend::AddRow(x, row); });
  }
  // The position is read when the op runs: at replay.
  absl::Status StoreKeysValuesAt(const Tensor& k, const Tensor& v, int64_t head_dim,
                                 const Tensor& position, const Tensor& inv_freq,
                                 const Tensor& k_cache, const Tensor& v_cache) override {
    return Run([=, this] {
      return Backend::StoreKeysValuesAt(k, v, head_dim, position, inv_freq, k_cache, v_cache);
    });
  }
  absl::Status RopeAt(const Tensor& x, int64_t head_dim, const Tensor& position,
                      const Tensor& inv_freq) override {
    return Run([=, this] { return Backend::RopeAt(x, head_dim, position, inv_freq); });
  }
  absl::Status AttentionAt(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                           const Tensor& position, int64_t num_heads, int64_t num_kv_heads,
                           int64_t head_dim, const Tensor& out) override {
    return Run([=, this] {
      return Backend::AttentionAt(q, k_cache, v_cache, position, num_heads, num_kv_heads, head_dim,
                                  out);
    });
  }

 private:
  absl::Status Run(Op op) {
    if (recording_ == nullptr) return op();
    recording_->push_back(std::move(op));
    return absl::OkStatus();
  }
  static absl::Status NotRecordable(const char* what) {
    return absl::FailedPreconditionError(std::string(what) + " cannot be recorded");
  }

  std::vector<Op>* recording_ = nullptr;
  int recordings_ = 0;
};

std::unique_ptr<Model> Load(const std::string& fixture, std::shared_ptr<Backend> backend) {
  ModelOptions options;
  options.backend = std::move(backend);
  auto model = Model::Load(std::string(MPLUS_FIXTURES_DIR) + "/" + fixture, options);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? *std::move(model) : nullptr;
}

class DecodeReplayTest : public ::testing::TestWithParam<const char*> {};

TEST_P(DecodeReplayTest, ReplayedStepsAreBitwiseOpByOp) {
  auto recorder = std::make_shared<RecordingCpuBackend>();
  std::unique_ptr<Model> replayed = Load(GetParam(), recorder);
  std::unique_ptr<Model> stepped = Load(GetParam(), std::make_shared<cpu::CpuBackend>(1));
  ASSERT_NE(replayed, nullptr);
  ASSERT_NE(stepped, nullptr);
  auto mem_r = memstore::InMemorySession::Create(*replayed);
  auto mem_s = memstore::InMemorySession::Create(*stepped);
  ASSERT_TRUE(mem_r.ok() && mem_s.ok());

  const std::vector<int32_t> prompt = {11, 200, 37, 5, 90};
  constexpr int kSteps = 9;
  for (int generation = 1; generation <= 2; ++generation) {
    PrefillOutput out_r, out_s;
    auto state_r = replayed->Prefill(**mem_r, prompt, kSteps, false, &out_r);
    auto state_s = stepped->Prefill(**mem_s, prompt, kSteps, false, &out_s);
    ASSERT_TRUE(state_r.ok() && state_s.ok());
    int32_t token = 7;
    for (int step = 0; step < kSteps; ++step) {
      if (generation == 2 && step == 5) (*state_r)->set_replay_decode(false);  // back to op by op
      auto logits_r = replayed->Decode(**state_r, token);
      auto logits_s = stepped->Decode(**state_s, token);
      ASSERT_TRUE(logits_r.ok()) << logits_r.status();
      ASSERT_TRUE(logits_s.ok()) << logits_s.status();
      EXPECT_EQ(*logits_r, *logits_s) << "generation " << generation << " step " << step;
      token = (token * 31 + step) % static_cast<int32_t>(replayed->config().vocab_size);
    }
    // One recording per generation, made at its first step.
    EXPECT_EQ(recorder->recordings(), generation);
    EXPECT_EQ((*state_r)->replaying(), generation == 1);
    EXPECT_FALSE((*state_s)->replaying());
    EXPECT_TRUE(absl::IsUnimplemented((*state_s)->recording_status()));
  }
}

INSTANTIATE_TEST_SUITE_P(TinyCheckpoints, DecodeReplayTest,
                         ::testing::Values("tiny-mplus", "tiny-mplus-bf16"));

// Too little room left for a recording to pay off: steps run op by op.
TEST(DecodeReplayShortTest, NoRecordingForTheLastFewSteps) {
  auto recorder = std::make_shared<RecordingCpuBackend>();
  std::unique_ptr<Model> model = Load("tiny-mplus", recorder);
  ASSERT_NE(model, nullptr);
  auto mem = memstore::InMemorySession::Create(*model);
  ASSERT_TRUE(mem.ok());
  PrefillOutput out;
  auto state = model->Prefill(**mem, {1, 2, 3}, 3, false, &out);
  ASSERT_TRUE(state.ok());
  for (int32_t token : {4, 5, 6}) ASSERT_TRUE(model->Decode(**state, token).ok());
  EXPECT_EQ(recorder->recordings(), 0);
  EXPECT_FALSE((*state)->replaying());
}

}  // namespace
}  // namespace mplus::engine
