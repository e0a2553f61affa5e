// SEV-SNP rules, one test each. Sources: AMD64 APM vol. 2 section 15.36 "Secure Nested Paging
// (SEV-SNP)" (the RMP, RMP checks, #VC, Virtual Top-of-Memory), APM vol. 3 "PVALIDATE"; GHCB
// spec section 2.3.1 "Page State Change".
#include "hw/isolation/snp_model.h"

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
using snp::PageSize;
using snp::PscOperation;
using snp::PvalidateResult;
namespace fault = snp::fault;

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kPage = 4096;
constexpr uint64_t kMarker = 0x5ec7e7da7a5ec7e7;  // "secret data": never seen by the host.

// [0, 4 MiB) RAM, a hole at [4 MiB, 6 MiB), [6 MiB, 8 MiB) RAM.
std::shared_ptr<guestmem::MemoryBacking> MakeBacking() {
  guestmem::MemoryOptions options;
  options.name = "snp";
  options.regions = {{0, 4 * kMiB}, {6 * kMiB, 2 * kMiB}};
  auto backing = guestmem::MemoryBacking::Create(options);
  EXPECT_TRUE(backing.ok()) << backing.status();
  return *backing;
}

void ExpectIsolation(const absl::Status& status, IsolationErrorKind kind, uint64_t code) {
  const auto error = GetIsolationError(status);
  ASSERT_TRUE(error.has_value()) << status;
  EXPECT_EQ(error->kind, kind) << status;
  EXPECT_EQ(error->code, code) << std::hex << error->code << " " << status;
}

std::vector<uint8_t> Marked(size_t len) {
  std::vector<uint8_t> bytes(len);
  for (size_t i = 0; i + 8 <= len; i += 8) std::memcpy(&bytes[i], &kMarker, 8);
  return bytes;
}

bool ContainsMarker(const std::vector<uint8_t>& bytes) {
  for (size_t i = 0; i + 8 <= bytes.size(); i += 8) {
    uint64_t word;
    std::memcpy(&word, &bytes[i], 8);
    if (word == kMarker) return true;
  }
  return false;
}

class SnpModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    backing_ = MakeBacking();
    auto model = SnpModel::Create(backing_);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
  }
  // Assigned by the host and validated by the guest, like a page after ConvertToPrivate.
  void MakePrivate(uint64_t gpa) { ASSERT_OK(model_->ConvertToPrivate(gpa, kPage)); }
  void Assign(uint64_t gpa) {
    ASSERT_OK(model_->PageStateChange(gpa, PageSize::k4K, PscOperation::kPrivate));
  }
  absl::Status GuestReadPage(uint64_t address, std::vector<uint8_t>* out) {
    out->assign(kPage, 0);
    return model_->GuestRead(address, absl::MakeSpan(*out));
  }

  std::shared_ptr<guestmem::MemoryBacking> backing_;
  std::unique_ptr<SnpModel> model_;
};

// APM 15.36 (RMP): at start every RMP entry is hypervisor-owned; only the shared view works.
TEST_F(SnpModelTest, NewPagesAreHypervisorOwned) {
  EXPECT_EQ(*model_->PageState(0x3000), SnpPageState::kHypervisorOwned);
  std::array<uint8_t, 8> bytes{};
  EXPECT_TRUE(GuestMemory::Untrusted(backing_).Read(0x3000, absl::MakeSpan(bytes)).ok());
  EXPECT_TRUE(guestmem::IsError(GuestMemory::Private(backing_).Read(0x3000, absl::MakeSpan(bytes)),
                                ErrorKind::kNotPrivate));
}

// APM vol. 3 PVALIDATE: validating an assigned, unvalidated page returns 0 and sets the bit.
TEST_F(SnpModelTest, PvalidateValidatesAssignedPage) {
  Assign(0x5000);
  auto result = model_->Pvalidate(0x5000, PageSize::k4K, true);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, PvalidateResult::kSuccess);
  EXPECT_EQ(*model_->PageState(0x5000), SnpPageState::kValidated);
}

