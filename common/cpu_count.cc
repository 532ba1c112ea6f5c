#include "common/cpu_count.h"

#include <sched.h>

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>

namespace mplus {
namespace {

std::optional<int64_t> ParseInt(std::string_view s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.remove_suffix(1);
  int64_t value = 0;
  const auto [end, err] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (err != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return value;
}

std::optional<int> QuotaCpus(std::optional<int64_t> quota, std::optional<int64_t> period) {
  if (!quota || !period || *quota <= 0 || *period <= 0) return std::nullopt;
  return static_cast<int>(std::max<int64_t>(1, (*quota + *period - 1) / *period));
}

std::string ReadFile(const char* path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

int CountAvailableCpus() {
  int cpus = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  cpu_set_t mask;
  if (sched_getaffinity(0, sizeof(mask), &mask) == 0) cpus = std::min(cpus, CPU_COUNT(&mask));
  std::optional<int> quota = CpusFromCgroupV2(ReadFile("/sys/fs/cgroup/cpu.max"));
  if (!quota) {
    quota = CpusFromCgroupV1(ReadFile("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
                             ReadFile("/sys/fs/cgroup/cpu/cpu.cfs_period_us"));
  }
  if (quota) cpus = std::min(cpus, *quota);
  return std::max(1, cpus);
}

}  // namespace

std::optional<int> CpusFromCgroupV2(std::string_view cpu_max) {
  const size_t space = cpu_max.find(' ');
  if (space == std::string_view::npos) return std::nullopt;
  return QuotaCpus(ParseInt(cpu_max.substr(0, space)), ParseInt(cpu_max.substr(space + 1)));
}

std::optional<int> CpusFromCgroupV1(std::string_view quota_us, std::string_view period_us) {
  return QuotaCpus(ParseInt(quota_us), ParseInt(period_us));
}

int AvailableCpus() {
  static const int cpus = CountAvailableCpus();
  return cpus;
}

}  // namespace mplus
