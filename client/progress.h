// Upload progress on stderr: a redrawn bar on a terminal, periodic lines otherwise (logs, CI).
#ifndef MPLUS_CLIENT_PROGRESS_H_
#define MPLUS_CLIENT_PROGRESS_H_

#include <cstdint>
#include <cstdio>

#include "absl/time/time.h"

namespace mplus::client {

class Progress {
 public:
  // `out` is usually stderr; whether it is a terminal picks the style.
  Progress(FILE* out, int64_t total_bytes, int64_t total_pieces);
  // Reports `done_bytes` of the total sent in `done_pieces` pieces, `tokens` injected so far.
  void Update(int64_t done_bytes, int64_t done_pieces, int64_t tokens);
  // Ends the bar's line (terminal) or prints the final line.
  void Finish();

 private:
  void Print();

  FILE* out_;
  bool tty_;
  int64_t total_bytes_, total_pieces_;
  int64_t done_bytes_ = 0, done_pieces_ = 0, tokens_ = 0;
  absl::Time start_;
  absl::Time last_print_ = absl::InfinitePast();
  int64_t printed_pieces_ = -1;  // done_pieces_ when last printed
};

}  // namespace mplus::client

#endif  // MPLUS_CLIENT_PROGRESS_H_
