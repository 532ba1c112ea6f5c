#include "client/progress.h"

#include <unistd.h>

#include <algorithm>
#include <string>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"

namespace mplus::client {
namespace {

constexpr int kBarWidth = 30;
// Without a terminal, a line at most this often (plus the last one).
constexpr absl::Duration kLineInterval = absl::Seconds(5);

// Sizes in MiB, or in KiB for inputs under 1 MiB.
struct Unit {
  const char* name;
  double bytes;
};
Unit UnitFor(int64_t total) {
  return total >= (1 << 20) ? Unit{"MiB", 1 << 20} : Unit{"KiB", 1 << 10};
}

}  // namespace

Progress::Progress(FILE* out, int64_t total_bytes, int64_t total_pieces)
    : out_(out),
      tty_(isatty(fileno(out)) != 0),
      total_bytes_(total_bytes),
      total_pieces_(total_pieces),
      start_(absl::Now()) {
  if (tty_) Print();
}

void Progress::Update(int64_t done_bytes, int64_t done_pieces, int64_t tokens) {
  done_bytes_ = done_bytes;
  done_pieces_ = done_pieces;
  tokens_ = tokens;
  if (tty_ || absl::Now() - last_print_ >= kLineInterval) Print();
}

void Progress::Finish() {
  if (tty_) {
    std::fputc('\n', out_);
  } else if (printed_pieces_ != done_pieces_) {
    Print();
  }
  std::fflush(out_);
}

void Progress::Print() {
  last_print_ = absl::Now();
  printed_pieces_ = done_pieces_;
  const double fraction =
      total_bytes_ > 0 ? static_cast<double>(done_bytes_) / static_cast<double>(total_bytes_) : 1;
  const double seconds = std::max(absl::ToDoubleSeconds(last_print_ - start_), 1e-3);
  const Unit unit = UnitFor(total_bytes_);
  const double done = static_cast<double>(done_bytes_) / unit.bytes;
  const std::string stats = absl::StrFormat(
      "%3d%%  %d/%d pieces  %.2f/%.2f %s  %d tokens  %.2f %s/s", static_cast<int>(fraction * 100),
      done_pieces_, total_pieces_, done, static_cast<double>(total_bytes_) / unit.bytes, unit.name,
      tokens_, done / seconds, unit.name);
  if (tty_) {
    const int filled = static_cast<int>(fraction * kBarWidth);
    // \r returns to the line start, \033[K clears what a longer previous line left behind.
    absl::FPrintF(out_, "\r[%s%s] %s\033[K", std::string(filled, '#'),
                  std::string(kBarWidth - filled, '.'), stats);
  } else {
    absl::FPrintF(out_, "inject: %s\n", stats);
  }
  std::fflush(out_);
}

}  // namespace mplus::client
