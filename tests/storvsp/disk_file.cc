#include "tests/storvsp/disk_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>

namespace cvmbus::paravisor::storvsp {

std::string MakeTestDiskFile(const std::string& name, uint64_t bytes) {
  const char* dir = std::getenv("TEST_TMPDIR");
  std::string path = std::string(dir != nullptr ? dir : "/tmp") + "/" + name;
  const int fd = open(path.c_str(), O_CREAT | O_TRUNC | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0) return "";
  const bool sized = ftruncate(fd, static_cast<off_t>(bytes)) == 0;
  close(fd);
  return sized ? path : "";
}

std::vector<uint8_t> ReadFileBytes(const std::string& path, uint64_t offset, size_t length) {
  std::vector<uint8_t> bytes(length);
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  const ssize_t n = fd < 0 ? -1 : pread(fd, bytes.data(), length, static_cast<off_t>(offset));
  if (fd >= 0) close(fd);
  bytes.resize(n < 0 ? 0 : static_cast<size_t>(n));
  return bytes;
}

void WriteFileBytes(const std::string& path, uint64_t offset, const std::vector<uint8_t>& bytes) {
  const int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return;
  (void)!pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(offset));
  close(fd);
}

}  // namespace cvmbus::paravisor::storvsp
