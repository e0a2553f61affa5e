// A disk image file for the storvsp tests, under $TEST_TMPDIR, and its bytes read and written
// directly (the independent oracle for what went through the channel).
#ifndef CVMBUS_TESTS_STORVSP_DISK_FILE_H_
#define CVMBUS_TESTS_STORVSP_DISK_FILE_H_

#include <cstdint>
#include <string>
#include <vector>

namespace cvmbus::paravisor::storvsp {

// Creates (or empties) `name` in $TEST_TMPDIR (or /tmp) with `bytes` of zeros; its path, or
// empty if it could not be made.
std::string MakeTestDiskFile(const std::string& name, uint64_t bytes);
// `length` bytes at `offset` (fewer if the file is shorter; the test's expectations say so).
std::vector<uint8_t> ReadFileBytes(const std::string& path, uint64_t offset, size_t length);
void WriteFileBytes(const std::string& path, uint64_t offset, const std::vector<uint8_t>& bytes);

}  // namespace cvmbus::paravisor::storvsp

#endif  // CVMBUS_TESTS_STORVSP_DISK_FILE_H_
