#include "guestmem/guest_memory.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "guestmem/errors.h"

namespace cvmbus::guestmem {
namespace {

constexpr uint64_t kMiB = 1 << 20;

// Layout used by most tests: [0, 1 MiB) RAM, a 1 MiB hole, [2 MiB, 3 MiB) RAM.
std::shared_ptr<MemoryBacking> MakeSparse(BackingType type = BackingType::kMemfd) {
  MemoryOptions options;
  options.name = "test";
  options.type = type;
  options.regions = {{0, kMiB}, {2 * kMiB, kMiB}};
  auto backing = MemoryBacking::Create(options);
  EXPECT_TRUE(backing.ok()) << backing.status();
  return *backing;
}

std::vector<uint8_t> Pattern(size_t len, uint8_t seed) {
  std::vector<uint8_t> bytes(len);
  for (size_t i = 0; i < len; ++i) bytes[i] = static_cast<uint8_t>(seed + i * 7);
  return bytes;
}

void ExpectKind(const absl::Status& status, ErrorKind kind) {
  EXPECT_EQ(GetErrorKind(status), kind) << status;
}

TEST(MemoryBackingTest, RejectsBadLayouts) {
  const auto create = [](std::vector<GuestRegion> regions) {
    MemoryOptions options;
    options.regions = std::move(regions);
    return MemoryBacking::Create(options).status();
  };
  ExpectKind(create({}), ErrorKind::kInvalidArgument);
  ExpectKind(create({{0, 0}}), ErrorKind::kInvalidArgument);
  ExpectKind(create({{0, 100}}), ErrorKind::kInvalidArgument);
  ExpectKind(create({{0x800, 4096}}), ErrorKind::kInvalidArgument);
  ExpectKind(create({{0, 8192}, {4096, 4096}}), ErrorKind::kInvalidArgument);
  ExpectKind(create({{kMaxGuestPhysicalBytes, 4096}}), ErrorKind::kInvalidArgument);
  ExpectKind(create({{~uint64_t{0} & ~kPageMask, 4096}}), ErrorKind::kInvalidArgument);
  MemoryOptions file;
  file.type = BackingType::kFile;
  file.regions = {{0, 4096}};
  ExpectKind(MemoryBacking::Create(file).status(), ErrorKind::kInvalidArgument);
}

TEST(MemoryBackingTest, ErrorMessageNamesMemoryViewOperationAndRange) {
  GuestMemory memory = GuestMemory::Untrusted(MakeSparse());
  std::array<uint8_t, 16> buffer{};
  const absl::Status status = memory.Read(kMiB + 0x10, absl::MakeSpan(buffer));
  EXPECT_EQ(std::string(status.message()),
            "guestmem 'test' untrusted view: read [0x100010, +0x10): page 0x100000 is a hole");
}

class EveryBackingTest : public testing::TestWithParam<BackingType> {
 protected:
  std::shared_ptr<MemoryBacking> Make() {
    if (GetParam() != BackingType::kFile) return MakeSparse(GetParam());
    path_ = testing::TempDir() + "/guestmem_file_backing";
    MemoryOptions options;
    options.name = "file";
    options.type = BackingType::kFile;
    options.file_path = path_;
    options.regions = {{0, kMiB}, {2 * kMiB, kMiB}};
    auto backing = MemoryBacking::Create(options);
    EXPECT_TRUE(backing.ok()) << backing.status();
    return *backing;
  }
  void TearDown() override {
    if (!path_.empty()) unlink(path_.c_str());
  }
  std::string path_;
};

TEST_P(EveryBackingTest, RoundTripsAcrossPagesAndRegions) {
  GuestMemory memory = GuestMemory::Private(Make());
  const std::vector<uint8_t> bytes = Pattern(3 * 4096, 1);
  ASSERT_TRUE(memory.Write(0x800, bytes).ok());  // Crosses three page boundaries.
  std::vector<uint8_t> back(bytes.size());
  ASSERT_TRUE(memory.Read(0x800, absl::MakeSpan(back)).ok());
  EXPECT_EQ(back, bytes);
  ASSERT_TRUE(memory.Write(2 * kMiB + 5, bytes).ok());
  ASSERT_TRUE(memory.Read(2 * kMiB + 5, absl::MakeSpan(back)).ok());
  EXPECT_EQ(back, bytes);
}

TEST_P(EveryBackingTest, HolesAndTheEndAreOutOfRangeNotSigsegv) {
  GuestMemory memory = GuestMemory::Private(Make());
  uint8_t byte = 0;
  ExpectKind(memory.Read(kMiB, absl::MakeSpan(&byte, 1)), ErrorKind::kOutOfRange);
  ExpectKind(memory.Read(2 * kMiB - 1, absl::MakeSpan(&byte, 1)), ErrorKind::kOutOfRange);
  ExpectKind(memory.Read(3 * kMiB, absl::MakeSpan(&byte, 1)), ErrorKind::kOutOfRange);
  // A range that starts in RAM and runs into the hole fails as a whole, writing nothing.
  std::vector<uint8_t> two_pages(8192, 0xaa);
  ExpectKind(memory.Write(kMiB - 4096, two_pages), ErrorKind::kOutOfRange);
  ASSERT_TRUE(memory.Read(kMiB - 1, absl::MakeSpan(&byte, 1)).ok());
  EXPECT_EQ(byte, 0);
}

INSTANTIATE_TEST_SUITE_P(Backings, EveryBackingTest,
                         testing::Values(BackingType::kAnonymous, BackingType::kMemfd,
                                         BackingType::kFile));

TEST(GuestMemoryTest, LastByteOfARegionIsAccessible) {
  GuestMemory memory = GuestMemory::Private(MakeSparse());
  ASSERT_TRUE(memory.WritePlain<uint8_t>(3 * kMiB - 1, 0x5a).ok());
  auto value = memory.ReadPlain<uint8_t>(3 * kMiB - 1);
  ASSERT_TRUE(value.ok());
  EXPECT_EQ(*value, 0x5a);
  ExpectKind(memory.ReadPlain<uint16_t>(3 * kMiB - 1).status(), ErrorKind::kOutOfRange);
}

TEST(GuestMemoryTest, GpaOverflowIsTypedOverflow) {
  GuestMemory memory = GuestMemory::Private(MakeSparse());
  std::array<uint8_t, 16> buffer{};
  ExpectKind(memory.Read(~uint64_t{0} - 4, absl::MakeSpan(buffer)), ErrorKind::kOverflow);
  ExpectKind(memory.Fill(~uint64_t{0}, 2, 0), ErrorKind::kOverflow);
  ExpectKind(memory.ReadPlain<uint64_t>(~uint64_t{0} - 3).status(), ErrorKind::kOverflow);
}

TEST(GuestMemoryTest, ZeroLengthAccessesSucceedAnywhere) {
  GuestMemory memory = GuestMemory::Private(MakeSparse());
  EXPECT_TRUE(memory.Read(kMiB + 5, absl::Span<uint8_t>()).ok());  // In the hole.
  EXPECT_TRUE(memory.Write(~uint64_t{0}, absl::Span<const uint8_t>()).ok());
  EXPECT_TRUE(memory.Fill(1ull << 60, 0, 1).ok());
}

TEST(GuestMemoryTest, EmptyHandleFailsEveryAccess) {
  GuestMemory memory;
  uint8_t byte = 0;
  ExpectKind(memory.Read(0, absl::MakeSpan(&byte, 1)), ErrorKind::kOutOfRange);
  ExpectKind(memory.FetchOr32(0, 1).status(), ErrorKind::kOutOfRange);
  ExpectKind(memory.Pin({0}, Access::kRead).status(), ErrorKind::kOutOfRange);
}

TEST(GuestMemoryTest, PlainValuesAlignedAndUnaligned) {
  GuestMemory memory = GuestMemory::Private(MakeSparse());
  struct Pair {
    uint32_t a;
    uint16_t b;
  };
  ASSERT_TRUE(memory.WritePlain<uint64_t>(0x1000, 0x1122334455667788).ok());
  EXPECT_EQ(*memory.ReadPlain<uint32_t>(0x1000), 0x55667788u);
  EXPECT_EQ(*memory.ReadPlain<uint16_t>(0x1006), 0x1122u);
  // Unaligned across a page boundary: still correct, just not untorn.
  ASSERT_TRUE(memory.WritePlain<uint64_t>(0x1ffd, 0xa1a2a3a4a5a6a7a8).ok());
  EXPECT_EQ(*memory.ReadPlain<uint64_t>(0x1ffd), 0xa1a2a3a4a5a6a7a8u);
  ASSERT_TRUE(memory.WritePlain(0x3000, Pair{7, 9}).ok());
  auto pair = memory.ReadPlain<Pair>(0x3000);
  ASSERT_TRUE(pair.ok());
  EXPECT_EQ(pair->a, 7u);
  EXPECT_EQ(pair->b, 9u);
}

TEST(GuestMemoryTest, FillAndZero) {
  GuestMemory memory = GuestMemory::Private(MakeSparse());
  ASSERT_TRUE(memory.Fill(0xff0, 0x20, 0xee).ok());
  std::array<uint8_t, 0x30> bytes{};
  ASSERT_TRUE(memory.Read(0xfe8, absl::MakeSpan(bytes)).ok());
  for (size_t i = 0; i < bytes.size(); ++i) {
    EXPECT_EQ(bytes[i], (i >= 8 && i < 0x28) ? 0xee : 0) << i;
  }
  ASSERT_TRUE(memory.Zero(0xff0, 0x20).ok());
  EXPECT_EQ(*memory.ReadPlain<uint64_t>(0x1000), 0u);
}

TEST(GuestMemoryTest, AtomicsRequireAlignmentAndReturnThePreviousValue) {
  GuestMemory memory = GuestMemory::Untrusted(MakeSparse());
  ExpectKind(memory.CompareExchange32(0x102, 0, 1).status(), ErrorKind::kMisaligned);
  ExpectKind(memory.FetchOr64(0x104, 1).status(), ErrorKind::kMisaligned);
  EXPECT_EQ(*memory.CompareExchange32(0x100, 0, 5), 0u);  // Swapped.
  EXPECT_EQ(*memory.CompareExchange32(0x100, 0, 9), 5u);  // Not swapped: saw 5.
  EXPECT_EQ(*memory.FetchOr32(0x100, 0x30), 5u);
  EXPECT_EQ(*memory.ReadPlain<uint32_t>(0x100), 0x35u);
  EXPECT_EQ(*memory.CompareExchange64(0x108, 0, ~uint64_t{0}), 0u);
  EXPECT_EQ(*memory.FetchOr64(0x108, 1), ~uint64_t{0});
  ExpectKind(memory.FetchOr32(kMiB, 1).status(), ErrorKind::kOutOfRange);
}

TEST(GuestMemoryTest, ConcurrentCompareExchangeFromTwoThreadsLosesNoIncrement) {
  GuestMemory memory = GuestMemory::Private(MakeSparse());
  constexpr int kPerThread = 100000;
  const auto increment = [&] {
    for (int i = 0; i < kPerThread; ++i) {
      uint32_t seen = *memory.ReadPlain<uint32_t>(0x40);
      while (true) {
        const uint32_t previous = *memory.CompareExchange32(0x40, seen, seen + 1);
        if (previous == seen) break;
        seen = previous;
      }
      ASSERT_TRUE(memory.FetchOr64(0x48, uint64_t{1} << (i % 64)).ok());
    }
  };
  std::thread a(increment), b(increment);
  a.join();
  b.join();
  EXPECT_EQ(*memory.ReadPlain<uint32_t>(0x40), 2u * kPerThread);
  EXPECT_EQ(*memory.ReadPlain<uint64_t>(0x48), ~uint64_t{0});
}

TEST(ViewTest, WithoutIsolationBothViewsSeeEverything) {
  auto backing = MakeSparse();
  ASSERT_TRUE(GuestMemory::Private(backing).WritePlain<uint32_t>(0x10, 42).ok());
  EXPECT_EQ(*GuestMemory::Untrusted(backing).ReadPlain<uint32_t>(0x10), 42u);
}

TEST(ViewTest, WrongViewAccessesFailWithTheViewsKind) {
  auto backing = MakeSparse();
  GuestMemory private_view = GuestMemory::Private(backing);
  GuestMemory untrusted_view = GuestMemory::Untrusted(backing);
  // Page 1 private only, page 2 shared only, page 3 shared read-only.
  ASSERT_TRUE(backing->SetAccess(0x1000, 0x1000, Access::kReadWrite, Access::kNone).ok());
  ASSERT_TRUE(backing->SetAccess(0x2000, 0x1000, Access::kNone, Access::kReadWrite).ok());
  ASSERT_TRUE(backing->SetAccess(View::kUntrusted, 0x3000, 0x1000, Access::kRead).ok());
  ASSERT_TRUE(backing->SetAccess(View::kPrivate, 0x3000, 0x1000, Access::kNone).ok());

  EXPECT_TRUE(private_view.WritePlain<uint32_t>(0x1000, 1).ok());
  ExpectKind(untrusted_view.ReadPlain<uint32_t>(0x1000).status(), ErrorKind::kNotShared);
  ExpectKind(private_view.ReadPlain<uint32_t>(0x2000).status(), ErrorKind::kNotPrivate);
  EXPECT_TRUE(untrusted_view.WritePlain<uint32_t>(0x2000, 1).ok());
  EXPECT_TRUE(untrusted_view.ReadPlain<uint32_t>(0x3000).ok());
  ExpectKind(untrusted_view.WritePlain<uint32_t>(0x3000, 1), ErrorKind::kReadOnly);
  ExpectKind(untrusted_view.FetchOr32(0x3000, 1).status(), ErrorKind::kReadOnly);
  // A range that is fine in its first page and wrong in its second fails whole.
  std::vector<uint8_t> two_pages(0x1000 + 8);
  ExpectKind(private_view.Read(0x1ffc, absl::MakeSpan(two_pages).subspan(0, 8)),
             ErrorKind::kNotPrivate);
  EXPECT_EQ(*backing->GetAccess(View::kUntrusted, 0x3fff), Access::kRead);
}

TEST(ViewTest, RefusedAccessesAndStateChangesAreCounted) {
  std::shared_ptr<MemoryBacking> backing = MakeSparse();
  const GuestMemory private_view = GuestMemory::Private(backing);
  const GuestMemory untrusted_view = GuestMemory::Untrusted(backing);
  const MemoryBacking::Stats before = backing->stats();
  // Two pages made private-only and one shared-only: three changes; the same again: none.
  ASSERT_TRUE(backing->SetAccess(0x1000, 0x2000, Access::kReadWrite, Access::kNone).ok());
  ASSERT_TRUE(backing->SetAccess(0x1000, 0x2000, Access::kReadWrite, Access::kNone).ok());
  ASSERT_TRUE(backing->SetAccess(0x3000, 0x1000, Access::kNone, Access::kReadWrite).ok());
  ExpectKind(untrusted_view.ReadPlain<uint32_t>(0x1000).status(), ErrorKind::kNotShared);
  ExpectKind(untrusted_view.ReadPlain<uint32_t>(0x2000).status(), ErrorKind::kNotShared);
  ExpectKind(private_view.ReadPlain<uint32_t>(0x3000).status(), ErrorKind::kNotPrivate);
  // Out of range is no isolation refusal.
  ExpectKind(untrusted_view.ReadPlain<uint32_t>(kMiB + 0x1000).status(), ErrorKind::kOutOfRange);
  const MemoryBacking::Stats after = backing->stats();
  EXPECT_EQ(after.page_state_changes - before.page_state_changes, 3u);
  EXPECT_EQ(after.refused_untrusted - before.refused_untrusted, 2u);
  EXPECT_EQ(after.refused_private - before.refused_private, 1u);
}

TEST(ViewTest, SetAccessValidatesItsRange) {
  auto backing = MakeSparse();
  ExpectKind(backing->SetAccess(View::kPrivate, 0x10, 0x1000, Access::kNone),
             ErrorKind::kInvalidArgument);
  ExpectKind(backing->SetAccess(View::kPrivate, kMiB, 0x1000, Access::kNone),
             ErrorKind::kOutOfRange);
  ExpectKind(backing->SetAccess(View::kPrivate, 0, ~uint64_t{0} & ~kPageMask, Access::kNone),
             ErrorKind::kOutOfRange);
  ExpectKind(backing->GetAccess(View::kPrivate, kMiB).status(), ErrorKind::kOutOfRange);
}

TEST(PinTest, PinnedPagesCannotChangeState) {
  auto backing = MakeSparse();
  GuestMemory private_view = GuestMemory::Private(backing);
  {
    auto pinned = private_view.Pin({4, 5}, Access::kReadWrite);
    ASSERT_TRUE(pinned.ok()) << pinned.status();
    ExpectKind(backing->SetAccess(0x5000, 0x1000, Access::kNone, Access::kReadWrite),
               ErrorKind::kPinned);
    EXPECT_EQ(*backing->GetAccess(View::kPrivate, 0x5000), Access::kReadWrite);
    // Pages next to the pinned ones still convert.
    EXPECT_TRUE(backing->SetAccess(0x6000, 0x1000, Access::kNone, Access::kReadWrite).ok());
  }
  EXPECT_TRUE(backing->SetAccess(0x5000, 0x1000, Access::kNone, Access::kReadWrite).ok());
}

TEST(PinTest, PinRequiresTheAccessAndExistingPages) {
  auto backing = MakeSparse();
  ASSERT_TRUE(backing->SetAccess(0x2000, 0x1000, Access::kNone, Access::kRead).ok());
  ExpectKind(GuestMemory::Private(backing).Pin({2}, Access::kRead).status(),
             ErrorKind::kNotPrivate);
  ExpectKind(GuestMemory::Untrusted(backing).Pin({2}, Access::kReadWrite).status(),
             ErrorKind::kReadOnly);
  ExpectKind(GuestMemory::Private(backing).Pin({1, 256}, Access::kRead).status(),
             ErrorKind::kOutOfRange);  // 256 = the first page of the hole.
  ExpectKind(GuestMemory::Private(backing).Pin({1ull << 50}, Access::kRead).status(),
             ErrorKind::kOutOfRange);
  // A failed pin pins nothing.
  EXPECT_TRUE(backing->SetAccess(0x1000, 0x1000, Access::kNone, Access::kNone).ok());
}

TEST(PinTest, ReadWriteAcrossNonContiguousPages) {
  auto backing = MakeSparse();
  GuestMemory memory = GuestMemory::Private(backing);
  auto pinned = memory.Pin({7, 3, 512}, Access::kReadWrite);
  ASSERT_TRUE(pinned.ok());
  const std::vector<uint8_t> bytes = Pattern(4096 + 100, 3);
  ASSERT_TRUE(pinned->Write(4000, bytes).ok());  // Pages 7 (tail), 3 (all), 512 (head).
  EXPECT_EQ(*memory.ReadPlain<uint8_t>(7 * 4096 + 4000), bytes[0]);
  EXPECT_EQ(*memory.ReadPlain<uint8_t>(3 * 4096), bytes[96]);
  EXPECT_EQ(*memory.ReadPlain<uint8_t>(512 * 4096 + 3), bytes[96 + 4096 + 3]);
  std::vector<uint8_t> back(bytes.size());
  ASSERT_TRUE(pinned->Read(4000, absl::MakeSpan(back)).ok());
  EXPECT_EQ(back, bytes);
  ExpectKind(pinned->Read(3 * 4096 - 1, absl::MakeSpan(back).subspan(0, 2)),
             ErrorKind::kOutOfRange);
  ExpectKind(pinned->Read(~uint64_t{0}, absl::MakeSpan(back).subspan(0, 2)), ErrorKind::kOverflow);
  ExpectKind(pinned->PrivateSpan().status(), ErrorKind::kInvalidArgument);  // Not contiguous.
}

TEST(PinTest, IoVecsArePiecesOfContiguousPagesAndNeedTheAccess) {
  auto backing = MakeSparse();
  GuestMemory memory = GuestMemory::Private(backing);
  auto pinned = memory.Pin({7, 8, 3, 512}, Access::kReadWrite);
  ASSERT_TRUE(pinned.ok());
  // From the middle of page 7 through 8 (contiguous), all of 3, the head of 512.
  auto iovecs = pinned->IoVecs(100, 2 * 4096 - 100 + 4096 + 10, /*device_writes=*/true);
  ASSERT_TRUE(iovecs.ok()) << iovecs.status();
  ASSERT_EQ(iovecs->size(), 3u);
  EXPECT_EQ((*iovecs)[0].iov_base, pinned->page_host_address(0) + 100);
  EXPECT_EQ((*iovecs)[0].iov_len, 2 * 4096 - 100u);
  EXPECT_EQ((*iovecs)[1].iov_base, pinned->page_host_address(2));
  EXPECT_EQ((*iovecs)[1].iov_len, 4096u);
  EXPECT_EQ((*iovecs)[2].iov_base, pinned->page_host_address(3));
  EXPECT_EQ((*iovecs)[2].iov_len, 10u);
  ExpectKind(pinned->IoVecs(4 * 4096 - 1, 2, true).status(), ErrorKind::kOutOfRange);
  auto read_only = memory.Pin({3}, Access::kRead);
  ASSERT_TRUE(read_only.ok());
  ExpectKind(read_only->IoVecs(0, 16, /*device_writes=*/true).status(), ErrorKind::kReadOnly);
  EXPECT_TRUE(read_only->IoVecs(0, 16, /*device_writes=*/false).ok());
}

TEST(PinTest, DirectSpansOnlyForThePrivateView) {
  auto backing = MakeSparse();
  auto untrusted = GuestMemory::Untrusted(backing).Pin({1, 2}, Access::kReadWrite);
  ASSERT_TRUE(untrusted.ok());
  ExpectKind(untrusted->PrivateSpan().status(), ErrorKind::kNotPrivate);
  auto read_only = GuestMemory::Untrusted(backing).Pin({3}, Access::kRead);
  ASSERT_TRUE(read_only.ok());
  ExpectKind(read_only->Write(0, Pattern(4, 0)), ErrorKind::kReadOnly);

  auto private_pages = GuestMemory::Private(backing).Pin({1, 2}, Access::kReadWrite);
  ASSERT_TRUE(private_pages.ok());
  auto span = private_pages->PrivateSpan();
  ASSERT_TRUE(span.ok());
  ASSERT_EQ(span->size(), 8192u);
  (*span)[4096] = 0x77;
  EXPECT_EQ(*GuestMemory::Private(backing).ReadPlain<uint8_t>(0x2000), 0x77);
}

TEST(PinTest, MovedFromPinUnpinsOnce) {
  auto backing = MakeSparse();
  auto pinned = GuestMemory::Private(backing).Pin({9}, Access::kRead);
  ASSERT_TRUE(pinned.ok());
  PinnedPages moved = *std::move(pinned);
  ExpectKind(backing->SetAccess(0x9000, 0x1000, Access::kNone, Access::kNone), ErrorKind::kPinned);
  moved = *GuestMemory::Private(backing).Pin({10}, Access::kRead);  // Releases page 9.
  EXPECT_TRUE(backing->SetAccess(0x9000, 0x1000, Access::kNone, Access::kNone).ok());
  ExpectKind(backing->SetAccess(0xa000, 0x1000, Access::kNone, Access::kNone), ErrorKind::kPinned);
}

TEST(RewriteUnviewedTest, OnlyPagesNoViewCanSee) {
  auto backing = MakeSparse();
  const auto scrub = [](absl::Span<uint8_t> bytes) { std::fill(bytes.begin(), bytes.end(), 0); };
  ExpectKind(backing->RewriteUnviewed(0x1000, 0x1000, scrub), ErrorKind::kInvalidArgument);
  ASSERT_TRUE(GuestMemory::Private(backing).Fill(0x1000, 0x1000, 0xcc).ok());
  ASSERT_TRUE(backing->SetAccess(0x1000, 0x1000, Access::kNone, Access::kNone).ok());
  ASSERT_TRUE(backing->RewriteUnviewed(0x1000, 0x1000, scrub).ok());
  ASSERT_TRUE(backing->SetAccess(0x1000, 0x1000, Access::kNone, Access::kReadWrite).ok());
  EXPECT_EQ(*GuestMemory::Untrusted(backing).ReadPlain<uint64_t>(0x1800), 0u);
  ExpectKind(backing->RewriteUnviewed(kMiB, 1, scrub), ErrorKind::kOutOfRange);
}

// A conversion that starts while an isolation model rewrites a page waits for the rewrite:
// the page cannot become viewed (and be read) half rewritten.
TEST(RewriteUnviewedTest, StateChangesWaitForTheRewrite) {
  auto backing = MakeSparse();
  ASSERT_TRUE(backing->SetAccess(0x1000, 0x1000, Access::kNone, Access::kNone).ok());
  std::atomic<bool> converted{false};
  std::thread converter;
  ASSERT_TRUE(
      backing
          ->RewriteUnviewed(
              0x1000, 0x1000,
              [&](absl::Span<uint8_t> bytes) {
                std::fill(bytes.begin(), bytes.begin() + 2048, 0xaa);
                converter = std::thread([&] {
                  EXPECT_TRUE(
                      backing->SetAccess(0x1000, 0x1000, Access::kNone, Access::kReadWrite).ok());
                  converted = true;
                });
                std::this_thread::sleep_for(std::chrono::milliseconds(50));
                EXPECT_FALSE(converted.load());  // Still rewriting.
                std::fill(bytes.begin() + 2048, bytes.end(), 0xaa);
              })
          .ok());
  converter.join();
  EXPECT_TRUE(converted.load());
  EXPECT_EQ(*GuestMemory::Untrusted(backing).ReadPlain<uint8_t>(0x1fff), 0xaa);
}

TEST(MemfdTest, TheFdCannotBeShrunkOrGrownUnderTheMappings) {
  auto backing = MakeSparse(BackingType::kMemfd);
  ASSERT_GE(backing->fd(), 0);
  const int seals = fcntl(backing->fd(), F_GET_SEALS);
  EXPECT_EQ(seals & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL),
            F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
  EXPECT_NE(ftruncate(backing->fd(), 0), 0);
  EXPECT_EQ(errno, EPERM);
  EXPECT_NE(ftruncate(backing->fd(), 64 * kMiB), 0);
  EXPECT_NE(fcntl(backing->fd(), F_ADD_SEALS, F_SEAL_FUTURE_WRITE), 0);  // Sealed for seals.
  EXPECT_TRUE(GuestMemory::Private(backing).WritePlain<uint32_t>(2 * kMiB + 8, 1).ok());
}

TEST(MemfdTest, AnotherMappingOfTheFdSeesTheSamePages) {
  auto backing = MakeSparse(BackingType::kMemfd);
  ASSERT_GE(backing->fd(), 0);
  ASSERT_EQ(backing->regions().size(), 2u);
  const RegionMapping& second = backing->regions()[1];
  EXPECT_EQ(second.gpa, 2 * kMiB);
  EXPECT_EQ(second.fd_offset, kMiB);  // Regions are packed in the file.
  void* alias = mmap(nullptr, second.size_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, backing->fd(),
                     static_cast<off_t>(second.fd_offset));
  ASSERT_NE(alias, MAP_FAILED);
  ASSERT_TRUE(GuestMemory::Private(backing).WritePlain<uint32_t>(2 * kMiB + 8, 0xfeed).ok());
  EXPECT_EQ(static_cast<uint32_t*>(alias)[2], 0xfeedu);
  munmap(alias, second.size_bytes);
  EXPECT_EQ(MakeSparse(BackingType::kAnonymous)->fd(), -1);
}

TEST(ErrorsTest, ForeignStatusesHaveNoKind) {
  EXPECT_EQ(GetErrorKind(absl::OkStatus()), std::nullopt);
  EXPECT_EQ(GetErrorKind(absl::InternalError("x")), std::nullopt);
  EXPECT_TRUE(IsError(MakeError(ErrorKind::kPinned, "x"), ErrorKind::kPinned));
  EXPECT_EQ(MakeError(ErrorKind::kNotShared, "x").code(), absl::StatusCode::kPermissionDenied);
}

}  // namespace
}  // namespace cvmbus::guestmem
