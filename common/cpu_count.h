// How many CPUs this process may actually use. std::thread::hardware_concurrency() counts the
// machine's online CPUs; in a container (a Kubernetes pod with a CPU limit, a cpuset) that can
// be many times what the process gets, and a thread per counted CPU then time-slices on the few
// it has.
#ifndef MPLUS_COMMON_CPU_COUNT_H_
#define MPLUS_COMMON_CPU_COUNT_H_

#include <optional>
#include <string_view>

namespace mplus {

// The least of: the CPUs in this process's affinity mask, and its cgroup CPU quota rounded up
// (cgroup v2 cpu.max, or v1 cpu.cfs_quota_us / cpu.cfs_period_us). At least 1. Read once.
int AvailableCpus();

// CPUs a cgroup v2 cpu.max line allows ("200000 100000" -> 2, "150000 100000" -> 2), or
// nullopt for no limit ("max 100000") or a line it cannot read.
std::optional<int> CpusFromCgroupV2(std::string_view cpu_max);
// The same from cgroup v1's cpu.cfs_quota_us and cpu.cfs_period_us (quota -1: no limit).
std::optional<int> CpusFromCgroupV1(std::string_view quota_us, std::string_view period_us);

}  // namespace mplus

#endif  // MPLUS_COMMON_CPU_COUNT_H_
