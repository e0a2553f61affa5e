// SEV-SNP page-state changes, one rule per test: the GHCB MSR protocol (GHCB spec section 2.3.1
// "GHCB MSR Protocol", "SNP Page State Change"), and the host's RMPUPDATE / PSMASH steps behind
// it (AMD64 APM vol. 2 section 15.36, the RMP, and vol. 3 RMPUPDATE, PSMASH).
#include <gtest/gtest.h>

#include <array>
#include <vector>

#include "base/testing/status_testing.h"
#include "guestmem/errors.h"
#include "hw/isolation/errors.h"
#include "hw/isolation/snp_model.h"

namespace cvmbus::hw::isolation {
namespace {

using guestmem::ErrorKind;
using guestmem::GuestMemory;
using snp::PageSize;
using snp::PscOperation;
using snp::PvalidateResult;
using snp::RmpUpdateResult;

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kPage = 4096;

class SnpPscTest : public ::testing::Test {
 protected:
  void SetUp() override {
    guestmem::MemoryOptions options;
    options.name = "psc";
    options.regions = {{0, 4 * kMiB}, {6 * kMiB, 2 * kMiB}};  // Hole at [4 MiB, 6 MiB).
    auto backing = guestmem::MemoryBacking::Create(options);
    ASSERT_TRUE(backing.ok()) << backing.status();
    backing_ = *backing;
    auto model = SnpModel::Create(backing_);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
  }
  RmpEntry Rmp(uint64_t gpa) {
    auto entry = model_->ReadRmp(gpa);
    EXPECT_TRUE(entry.ok()) << entry.status();
    return entry.ok() ? *entry : RmpEntry{};
  }
  uint64_t Msr(uint64_t gpa, PscOperation operation) {
    return model_->HandleGhcbMsr(snp::EncodePscRequest(gpa >> 12, operation));
  }
  void Assign2MAndValidate(uint64_t gpa) {
    ASSERT_OK(model_->PageStateChange(gpa, PageSize::k2M, PscOperation::kPrivate));
    ASSERT_EQ(*model_->Pvalidate(gpa, PageSize::k2M, true), PvalidateResult::kSuccess);
  }