// PVALIDATE: CF = 1 (no update) when the page is already validated; a double validation is a
// replay sign, so it is an error the caller cannot take for success.
TEST_F(SnpModelTest, PvalidateOfValidatedPageIsNoUpdate) {
  MakePrivate(0x5000);
  ExpectIsolation(model_->Pvalidate(0x5000, PageSize::k4K, true).status(),
                  IsolationErrorKind::kPvalidateNoUpdate, 0);
  EXPECT_EQ(*model_->PageState(0x5000), SnpPageState::kValidated);
}

// PVALIDATE: rescinding a page that is not validated also leaves CF = 1.
TEST_F(SnpModelTest, PvalidateRescindOfUnvalidatedPageIsNoUpdate) {
  Assign(0x5000);
  ExpectIsolation(model_->Pvalidate(0x5000, PageSize::k4K, false).status(),
                  IsolationErrorKind::kPvalidateNoUpdate, 0);
}

// PVALIDATE: FAIL_INPUT (1) for an address not aligned to the page size or a bad size operand.
TEST_F(SnpModelTest, PvalidateWithBadOperandsIsFailInput) {
  EXPECT_EQ(*model_->Pvalidate(0x5008, PageSize::k4K, true), PvalidateResult::kFailInput);
  EXPECT_EQ(*model_->Pvalidate(0x1000, PageSize::k2M, true), PvalidateResult::kFailInput);
  EXPECT_EQ(*model_->Pvalidate(0, static_cast<PageSize>(2), true), PvalidateResult::kFailInput);
}

// PVALIDATE: FAIL_SIZEMISMATCH (6) for a 2 MiB PVALIDATE of a page with a 4 KiB RMP entry.
TEST_F(SnpModelTest, Pvalidate2MOf4KEntryIsFailSizeMismatch) {
  Assign(0x200000);
  EXPECT_EQ(*model_->Pvalidate(0x200000, PageSize::k2M, true), PvalidateResult::kFailSizeMismatch);
  EXPECT_EQ(*model_->PageState(0x200000), SnpPageState::kAssigned);
}

// APM 15.36 (RMP checks; KVM's RMP #NPF handler): a 4 KiB PVALIDATE inside a 2 MiB RMP entry is a
// nested page fault with RMP and SIZEM set; the host resolves it with PSMASH.
TEST_F(SnpModelTest, Pvalidate4KInside2MEntryIsNpfSizeMismatch) {
  ASSERT_OK(model_->PageStateChange(0x200000, PageSize::k2M, PscOperation::kPrivate));
  ExpectIsolation(model_->Pvalidate(0x201000, PageSize::k4K, true).status(),
                  IsolationErrorKind::kNestedPageFault,
                  fault::kFinal | fault::kPresent | fault::kRmp | fault::kSizeMismatch);
}

// PVALIDATE of a page not assigned to the guest (hypervisor-owned) is a nested page fault.
TEST_F(SnpModelTest, PvalidateOfHypervisorOwnedPageIsNpf) {
  ExpectIsolation(model_->Pvalidate(0x5000, PageSize::k4K, true).status(),
                  IsolationErrorKind::kNestedPageFault,
                  fault::kFinal | fault::kPresent | fault::kRmp);
}

// APM 15.36 (RMP checks): a host write to a page assigned to a guest is an RMP #PF (error code bit
// 31).
TEST_F(SnpModelTest, HostWriteToAssignedPageIsRmpPageFault) {
  Assign(0x7000);
  const std::array<uint8_t, 4> bytes{1, 2, 3, 4};
  const absl::Status status = model_->HostWrite(0x7ffe, absl::MakeConstSpan(bytes));
  ExpectIsolation(status, IsolationErrorKind::kRmpPageFault, 0x80000003);  // P | W | RMP.
  ExpectIsolation(status, IsolationErrorKind::kRmpPageFault,
                  fault::kPresent | fault::kWrite | fault::kRmp);
}

// APM 15.36 (RMP checks): host reads are not RMP-checked; without the guest's key they return
// ciphertext.
TEST_F(SnpModelTest, HostReadOfPrivatePageSeesOnlyCiphertext) {
  MakePrivate(0x7000);
  const std::vector<uint8_t> secret = Marked(kPage);
  ASSERT_OK(model_->GuestWrite(model_->PrivateAddress(0x7000), absl::MakeConstSpan(secret)));
  std::vector<uint8_t> seen(kPage);
  ASSERT_OK(model_->HostRead(0x7000, absl::MakeSpan(seen)));
  EXPECT_FALSE(ContainsMarker(seen));
  EXPECT_NE(seen, std::vector<uint8_t>(kPage, 0));
}

