// Decode steps recorded once and replayed (Backend::Record: a CUDA graph per generation) against
// the same steps enqueued op by op, on the tiny M+ checkpoints: bitwise equal logits, step after
// step, since both run the same kernels with the same parameters.
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "engine/model.h"
#include "engine/session_memory.h"
#include "tests/gpu/gpu_check.h"

namespace mplus::gpu_test {
namespace {

// The checkpoint's initial short-term memory; the "retrieved" long-term tokens are its first
// K_ltm slots (any fixed rows do: both runs get the same).
class InitialMemory : public engine::SessionMemory {
 public:
  explicit InitialMemory(const engine::Model& model) : model_(model) {}
  engine::TensorView ShortTerm(int layer) const override {
    const engine::TensorView& all = model_.weights().memory;
    const int64_t n = all.shape[1], d = all.shape[2];
    const size_t bytes = static_cast<size_t>(n * d) * engine::DTypeSize(all.dtype);
    return {"memory", all.dtype, {n, d}, static_cast<const char*>(all.data) + layer * bytes, bytes};
  }
  absl::Status RetrieveLongTerm(int layer, engine::RetrievalQueries&, void* out) override {
    const engine::TensorView stm = ShortTerm(layer);
    const int64_t rows = model_.config().ltm_retrieved_tokens();
    std::memcpy(out, stm.data, static_cast<size_t>(rows * stm.shape[1]) * DTypeSize(stm.dtype));
    return absl::OkStatus();
  }

 private:
  const engine::Model& model_;
};

std::string FixtureDir(const std::string& name) {
  const char* root = std::getenv("MPLUS_GPU_FIXTURES");  // run.sh: the bundle's fixtures
  return std::string(root != nullptr ? root : "tests/fixtures") + "/" + name;
}

TEST_F(GpuCheck, RecordedDecodeStepsMatchStepByStepBitwise) {
  constexpr int kSteps = 12;
  for (const char* fixture : {"tiny-mplus", "tiny-mplus-bf16"}) {
    SCOPED_TRACE(fixture);
    std::vector<std::vector<float>> logits[2];  // [replayed?][step]
    for (const bool replay : {false, true}) {
      engine::ModelOptions options;
      options.backend = std::shared_ptr<Backend>(gpu_, [](Backend*) {});
      options.replay_decode = replay;
      ASSERT_OK_AND_ASSIGN(model, engine::Model::Load(FixtureDir(fixture), options));
      InitialMemory memory(*model);
      engine::PrefillOutput out;
      const std::vector<int32_t> prompt = {1, 17, 33, 5, 80};
      ASSERT_OK_AND_ASSIGN(state, model->Prefill(memory, prompt, kSteps, false, &out));
      int32_t token = 3;
      for (int step = 0; step < kSteps; ++step) {
        ASSERT_OK_AND_ASSIGN(step_logits, model->Decode(*state, token));
        token = static_cast<int32_t>((token * 31 + step) % model->config().vocab_size);
        logits[replay].push_back(std::move(step_logits));
      }
      // Recording needs 4 steps of room, which the first step has.
      EXPECT_EQ(state->replaying(), replay) << state->recording_status();
    }
    for (int step = 0; step < kSteps; ++step) {
      EXPECT_EQ(logits[1][step], logits[0][step]) << "step " << step;
    }
  }
}

}  // namespace
}  // namespace mplus::gpu_test
