// GoogleTest helpers for absl::Status: ASSERT_OK / EXPECT_OK print the status when it fails.
#ifndef CVMBUS_BASE_TESTING_STATUS_TESTING_H_
#define CVMBUS_BASE_TESTING_STATUS_TESTING_H_

#include <gtest/gtest.h>

#include "absl/status/status.h"

#define ASSERT_OK(expr)                         \
  do {                                          \
    const absl::Status assert_ok_ = (expr);     \
    ASSERT_TRUE(assert_ok_.ok()) << assert_ok_; \
  } while (0)

#define EXPECT_OK(expr)                         \
  do {                                          \
    const absl::Status expect_ok_ = (expr);     \
    EXPECT_TRUE(expect_ok_.ok()) << expect_ok_; \
  } while (0)

#endif  // CVMBUS_BASE_TESTING_STATUS_TESTING_H_
