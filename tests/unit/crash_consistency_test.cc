// Crash consistency: a child process (this same test binary, re-executed with an environment
// flag) runs injects on several sessions and reports each acknowledged inject on a pipe; the
// parent SIGKILLs it at random moments, reopens the database, and checks that every session is
// bitwise equal to a replay of its injects up to the last acknowledged one (or one more: an
// inject can be durable before its ack reaches the pipe).
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <sstream>

#include "gtest/gtest.h"
#include "memstore/memory_store.h"
#include "tests/unit/memstore_test_util.h"

namespace mplus::memstore {
namespace {

constexpr int kSessions = 3;
constexpr const char* kDbEnv = "MPLUS_CRASH_CHILD_DB";
constexpr const char* kFdEnv = "MPLUS_CRASH_CHILD_FD";

std::unique_ptr<testing::TinyModel> CrashModel() {
  return testing::MakeTinyModel(engine::DType::kBF16, /*mplus=*/true, /*layers=*/3,
                                /*update_ltm_frequency=*/2);
}

std::string SessionId(int i) { return "session-" + std::to_string(i); }

// The child: injects forever; each line "<session> <inject_count>\n" acknowledges a commit.
TEST(CrashConsistencyChild, Run) {
  const char* db = std::getenv(kDbEnv);
  const char* fd_env = std::getenv(kFdEnv);
  if (db == nullptr || fd_env == nullptr) GTEST_SKIP() << "only runs as the crash test's child";
  const int fd = std::atoi(fd_env);
  auto model = CrashModel();
  StoreOptions o;
  o.path = db;
  absl::StatusOr<std::unique_ptr<MemoryStore>> store =
      MemoryStore::Open(o, model->config, model->weights);
  ASSERT_TRUE(store.ok()) << store.status();
  for (int i = 0; i < kSessions; ++i) {
    if (absl::IsNotFound((*store)->GetSession(SessionId(i)).status())) {
      ASSERT_TRUE((*store)->CreateSession(SessionId(i), {}, i).ok());
    }
  }
  std::mt19937 rng(static_cast<uint32_t>(getpid()));
  for (;;) {
    const int i = static_cast<int>(rng() % kSessions);
    absl::StatusOr<SessionHandle> h = (*store)->Acquire(SessionId(i));
    ASSERT_TRUE(h.ok()) << h.status();
    const int64_t n = h->info().inject_count;
    const std::string request = SessionId(i) + "/" + std::to_string(n);
    ASSERT_TRUE(h->Commit(testing::MakeInject(model->config, i, n), 10 + n, request).ok());
    const std::string ack = std::to_string(i) + " " + std::to_string(n + 1) + "\n";
    ASSERT_EQ(write(fd, ack.data(), ack.size()), static_cast<ssize_t>(ack.size()));
  }
}

void ParseAcks(std::string* buffer, int64_t acked[kSessions]) {
  size_t nl;
  while ((nl = buffer->find('\n')) != std::string::npos) {
    std::istringstream line(buffer->substr(0, nl));
    int i;
    int64_t count;
    line >> i >> count;
    acked[i] = std::max(acked[i], count);
    buffer->erase(0, nl + 1);
  }
}

TEST(CrashConsistencyTest, SigkillAtRandomMomentsLosesNoAcknowledgedInject) {
  const std::string path = testing::TempDir("crash");
  auto model = CrashModel();
  absl::StatusOr<std::unique_ptr<BaseMemory>> base =
      BaseMemory::Create(model->config, model->weights);
  ASSERT_TRUE(base.ok());
  int64_t acked[kSessions] = {0, 0, 0};
  std::mt19937 rng(20240611);
  int64_t total_injects = 0, rounds_with_unacked = 0;
  const auto start = std::chrono::steady_clock::now();
  constexpr int kRounds = 24;
  for (int round = 0; round < kRounds; ++round) {
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      close(fds[0]);
      const int devnull = open("/dev/null", O_WRONLY);
      dup2(devnull, STDOUT_FILENO);
      setenv(kDbEnv, path.c_str(), 1);
      setenv(kFdEnv, std::to_string(fds[1]).c_str(), 1);
      execl("/proc/self/exe", "crash_child", "--gtest_filter=CrashConsistencyChild.Run",
            static_cast<char*>(nullptr));
      _exit(127);
    }
    close(fds[1]);
    // Kill anywhere from during open to well into the inject loop.
    const auto deadline =
        std::chrono::steady_clock::now() +
        std::chrono::milliseconds(std::uniform_int_distribution<int>(5, 400)(rng));
    std::string buffer;
    char chunk[4096];
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) break;
      pollfd p{fds[0], POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      const ssize_t got = read(fds[0], chunk, sizeof chunk);
      if (got <= 0) break;  // the child died on its own: the checks below will say why
      buffer.append(chunk, got);
      ParseAcks(&buffer, acked);
    }
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << "child exited on its own (status " << status << ")";
    ssize_t got;
    while ((got = read(fds[0], chunk, sizeof chunk)) > 0) buffer.append(chunk, got);
    ParseAcks(&buffer, acked);
    close(fds[0]);

    StoreOptions o;
    o.path = path;
    absl::StatusOr<std::unique_ptr<MemoryStore>> store =
        MemoryStore::Open(o, model->config, model->weights);
    ASSERT_TRUE(store.ok()) << "round " << round << ": " << store.status();
    for (int i = 0; i < kSessions; ++i) {
      absl::StatusOr<SessionHandle> h = (*store)->Acquire(SessionId(i));
      if (absl::IsNotFound(h.status())) {
        ASSERT_EQ(acked[i], 0) << "an acknowledged session vanished";
        continue;
      }
      ASSERT_TRUE(h.ok()) << h.status();
      const int64_t durable = h->info().inject_count;
      ASSERT_GE(durable, acked[i])
          << "round " << round << " session " << i << ": an acknowledged inject was lost";
      ASSERT_LE(durable, acked[i] + 1) << "round " << round << " session " << i;
      if (durable > acked[i]) ++rounds_with_unacked;
      testing::ReferenceSession ref(**base);
      for (int64_t n = 0; n < durable; ++n) ref.Apply(testing::MakeInject(model->config, i, n));
      ASSERT_EQ(testing::CompareWithReference(const_cast<ResidentSession&>(h->resident()), ref), "")
          << "round " << round << " session " << i << " after " << durable << " injects";
      if (durable > 0) {
        absl::StatusOr<std::optional<RequestRecord>> req =
            h->FindRequest(SessionId(i) + "/" + std::to_string(durable - 1));
        ASSERT_TRUE(req.ok() && req->has_value());
        EXPECT_EQ((*req)->inject_count, durable);
      }
      acked[i] = durable;
    }
  }
  for (int64_t a : acked) total_injects += a;
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << kRounds << " kills, " << total_injects << " durable injects, " << rounds_with_unacked
            << " durable-but-unacknowledged, " << seconds << " s\n";
  EXPECT_GT(total_injects, kRounds);  // the child really got work done between kills
}

}  // namespace
}  // namespace mplus::memstore
