#include "ring/tools/ring_image.h"

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "base/status_macros.h"

namespace cvmbus::ring::tools {
namespace {

constexpr uint64_t kPage = 4096;

absl::Status Invalid(std::string message) { return absl::InvalidArgumentError(message); }

}  // namespace

absl::StatusOr<guestmem::RingMemory> RingImage::Open() const {
  std::vector<uint64_t> gpns;
  for (uint64_t gpn = 0; gpn <= data_size / kPage; ++gpn) gpns.push_back(gpn);
  return guestmem::RingMemory::Create(memory(), gpns);
}

absl::StatusOr<RingImage> NewImage(uint64_t data_size) {
  if (data_size == 0 || data_size % kPage != 0 || data_size > guestmem::kMaxRingDataBytes) {
    return Invalid(fmt::format("a data area of {} bytes: want a nonzero multiple of {} up to {}",
                               data_size, kPage, guestmem::kMaxRingDataBytes));
  }
  guestmem::MemoryOptions options;
  options.name = "ringtool";
  options.type = guestmem::BackingType::kMemfd;
  options.regions = {{0, kPage + data_size}};
  CVMBUS_ASSIGN_OR_RETURN(std::shared_ptr<guestmem::MemoryBacking> backing,
                          guestmem::MemoryBacking::Create(options));
  return RingImage{std::move(backing), static_cast<uint32_t>(data_size)};
}

absl::StatusOr<RingImage> LoadImage(const std::string& path) {
  std::error_code error;
  const std::filesystem::file_status status = std::filesystem::status(path, error);
  if (error) return Invalid(fmt::format("cannot open: {}", error.message()));
  if (!std::filesystem::is_regular_file(status)) return Invalid("not a regular file");
  const uint64_t size = std::filesystem::file_size(path, error);
  if (error) return Invalid(fmt::format("cannot size: {}", error.message()));
  if (size < kPage) {
    return Invalid(fmt::format("{} bytes: too short for the {}-byte control page", size, kPage));
  }
  if (size % kPage != 0) return Invalid(fmt::format("{} bytes: not a multiple of {}", size, kPage));
  if (size == kPage) return Invalid("data area empty: the file is only the control page");
  if (size - kPage > guestmem::kMaxRingDataBytes) {
    return Invalid(fmt::format("data area of {} bytes exceeds the {}-byte limit", size - kPage,
                               guestmem::kMaxRingDataBytes));
  }
  std::vector<uint8_t> bytes(size);
  std::ifstream in(path, std::ios::binary);
  if (!in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(size))) {
    return Invalid(fmt::format("cannot read {} bytes: {}", size, std::strerror(errno)));
  }
  CVMBUS_ASSIGN_OR_RETURN(RingImage image, NewImage(size - kPage));
  CVMBUS_RETURN_IF_ERROR(image.memory().Write(0, bytes));
  return image;
}

absl::StatusOr<RingImage> CopyImage(const guestmem::GuestMemory& memory,
                                    absl::Span<const uint64_t> gpns) {
  if (gpns.size() < 2) {
    return Invalid(
        fmt::format("{} pages: a ring needs a control page and a data page", gpns.size()));
  }
  if ((gpns.size() - 1) * kPage > guestmem::kMaxRingDataBytes) {
    return Invalid(fmt::format("data area of {} pages exceeds the {}-byte limit", gpns.size() - 1,
                               guestmem::kMaxRingDataBytes));
  }
  CVMBUS_ASSIGN_OR_RETURN(RingImage image, NewImage((gpns.size() - 1) * kPage));
  std::vector<uint8_t> page(kPage);
  for (size_t i = 0; i < gpns.size(); ++i) {
    CVMBUS_RETURN_IF_ERROR(memory.Read(gpns[i] * kPage, absl::MakeSpan(page)));
    CVMBUS_RETURN_IF_ERROR(image.memory().Write(i * kPage, page));
  }
  return image;
}

absl::Status SaveImage(const RingImage& image, const std::string& path) {
  std::vector<uint8_t> bytes(image.total_bytes());
  CVMBUS_RETURN_IF_ERROR(image.memory().Read(0, absl::MakeSpan(bytes)));
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) return Invalid(fmt::format("{}: cannot write: {}", path, std::strerror(errno)));
  return absl::OkStatus();
}

}  // namespace cvmbus::ring::tools
