// fmt support for the Abseil types cvmbus formats into messages.
//
// Debian's Abseil is built with its own string_view (not std::string_view), which fmt does not
// know; absl::Status::message() returns one.
#ifndef CVMBUS_BASE_FORMAT_H_
#define CVMBUS_BASE_FORMAT_H_

#include <fmt/format.h>

#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

template <>
struct fmt::formatter<absl::string_view> : fmt::formatter<std::string_view> {
  template <typename FormatContext>
  auto format(absl::string_view value, FormatContext& context) const {
    return fmt::formatter<std::string_view>::format(std::string_view(value.data(), value.size()),
                                                    context);
  }
};

template <>
struct fmt::formatter<absl::Status> : fmt::formatter<std::string_view> {
  template <typename FormatContext>
  auto format(const absl::Status& status, FormatContext& context) const {
    const std::string text = status.ToString();
    return fmt::formatter<std::string_view>::format(std::string_view(text), context);
  }
};

#endif  // CVMBUS_BASE_FORMAT_H_
