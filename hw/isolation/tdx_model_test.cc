// TDX memory rules, one test each. Sources: Intel TDX Guest-Hypervisor Communication Interface
// (GHCI) "TDG.VP.VMCALL<MapGPA>"; Intel TDX Module spec, "TDG.MEM.PAGE.ACCEPT" (TDCALL leaf 6),
// "GPA space" (shared bit) and the completion status codes (TDX_PAGE_ALREADY_ACCEPTED,
// TDX_PAGE_SIZE_MISMATCH, TDX_OPERAND_INVALID).
#include "hw/isolation/tdx_model.h"

#include <gtest/gtest.h>

#include <array>
#include <cstring>
#include <vector>

#include "base/testing/status_testing.h"
#include "guestmem/errors.h"
#include "hw/isolation/errors.h"

namespace cvmbus::hw::isolation {
namespace {

using guestmem::ErrorKind;
using guestmem::GuestMemory;
using tdx::PageLevel;

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kPage = 4096;

void ExpectIsolation(const absl::Status& status, IsolationErrorKind kind, uint64_t code) {
  const auto error = GetIsolationError(status);
  ASSERT_TRUE(error.has_value()) << status;
  EXPECT_EQ(error->kind, kind) << status;
  EXPECT_EQ(error->code, code) << std::hex << error->code << " " << status;
}

// Runs every test with the shared bit at 47 and at 51.
class TdxModelTest : public ::testing::TestWithParam<unsigned> {
 protected:
  void SetUp() override {
    guestmem::MemoryOptions options;
    options.name = "tdx";
    options.regions = {{0, 2 * kMiB}, {4 * kMiB, 2 * kMiB}};  // Hole at [2 MiB, 4 MiB).
    auto backing = guestmem::MemoryBacking::Create(options);
    ASSERT_TRUE(backing.ok()) << backing.status();
    backing_ = *backing;
    auto model = TdxModel::Create(backing_, {.shared_bit = GetParam()});
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
  }
  uint64_t Shared(uint64_t gpa) const { return gpa | uint64_t{1} << GetParam(); }
  TdxPageState State(uint64_t gpa) const { return *model_->PageState(gpa); }

