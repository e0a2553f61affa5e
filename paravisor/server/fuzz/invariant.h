// FUZZ_REQUIRE: how server_fuzz reports a broken invariant. The message names the invariant (and
// the channel, GPADL or message involved) on stderr, then __builtin_trap(): libFuzzer records
// the input as a crash.
#ifndef CVMBUS_PARAVISOR_SERVER_FUZZ_INVARIANT_H_
#define CVMBUS_PARAVISOR_SERVER_FUZZ_INVARIANT_H_

#include <fmt/format.h>

#include <cstdio>
#include <string>

#include "base/format.h"

namespace cvmbus::paravisor::fuzz {

[[noreturn]] inline void Violated(const std::string& what) {
  std::fprintf(stderr, "server_fuzz: invariant violated: %s\n", what.c_str());
  std::fflush(stderr);
  __builtin_trap();
}

}  // namespace cvmbus::paravisor::fuzz

// Traps with fmt::format(__VA_ARGS__) unless `condition` holds. A macro so that the message's
// arguments are evaluated only when it fails (they may be costly, or look things up).
#define FUZZ_REQUIRE(condition, ...)                                 \
  do {                                                               \
    if (!(condition)) [[unlikely]] {                                 \
      ::cvmbus::paravisor::fuzz::Violated(fmt::format(__VA_ARGS__)); \
    }                                                                \
  } while (false)

#endif  // CVMBUS_PARAVISOR_SERVER_FUZZ_INVARIANT_H_