// APM 15.36 (#VC, PAGE_NOT_VALIDATED): a C=1 access to an assigned page that is not validated
// raises #VC with error code 0x404 (PAGE_NOT_VALIDATED).
TEST_F(SnpModelTest, GuestPrivateAccessToUnvalidatedPageIsVc404) {
  Assign(0x8000);
  std::vector<uint8_t> out;
  ExpectIsolation(GuestReadPage(model_->PrivateAddress(0x8000), &out),
                  IsolationErrorKind::kVmmCommunication, 0x404);
}

// APM 15.36 (RMP checks): a C=1 access to a hypervisor-owned page is a #NPF with RMP and ENC set.
TEST_F(SnpModelTest, GuestPrivateAccessToHypervisorOwnedPageIsNpfRmpEnc) {
  std::vector<uint8_t> out;
  ExpectIsolation(GuestReadPage(model_->PrivateAddress(0x8000), &out),
                  IsolationErrorKind::kNestedPageFault, 0x580000001);  // FINAL|ENC|RMP|P.
  const std::array<uint8_t, 1> byte{7};
  ExpectIsolation(model_->GuestWrite(model_->PrivateAddress(0x8000), absl::MakeConstSpan(byte)),
                  IsolationErrorKind::kNestedPageFault,
                  fault::kFinal | fault::kEnc | fault::kRmp | fault::kPresent | fault::kWrite);
}

// APM 15.36 (RMP checks): a C=1 access through a nested mapping smaller than the 2 MiB RMP entry is
// a #NPF with SIZEM (bit 35) set.
TEST_F(SnpModelTest, GuestPrivateAccessWithPageSizeMismatchIsNpfSizem) {
  ASSERT_OK(model_->PageStateChange(0x200000, PageSize::k2M, PscOperation::kPrivate));
  ASSERT_EQ(*model_->Pvalidate(0x200000, PageSize::k2M, true), PvalidateResult::kSuccess);
  std::vector<uint8_t> out;
  ASSERT_OK(GuestReadPage(model_->PrivateAddress(0x203000), &out));
  ASSERT_OK(model_->SetNestedPageSize(0x200000, PageSize::k4K));
  ExpectIsolation(
      GuestReadPage(model_->PrivateAddress(0x203000), &out), IsolationErrorKind::kNestedPageFault,
      fault::kFinal | fault::kPresent | fault::kRmp | fault::kEnc | fault::kSizeMismatch);
}

// APM 15.36 (RMP checks): a C=0 guest access is checked like a host access: an assigned page
// faults.
TEST_F(SnpModelTest, GuestSharedAccessToAssignedPageIsNpfRmp) {
  MakePrivate(0x9000);
  std::vector<uint8_t> out;
  ExpectIsolation(GuestReadPage(model_->SharedAddress(0x9000), &out),
                  IsolationErrorKind::kNestedPageFault,
                  fault::kFinal | fault::kPresent | fault::kRmp);
}

// APM 15.36 (RMP checks): the RMP entry's guest GPA must match the access (it defeats remapping).
TEST_F(SnpModelTest, GuestPrivateAccessToPageAssignedAtOtherGpaIsNpf) {
  auto result = model_->RmpUpdate(0x9000, {true, PageSize::k4K, 0xa000, false});
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(*result, snp::RmpUpdateResult::kSuccess);
  std::vector<uint8_t> out;
  ExpectIsolation(GuestReadPage(model_->PrivateAddress(0x9000), &out),
                  IsolationErrorKind::kNestedPageFault,
                  fault::kFinal | fault::kPresent | fault::kRmp | fault::kEnc);
  ExpectIsolation(model_->Pvalidate(0x9000, PageSize::k4K, true).status(),
                  IsolationErrorKind::kNestedPageFault,
                  fault::kFinal | fault::kPresent | fault::kRmp);
}