  std::shared_ptr<guestmem::MemoryBacking> backing_;
  std::unique_ptr<SnpModel> model_;
};

// GHCB 2.3.1: request 0x014 with GFN in bits 51:12 and operation 1 (private) in bits 55:52; the
// host assigns the page (RMPUPDATE) and answers 0x015 with error 0 in bits 63:32.
TEST_F(SnpPscTest, MsrRequestToPrivateAssignsThePage) {
  const uint64_t response = Msr(0x3000, PscOperation::kPrivate);
  EXPECT_EQ(response, 0x015u);
  EXPECT_EQ(response & snp::kGhcbInfoMask, snp::kGhcbMsrPscResponse);
  EXPECT_EQ(snp::PscResponseError(response), 0u);
  const RmpEntry entry = Rmp(0x3000);
  EXPECT_TRUE(entry.assigned);
  EXPECT_FALSE(entry.validated);
  EXPECT_EQ(entry.guest_gpa, 0x3000u);
  EXPECT_EQ(entry.page_size, PageSize::k4K);
}

// GHCB 2.3.1 (Linux __set_pages_state): the guest must rescind validation before asking for
// shared; a request for a still-validated page is refused and changes nothing.
TEST_F(SnpPscTest, MsrRequestToSharedOfValidatedPageIsRefused) {
  ASSERT_OK(model_->ConvertToPrivate(0x3000, kPage));
  const uint64_t response = Msr(0x3000, PscOperation::kShared);
  EXPECT_EQ(response & snp::kGhcbInfoMask, snp::kGhcbMsrPscResponse);
  EXPECT_EQ(snp::PscResponseError(response), snp::kPscErrorStillValidated);
  EXPECT_EQ(*model_->PageState(0x3000), SnpPageState::kValidated);
}

// GHCB 2.3.1: after PVALIDATE(0) a shared request (operation 2) unassigns the page.
TEST_F(SnpPscTest, MsrRequestToSharedAfterRescindUnassigns) {
  ASSERT_OK(model_->ConvertToPrivate(0x3000, kPage));
  ASSERT_EQ(*model_->Pvalidate(0x3000, PageSize::k4K, false), PvalidateResult::kSuccess);
  EXPECT_EQ(Msr(0x3000, PscOperation::kShared), 0x015u);
  EXPECT_EQ(*model_->PageState(0x3000), SnpPageState::kHypervisorOwned);
}

// GHCB 2.3.1: a request that is not a well-formed PSC gets an error response, no state change.
TEST_F(SnpPscTest, MalformedMsrRequestsAreRefused) {
  const uint64_t good = snp::EncodePscRequest(3, PscOperation::kPrivate);
  const std::vector<uint64_t> bad = {
      (good & ~snp::kGhcbInfoMask) | 0x012,  // Another GHCB MSR request.
      good & ~(uint64_t{0xf} << 52),         // Operation 0.
      good | (uint64_t{3} << 52),            // Operation 3 (PSMASH hint, NAE only).
      good | (uint64_t{1} << 60),            // Reserved bits 63:56.
      snp::EncodePscRequest(5 * kMiB >> 12, PscOperation::kPrivate),  // A hole.
      snp::EncodePscRequest(8 * kMiB >> 12, PscOperation::kPrivate),  // Past the end.
  };
  for (uint64_t request : bad) {
    const uint64_t response = model_->HandleGhcbMsr(request);
    EXPECT_EQ(response & snp::kGhcbInfoMask, snp::kGhcbMsrPscResponse) << std::hex << request;
    EXPECT_EQ(snp::PscResponseError(response), snp::kPscErrorBadRequest) << std::hex << request;
  }
  EXPECT_EQ(*model_->PageState(0x3000), SnpPageState::kHypervisorOwned);
}

// GHCB 2.3.1 encoding, known answers from Linux's GHCB_MSR_PSC_REQ_GFN / _RESP_VAL macros.
TEST(SnpPscEncodingTest, MsrLayoutMatchesTheSpec) {
  EXPECT_EQ(snp::EncodePscRequest(0x12345, PscOperation::kShared), 0x0020000012345014u);
  EXPECT_EQ(snp::EncodePscRequest(0xabcdef, PscOperation::kPrivate), 0x0010000abcdef014u);
  EXPECT_EQ(snp::PscRequestGfn(0x0020000012345014), 0x12345u);
  EXPECT_EQ(snp::PscRequestOperation(0x0020000012345014), 2u);
  EXPECT_EQ(snp::PscResponseError(0xdeadbeef00000015), 0xdeadbeefu);
}

// APM vol. 3 PSMASH: a 4 KiB private request inside a 2 MiB entry makes the host split it into
// 512 4 KiB entries that keep assigned, validated and consecutive GPAs.
TEST_F(SnpPscTest, Private4KRequestInside2MEntryPsmashes) {
  Assign2MAndValidate(0x200000);
  EXPECT_EQ(Rmp(0x234000).page_size, PageSize::k2M);
  ASSERT_OK(model_->PageStateChange(0x234000, PageSize::k4K, PscOperation::kPrivate));
  for (uint64_t gpa : {uint64_t{0x200000}, uint64_t{0x234000}, uint64_t{0x3ff000}}) {
    const RmpEntry entry = Rmp(gpa);
    EXPECT_EQ(entry.page_size, PageSize::k4K);
    EXPECT_TRUE(entry.assigned && entry.validated);
    EXPECT_EQ(entry.guest_gpa, gpa);
  }
  std::array<uint8_t, 8> bytes{};
  ASSERT_OK(model_->GuestRead(model_->PrivateAddress(0x234000), absl::MakeSpan(bytes)));
}

// PSMASH then RMPUPDATE: a 4 KiB shared request inside an unvalidated 2 MiB entry unassigns
// only that page; its 511 neighbours stay assigned under 4 KiB entries.
TEST_F(SnpPscTest, Shared4KRequestInside2MEntryPsmashesThenUnassigns) {
  ASSERT_OK(model_->PageStateChange(0x200000, PageSize::k2M, PscOperation::kPrivate));
  ASSERT_OK(model_->PageStateChange(0x201000, PageSize::k4K, PscOperation::kShared));
  EXPECT_FALSE(Rmp(0x201000).assigned);
  EXPECT_TRUE(Rmp(0x200000).assigned);
  EXPECT_EQ(Rmp(0x200000).page_size, PageSize::k4K);
  EXPECT_TRUE(Rmp(0x202000).assigned);
}

// The guest's conversion of one 4 KiB page out of a validated 2 MiB entry: its PVALIDATE(0)
// faults with SIZEM, the host PSMASHes, the retry succeeds, then the page goes shared.
TEST_F(SnpPscTest, ConvertingOnePageOfA2MEntryToSharedSplitsIt) {
  Assign2MAndValidate(0x200000);
  ASSERT_OK(model_->ConvertToShared(0x201000, kPage));
  EXPECT_EQ(*model_->PageState(0x201000), SnpPageState::kHypervisorOwned);
  EXPECT_EQ(*model_->PageState(0x202000), SnpPageState::kValidated);
}

// A 2 MiB request over 512 hypervisor-owned pages yields one 2 MiB entry, and the host maps it
// with a 2 MiB nested page, so C=1 accesses see no size mismatch.
TEST_F(SnpPscTest, Private2MRequestMakesOne2MEntry) {
  Assign2MAndValidate(0x600000);
  const RmpEntry entry = Rmp(0x7ff000);
  EXPECT_EQ(entry.page_size, PageSize::k2M);
  EXPECT_EQ(entry.guest_gpa, 0x600000u);
  std::array<uint8_t, 8> bytes{};
  ASSERT_OK(model_->GuestRead(model_->PrivateAddress(0x7ff000), absl::MakeSpan(bytes)));
}

// RMPUPDATE FAIL_OVERLAP: a 2 MiB entry cannot cover assigned 4 KiB entries, so a 2 MiB
// request over mixed pages assigns the rest one 4 KiB page at a time.
TEST_F(SnpPscTest, Private2MRequestOverMixedPagesUses4KEntries) {
  ASSERT_OK(model_->ConvertToPrivate(0x205000, kPage));
  EXPECT_EQ(*model_->RmpUpdate(0x200000, {true, PageSize::k2M, 0x200000, false}),
            RmpUpdateResult::kFailOverlap);
  ASSERT_OK(model_->PageStateChange(0x200000, PageSize::k2M, PscOperation::kPrivate));
  EXPECT_EQ(Rmp(0x3ff000).page_size, PageSize::k4K);
  EXPECT_TRUE(Rmp(0x3ff000).assigned);
  EXPECT_EQ(*model_->PageState(0x205000), SnpPageState::kValidated);  // Left as it was.
}

// RMPUPDATE FAIL_OVERLAP: a 4 KiB update inside a 2 MiB entry needs a PSMASH first.
TEST_F(SnpPscTest, RmpUpdate4KInside2MEntryIsFailOverlap) {
  ASSERT_OK(model_->PageStateChange(0x200000, PageSize::k2M, PscOperation::kPrivate));
  EXPECT_EQ(*model_->RmpUpdate(0x201000, {false, PageSize::k4K, 0, false}),
            RmpUpdateResult::kFailOverlap);
  EXPECT_EQ(Rmp(0x201000).page_size, PageSize::k2M);
}

// APM 15.36: any RMPUPDATE of a guest page clears its validated bit (the guest must notice).
TEST_F(SnpPscTest, RmpUpdateClearsValidated) {
  ASSERT_OK(model_->ConvertToPrivate(0x6000, kPage));
  EXPECT_EQ(*model_->RmpUpdate(0x6000, {true, PageSize::k4K, 0x6000, false}),
            RmpUpdateResult::kSuccess);
  EXPECT_EQ(*model_->PageState(0x6000), SnpPageState::kAssigned);
}

// APM 15.36: the host may unassign a validated page (RMPUPDATE does not ask the guest); the
// guest's next C=1 access faults and the host still sees only ciphertext.
TEST_F(SnpPscTest, HostUnassigningValidatedPageRevokesGuestAccess) {
  ASSERT_OK(model_->ConvertToPrivate(0x6000, kPage));
  const std::vector<uint8_t> secret(kPage, 0x5a);
  ASSERT_OK(model_->GuestWrite(model_->PrivateAddress(0x6000), absl::MakeConstSpan(secret)));
  EXPECT_EQ(*model_->RmpUpdate(0x6000, {false, PageSize::k4K, 0, false}),
            RmpUpdateResult::kSuccess);
  std::vector<uint8_t> seen(kPage);
  const absl::Status status =
      model_->GuestRead(model_->PrivateAddress(0x6000), absl::MakeSpan(seen));
  const auto error = GetIsolationError(status);
  ASSERT_TRUE(error.has_value()) << status;
  EXPECT_EQ(error->kind, IsolationErrorKind::kNestedPageFault);
  ASSERT_OK(GuestMemory::Untrusted(backing_).Read(0x6000, absl::MakeSpan(seen)));
  EXPECT_NE(seen, secret);
}

// RMPUPDATE FAIL_PERMISSION for immutable entries (firmware pages); a PSC over one reports it.
TEST_F(SnpPscTest, ImmutablePageCannotChangeState) {
  ASSERT_EQ(*model_->RmpUpdate(0x8000, {true, PageSize::k4K, 0x8000, true}),
            RmpUpdateResult::kSuccess);
  EXPECT_EQ(*model_->RmpUpdate(0x8000, {false, PageSize::k4K, 0, false}),
            RmpUpdateResult::kFailPermission);
  const uint64_t response = Msr(0x8000, PscOperation::kShared);
  EXPECT_EQ(snp::PscResponseError(response),
            snp::kPscErrorRmpUpdate | static_cast<uint32_t>(RmpUpdateResult::kFailPermission));
  EXPECT_TRUE(Rmp(0x8000).immutable);
}

// A PSC for a page a device has pinned: the typed API gives kPinned, the MSR protocol an error
// response, and the RMP is unchanged.
TEST_F(SnpPscTest, RequestForPinnedPageFailsWithoutChange) {
  auto pinned = GuestMemory::Untrusted(backing_).Pin({0x9}, guestmem::Access::kReadWrite);
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  const absl::Status status =
      model_->PageStateChange(0x9000, PageSize::k4K, PscOperation::kPrivate);
  EXPECT_TRUE(guestmem::IsError(status, ErrorKind::kPinned)) << status;
  EXPECT_EQ(snp::PscResponseError(Msr(0x9000, PscOperation::kPrivate)), snp::kPscErrorPinned);
  EXPECT_FALSE(Rmp(0x9000).assigned);
  // A 2 MiB request that would need the pinned page assigns none of its 512 pages.
  ASSERT_OK(model_->ConvertToPrivate(0x1000, kPage));  // Makes the 2 MiB region mixed.
  EXPECT_TRUE(guestmem::IsError(model_->PageStateChange(0, PageSize::k2M, PscOperation::kPrivate),
                                ErrorKind::kPinned));
  EXPECT_FALSE(Rmp(0).assigned);
  EXPECT_FALSE(Rmp(0x1ff000).assigned);
}

}  // namespace
}  // namespace cvmbus::hw::isolation