  std::shared_ptr<guestmem::MemoryBacking> backing_;
  std::unique_ptr<TdxModel> model_;
};

INSTANTIATE_TEST_SUITE_P(SharedBits, TdxModelTest, ::testing::Values(47u, 51u));

// TDX module spec: memory not yet accepted is private and unusable: no view reaches it.
TEST_P(TdxModelTest, PagesStartPendingAndUnreachable) {
  EXPECT_EQ(State(0x1000), TdxPageState::kPending);
  std::array<uint8_t, 8> bytes{};
  EXPECT_TRUE(guestmem::IsError(GuestMemory::Private(backing_).Read(0x1000, absl::MakeSpan(bytes)),
                                ErrorKind::kNotPrivate));
  EXPECT_TRUE(guestmem::IsError(
      GuestMemory::Untrusted(backing_).Read(0x1000, absl::MakeSpan(bytes)), ErrorKind::kNotShared));
}

// GHCI MapGPA: a GPA with the shared bit set converts the range to shared.
TEST_P(TdxModelTest, MapGpaWithSharedBitConvertsToShared) {
  EXPECT_EQ(model_->shared_bit_mask(), uint64_t{1} << GetParam());
  ASSERT_OK(model_->MapGpa(Shared(0x2000), 2 * kPage));
  EXPECT_EQ(State(0x2000), TdxPageState::kShared);
  EXPECT_EQ(State(0x3000), TdxPageState::kShared);
  EXPECT_EQ(State(0x4000), TdxPageState::kPending);
}

// GHCI MapGPA: a GPA with the shared bit clear converts the range back to private (pending).
TEST_P(TdxModelTest, MapGpaWithoutSharedBitConvertsToPrivate) {
  ASSERT_OK(model_->MapGpa(Shared(0x2000), kPage));
  ASSERT_OK(model_->MapGpa(0x2000, kPage));
  EXPECT_EQ(State(0x2000), TdxPageState::kPending);
}

// GHCI MapGPA: TDG.VP.VMCALL_ALIGN_ERROR (0x8000000000000002) for an unaligned GPA or size.
TEST_P(TdxModelTest, MapGpaUnalignedIsAlignError) {
  ExpectIsolation(model_->MapGpa(Shared(0x2010), kPage), IsolationErrorKind::kTdxVmcall,
                  0x8000000000000002);
  ExpectIsolation(model_->MapGpa(0x2000, 100), IsolationErrorKind::kTdxVmcall,
                  tdx::kVmcallAlignError);
}

// GHCI MapGPA: TDG.VP.VMCALL_INVALID_OPERAND (0x8000000000000000) for a range that is not guest
// memory: empty, past the end, over a hole, or with bits above the GPA width.
TEST_P(TdxModelTest, MapGpaOutsideMemoryIsInvalidOperand) {
  for (const auto& [gpa, size] : std::vector<std::pair<uint64_t, uint64_t>>{
           {0, 0}, {6 * kMiB, kPage}, {kMiB, 2 * kMiB}, {uint64_t{1} << 60, kPage}}) {
    ExpectIsolation(model_->MapGpa(gpa, size), IsolationErrorKind::kTdxVmcall, 0x8000000000000000);
  }
  EXPECT_EQ(State(kMiB), TdxPageState::kPending);
}

// TDX module spec, TDG.MEM.PAGE.ACCEPT: a pending page becomes private memory, zeroed.
TEST_P(TdxModelTest, AcceptMakesPendingPageUsableAndZeroed) {
  ASSERT_OK(model_->MapGpa(Shared(0x5000), kPage));
  const std::vector<uint8_t> host_bytes(kPage, 0xcd);
  ASSERT_OK(GuestMemory::Untrusted(backing_).Write(0x5000, absl::MakeConstSpan(host_bytes)));
  ASSERT_OK(model_->MapGpa(0x5000, kPage));
  ASSERT_OK(model_->Accept(0x5000, PageLevel::k4K));
  EXPECT_EQ(State(0x5000), TdxPageState::kAccepted);
  std::vector<uint8_t> seen(kPage, 1);
  ASSERT_OK(model_->GuestRead(0x5000, absl::MakeSpan(seen)));
  EXPECT_EQ(seen, std::vector<uint8_t>(kPage, 0));
}

// TDG.MEM.PAGE.ACCEPT of an accepted page: TDX_PAGE_ALREADY_ACCEPTED (0x00000B0A00000000).
TEST_P(TdxModelTest, AcceptOfAcceptedPageIsAlreadyAccepted) {
  ASSERT_OK(model_->Accept(0x6000, PageLevel::k4K));
  ExpectIsolation(model_->Accept(0x6000, PageLevel::k4K), IsolationErrorKind::kTdxStatus,
                  0x00000B0A00000000);
}

// TDG.MEM.PAGE.ACCEPT at a level larger than the VMM's mapping: TDX_PAGE_SIZE_MISMATCH
// (0xC0000B0B00000000); the guest falls back to 4 KiB.
TEST_P(TdxModelTest, AcceptAtLargerLevelThanMappingIsSizeMismatch) {
  ExpectIsolation(model_->Accept(0, PageLevel::k2M), IsolationErrorKind::kTdxStatus,
                  0xC0000B0B00000000);
  EXPECT_EQ(State(0), TdxPageState::kPending);
}

// TDG.MEM.PAGE.ACCEPT: TDX_OPERAND_INVALID (0xC000010000000000) for a misaligned or shared GPA.
TEST_P(TdxModelTest, AcceptWithBadOperandIsOperandInvalid) {
  ExpectIsolation(model_->Accept(0x1008, PageLevel::k4K), IsolationErrorKind::kTdxStatus,
                  0xC000010000000000);
  ExpectIsolation(model_->Accept(0x1000, PageLevel::k2M), IsolationErrorKind::kTdxStatus,
                  tdx::kTdxOperandInvalid);
  ExpectIsolation(model_->Accept(Shared(0x1000), PageLevel::k4K), IsolationErrorKind::kTdxStatus,
                  tdx::kTdxOperandInvalid);
}

// TDG.MEM.PAGE.ACCEPT of a shared GPA's page: there is no private page to accept (an EPT
// violation for the VMM, which must convert first).
TEST_P(TdxModelTest, AcceptOfSharedPageIsEptViolation) {
  ASSERT_OK(model_->ConvertToShared(0x7000, kPage));
  ExpectIsolation(model_->Accept(0x7000, PageLevel::k4K), IsolationErrorKind::kTdxEptViolation,
                  tdx::kExitReasonEptViolation);
}

// TDX module spec: a private access to a page that is not accepted is an error (#VE or an EPT
// violation with exit reason 48).
TEST_P(TdxModelTest, PrivateAccessToUnacceptedPageFails) {
  std::array<uint8_t, 8> bytes{};
  ExpectIsolation(model_->GuestRead(0x8000, absl::MakeSpan(bytes)),
                  IsolationErrorKind::kTdxPendingAccess, 48);
  ExpectIsolation(model_->GuestWrite(0x8000, absl::MakeConstSpan(bytes)),
                  IsolationErrorKind::kTdxPendingAccess, 48);
}

// The shared bit selects the mapping: a private GPA of a shared page and a shared GPA of a
// private page both have no mapping.
TEST_P(TdxModelTest, AccessThroughTheOtherAliasIsEptViolation) {
  ASSERT_OK(model_->ConvertToShared(0x9000, kPage));
  ASSERT_OK(model_->Accept(0xa000, PageLevel::k4K));
  std::array<uint8_t, 8> bytes{};
  ExpectIsolation(model_->GuestRead(0x9000, absl::MakeSpan(bytes)),
                  IsolationErrorKind::kTdxEptViolation, 48);
  ExpectIsolation(model_->GuestRead(Shared(0xa000), absl::MakeSpan(bytes)),
                  IsolationErrorKind::kTdxEptViolation, 48);
  ExpectIsolation(model_->GuestRead(uint64_t{1} << 62, absl::MakeSpan(bytes)),
                  IsolationErrorKind::kTdxEptViolation, 48);
}

// The shared alias (shared bit set) of a shared page is the host's view of the same bytes.
TEST_P(TdxModelTest, SharedAliasIsTheUntrustedViewOfThePage) {
  ASSERT_OK(model_->ConvertToShared(0xb000, kPage));
  const std::array<uint8_t, 4> bytes{1, 2, 3, 4};
  ASSERT_OK(model_->GuestWrite(Shared(0xb000), absl::MakeConstSpan(bytes)));
  std::array<uint8_t, 4> seen{};
  ASSERT_OK(GuestMemory::Untrusted(backing_).Read(0xb000, absl::MakeSpan(seen)));
  EXPECT_EQ(seen, bytes);
}

// The views follow the states: private only on accepted pages, untrusted only on shared ones.
TEST_P(TdxModelTest, GuestmemViewsFollowPageState) {
  const GuestMemory private_view = GuestMemory::Private(backing_);
  const GuestMemory untrusted_view = GuestMemory::Untrusted(backing_);
  std::array<uint8_t, 8> bytes{};
  ASSERT_OK(model_->Accept(0xc000, PageLevel::k4K));
  EXPECT_TRUE(private_view.Write(0xc000, absl::MakeConstSpan(bytes)).ok());
  EXPECT_TRUE(guestmem::IsError(untrusted_view.Write(0xc000, absl::MakeConstSpan(bytes)),
                                ErrorKind::kNotShared));
  ASSERT_OK(model_->ConvertToShared(0xc000, kPage));
  EXPECT_TRUE(untrusted_view.Write(0xc000, absl::MakeConstSpan(bytes)).ok());
  EXPECT_TRUE(guestmem::IsError(private_view.Write(0xc000, absl::MakeConstSpan(bytes)),
                                ErrorKind::kNotPrivate));
}

// Private contents never reach the host: converting to shared scrubs the page first.
TEST_P(TdxModelTest, PrivateBytesAreNotVisibleAfterConversionToShared) {
  ASSERT_OK(model_->Accept(0xd000, PageLevel::k4K));
  const std::vector<uint8_t> secret(kPage, 0x5e);
  ASSERT_OK(model_->GuestWrite(0xd000, absl::MakeConstSpan(secret)));
  ASSERT_OK(model_->ConvertToShared(0xd000, kPage));
  std::vector<uint8_t> seen(kPage);
  ASSERT_OK(GuestMemory::Untrusted(backing_).Read(0xd000, absl::MakeSpan(seen)));
  EXPECT_EQ(seen, std::vector<uint8_t>(kPage, 0));
}

// A conversion of pages a device has pinned fails with kPinned and changes none of them.
TEST_P(TdxModelTest, ConversionOfPinnedPageFailsWithoutChange) {
  ASSERT_OK(model_->ConvertToPrivate(0xe000, 2 * kPage));
  {
    auto pinned = GuestMemory::Private(backing_).Pin({0xf}, guestmem::Access::kRead);
    ASSERT_TRUE(pinned.ok()) << pinned.status();
    const absl::Status status = model_->ConvertToShared(0xe000, 2 * kPage);
    EXPECT_TRUE(guestmem::IsError(status, ErrorKind::kPinned)) << status;
    EXPECT_NE(status.message().find("tdx 'tdx': MapGPA"), absl::string_view::npos) << status;
    EXPECT_EQ(State(0xe000), TdxPageState::kAccepted);
    EXPECT_EQ(State(0xf000), TdxPageState::kAccepted);
  }
  ASSERT_OK(model_->ConvertToShared(0xe000, 2 * kPage));
  auto pinned = GuestMemory::Untrusted(backing_).Pin({0xe}, guestmem::Access::kRead);
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  EXPECT_TRUE(guestmem::IsError(model_->MapGpa(0xe000, 2 * kPage), ErrorKind::kPinned));
  EXPECT_EQ(State(0xf000), TdxPageState::kShared);
}

// TDH.MEM.PAGE.ADD: the launch image is accepted private memory with its contents.
TEST_P(TdxModelTest, LaunchPagesAreAcceptedWithContents) {
  ASSERT_OK(model_->AddLaunchPages(0x10000, kPage));
  EXPECT_EQ(State(0x10000), TdxPageState::kAccepted);
  ExpectIsolation(model_->Accept(0x10000, PageLevel::k4K), IsolationErrorKind::kTdxStatus,
                  tdx::kTdxPageAlreadyAccepted);
}

// The shared bit is GPA bit (GPAW - 1): 47 or 51.
TEST(TdxCreateTest, RejectsOtherSharedBits) {
  guestmem::MemoryOptions options;
  options.regions = {{0, kMiB}};
  auto backing = guestmem::MemoryBacking::Create(options);
  ASSERT_TRUE(backing.ok());
  EXPECT_FALSE(TdxModel::Create(*backing, {.shared_bit = 48}).ok());
  EXPECT_FALSE(TdxModel::Create(*backing, {.shared_bit = 12}).ok());
  EXPECT_TRUE(TdxModel::Create(*backing, {.shared_bit = 51}).ok());
}

}  // namespace
}  // namespace cvmbus::hw::isolation