// The model's view rule: private read-write only on assigned+validated pages, untrusted only on
// hypervisor-owned pages, neither on assigned+unvalidated pages.
TEST_F(SnpModelTest, GuestmemViewsFollowRmpState) {
  const GuestMemory private_view = GuestMemory::Private(backing_);
  const GuestMemory untrusted_view = GuestMemory::Untrusted(backing_);
  std::array<uint8_t, 8> bytes{};
  const auto expect_views = [&](uint64_t gpa, bool private_ok, bool untrusted_ok) {
    const absl::Status p = private_view.Write(gpa, absl::MakeConstSpan(bytes));
    const absl::Status u = untrusted_view.Write(gpa, absl::MakeConstSpan(bytes));
    EXPECT_EQ(p.ok(), private_ok) << p;
    EXPECT_EQ(u.ok(), untrusted_ok) << u;
    if (!private_ok) {
      EXPECT_TRUE(guestmem::IsError(p, ErrorKind::kNotPrivate)) << p;
    }
    if (!untrusted_ok) {
      EXPECT_TRUE(guestmem::IsError(u, ErrorKind::kNotShared)) << u;
    }
  };
  expect_views(0xb000, false, true);
  Assign(0xb000);
  expect_views(0xb000, false, false);
  ASSERT_EQ(*model_->Pvalidate(0xb000, PageSize::k4K, true), PvalidateResult::kSuccess);
  expect_views(0xb000, true, false);
  ASSERT_EQ(*model_->Pvalidate(0xb000, PageSize::k4K, false), PvalidateResult::kSuccess);
  expect_views(0xb000, false, false);
  ASSERT_OK(model_->PageStateChange(0xb000, PageSize::k4K, PscOperation::kShared));
  expect_views(0xb000, false, true);
}

// APM 15.36 (Virtual Top-of-Memory): with vTOM, GPAs below vTOM are private and GPA + vTOM is the
// shared alias of the same page, for the guest and the host alike.
TEST(SnpVtomTest, SharedAliasAboveVtomIsTheSamePage) {
  const auto backing = MakeBacking();
  const uint64_t vtom = uint64_t{1} << 40;
  auto model = SnpModel::Create(backing, {.vtom = vtom});
  ASSERT_TRUE(model.ok()) << model.status();
  SnpModel& snp = **model;
  EXPECT_EQ(snp.SharedAddress(0x4000), vtom + 0x4000);
  EXPECT_EQ(snp.PrivateAddress(0x4000), 0x4000);
  const std::array<uint8_t, 4> bytes{9, 8, 7, 6};
  ASSERT_OK(snp.GuestWrite(vtom + 0x4000, absl::MakeConstSpan(bytes)));
  std::array<uint8_t, 4> seen{};
  ASSERT_OK(snp.HostRead(vtom + 0x4000, absl::MakeSpan(seen)));
  EXPECT_EQ(seen, bytes);
  ASSERT_OK(GuestMemory::Untrusted(backing).Read(0x4000, absl::MakeSpan(seen)));
  EXPECT_EQ(seen, bytes);
  ExpectIsolation(snp.GuestRead(0x4000, absl::MakeSpan(seen)), IsolationErrorKind::kNestedPageFault,
                  fault::kFinal | fault::kPresent | fault::kRmp | fault::kEnc);
  ASSERT_OK(snp.ConvertToPrivate(0x4000, kPage));
  ASSERT_OK(snp.GuestRead(0x4000, absl::MakeSpan(seen)));
  ExpectIsolation(snp.GuestRead(vtom + 0x4000, absl::MakeSpan(seen)),
                  IsolationErrorKind::kNestedPageFault,
                  fault::kFinal | fault::kPresent | fault::kRmp);
  ExpectIsolation(snp.HostWrite(vtom + 0x4000, absl::MakeConstSpan(bytes)),
                  IsolationErrorKind::kRmpPageFault, fault::kPresent | fault::kWrite | fault::kRmp);
}

// SNP firmware ABI, SNP_LAUNCH_UPDATE: launch pages are assigned and validated with their
// (measured) contents.
TEST_F(SnpModelTest, LaunchUpdatePagesAreValidatedWithContents) {
  const std::vector<uint8_t> image = Marked(2 * kPage);
  ASSERT_OK(GuestMemory::Untrusted(backing_).Write(0x10000, absl::MakeConstSpan(image)));
  ASSERT_OK(model_->LaunchUpdate(0x10000, 2 * kPage));
  EXPECT_EQ(*model_->PageState(0x11000), SnpPageState::kValidated);
  std::vector<uint8_t> seen(2 * kPage);
  ASSERT_OK(model_->GuestRead(model_->PrivateAddress(0x10000), absl::MakeSpan(seen)));
  EXPECT_EQ(seen, image);
}

// GHCB 2.3.1 and APM 15.36: private bytes never reach the host, not even after the page is
// converted to shared: the host reads ciphertext, not the guest's data.
TEST_F(SnpModelTest, PrivateBytesAreNotVisibleAfterConversionToShared) {
  MakePrivate(0xc000);
  const std::vector<uint8_t> secret = Marked(kPage);
  ASSERT_OK(model_->GuestWrite(model_->PrivateAddress(0xc000), absl::MakeConstSpan(secret)));
  ASSERT_OK(model_->ConvertToShared(0xc000, kPage));
  std::vector<uint8_t> seen(kPage);
  ASSERT_OK(model_->HostRead(0xc000, absl::MakeSpan(seen)));
  EXPECT_FALSE(ContainsMarker(seen));
  ASSERT_OK(GuestMemory::Untrusted(backing_).Read(0xc000, absl::MakeSpan(seen)));
  EXPECT_FALSE(ContainsMarker(seen));
}

// GHCB 2.3.1: a page made private must be validated before use and then reads as scrubbed
// (zeros), not as what the host left in it.
TEST_F(SnpModelTest, PageMadePrivateReadsZerosOnlyAfterValidation) {
  const std::vector<uint8_t> host_bytes(kPage, 0xab);
  ASSERT_OK(model_->HostWrite(0xd000, absl::MakeConstSpan(host_bytes)));
  Assign(0xd000);
  std::vector<uint8_t> seen;
  ExpectIsolation(GuestReadPage(model_->PrivateAddress(0xd000), &seen),
                  IsolationErrorKind::kVmmCommunication, snp::kVcPageNotValidated);
  ASSERT_EQ(*model_->Pvalidate(0xd000, PageSize::k4K, true), PvalidateResult::kSuccess);
  ASSERT_OK(GuestReadPage(model_->PrivateAddress(0xd000), &seen));
  EXPECT_EQ(seen, std::vector<uint8_t>(kPage, 0));
}

// A conversion of a page a device has pinned fails with guestmem's kPinned, names the model's
// operation, and leaves the RMP as it was.
TEST_F(SnpModelTest, ConversionOfPinnedPageFailsAndKeepsRmp) {
  MakePrivate(0xe000);
  {
    auto pinned = GuestMemory::Private(backing_).Pin({0xe}, guestmem::Access::kReadWrite);
    ASSERT_TRUE(pinned.ok()) << pinned.status();
    const absl::Status status = model_->ConvertToShared(0xe000, kPage);
    EXPECT_TRUE(guestmem::IsError(status, ErrorKind::kPinned)) << status;
    EXPECT_NE(status.message().find("PVALIDATE"), absl::string_view::npos) << status;
    EXPECT_EQ(*model_->PageState(0xe000), SnpPageState::kValidated);
  }
  ASSERT_OK(model_->ConvertToShared(0xe000, kPage));
  {
    auto pinned = GuestMemory::Untrusted(backing_).Pin({0xe}, guestmem::Access::kRead);
    ASSERT_TRUE(pinned.ok()) << pinned.status();
    const absl::Status status =
        model_->PageStateChange(0xe000, PageSize::k4K, PscOperation::kPrivate);
    EXPECT_TRUE(guestmem::IsError(status, ErrorKind::kPinned)) << status;
    EXPECT_NE(status.message().find("snp 'snp'"), absl::string_view::npos) << status;
    EXPECT_EQ(*model_->PageState(0xe000), SnpPageState::kHypervisorOwned);
  }
}

// Model options must describe a consistent address layout.
TEST(SnpCreateTest, RejectsInconsistentAddressing) {
  const auto backing = MakeBacking();
  EXPECT_FALSE(SnpModel::Create(backing, {.vtom = 0x300000}).ok());      // Not 2 MiB aligned.
  EXPECT_FALSE(SnpModel::Create(backing, {.vtom = 0x400000}).ok());      // Below the memory.
  EXPECT_FALSE(SnpModel::Create(backing, {.c_bit_position = 20}).ok());  // Inside the memory.
  EXPECT_FALSE(SnpModel::Create(nullptr).ok());
}

}  // namespace
}  // namespace cvmbus::hw::isolation
