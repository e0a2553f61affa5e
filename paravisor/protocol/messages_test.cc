// Known-answer vectors for every channel control message type. Each vector is written by hand
// from the layouts in Linux include/linux/hyperv.h (and OpenVMM protocol.rs for what Linux
// lacks), never produced by our encoder. Each test parses the vector and checks the fields,
// encodes the same message built field by field and compares bytes, and re-encodes the parse.
#include "paravisor/protocol/messages.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "paravisor/protocol/codec.h"
#include "paravisor/protocol/testing/le_bytes.h"

namespace cvmbus::paravisor::protocol {
namespace {

using testing::LeBytes;

constexpr Guid SequenceGuid(uint8_t first) {
  Guid guid{};
  for (int i = 0; i < 16; ++i) guid.bytes[i] = static_cast<uint8_t>(first + i);
  return guid;
}
constexpr Guid kGuidA = SequenceGuid(0x10);
constexpr Guid kGuidB = SequenceGuid(0x20);
constexpr Guid kGuidC = SequenceGuid(0x30);

// Parses `bytes`, checks that they re-encode to themselves, and returns the body as T.
template <typename T>
T ParseKnownAnswer(const std::vector<uint8_t>& bytes) {
  absl::StatusOr<ParsedMessage> parsed = ParseMessage(bytes);
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  if (!parsed.ok()) return T{};
  EXPECT_EQ(parsed->type, T::kType);
  EXPECT_EQ(parsed->wire_bytes, bytes.size());
  absl::StatusOr<std::vector<uint8_t>> again = EncodeMessage(*parsed);
  EXPECT_TRUE(again.ok()) << again.status();
  if (again.ok()) {
    EXPECT_EQ(*again, bytes);
  }
  const T* body = parsed->As<T>();
  EXPECT_NE(body, nullptr);
  return body != nullptr ? *body : T{};
}

TEST(KnownAnswerTest, OfferChannel) {
  const std::vector<uint8_t> bytes = LeBytes()
                                         .U32(1)              // header: OFFERCHANNEL
                                         .U32(0)              // header padding
                                         .Sequence(0x10, 16)  // if_type
                                         .Sequence(0x20, 16)  // if_instance
                                         .U64(0)              // reserved1
                                         .U64(0)              // reserved2
                                         .U16(0x0007)         // chn_flags
                                         .U16(0x0010)         // mmio_megabytes
                                         .Sequence(0, 120)    // user_def
                                         .U16(3)              // sub_channel_index
                                         .U16(0)              // reserved3
                                         .U32(14)             // child_relid
                                         .U8(0x21)            // monitorid
                                         .U8(0x01)            // monitor_allocated:1
                                         .U16(0x0001)         // is_dedicated_interrupt:1
                                         .U32(0x2010)         // connection_id
                                         .Take();
  ASSERT_EQ(bytes.size(), 196u);
  const OfferChannel offer = ParseKnownAnswer<OfferChannel>(bytes);
  EXPECT_EQ(offer.interface_type, kGuidA);
  EXPECT_EQ(offer.interface_instance, kGuidB);
  EXPECT_EQ(offer.channel_flags, kOfferEnumerateDeviceInterface | kOfferConfidentialRingBuffer |
                                     kOfferConfidentialExternalMemory);
  EXPECT_EQ(offer.mmio_megabytes, 16);
  EXPECT_EQ(offer.user_defined.bytes[119], 119);
  EXPECT_EQ(offer.user_defined.pipe.pipe_mode, 0x03020100u);
  EXPECT_EQ(offer.sub_channel_index, 3);
  EXPECT_EQ(offer.child_relid, 14u);
  EXPECT_EQ(offer.monitor_id, 0x21);
  EXPECT_TRUE(offer.monitor_allocated());
  EXPECT_TRUE(offer.is_dedicated_interrupt());
  EXPECT_EQ(offer.connection_id, 0x2010u);

  OfferChannel built{.interface_type = kGuidA,
                     .interface_instance = kGuidB,
                     .channel_flags = 0x0007,
                     .mmio_megabytes = 16,
                     .sub_channel_index = 3,
                     .child_relid = 14,
                     .monitor_id = 0x21,
                     .monitor_flags = 1,
                     .interrupt_flags = 1,
                     .connection_id = 0x2010};
  for (int i = 0; i < 120; ++i) built.user_defined.bytes[i] = static_cast<uint8_t>(i);
  EXPECT_EQ(Encode(built), bytes);
}

TEST(KnownAnswerTest, OfferChannelHvsocketUserDefined) {
  const std::vector<uint8_t> bytes = LeBytes()
                                         .U32(1)
                                         .U32(0)
                                         .Sequence(0x10, 16)
                                         .Sequence(0x20, 16)
                                         .Fill(0, 16)
                                         .U16(0x2010)  // TLNPI provider | named pipe
                                         .U16(0)
                                         .U32(0)  // pipe_mode: byte
                                         .U8(1)   // is_for_guest_accept (Linux: user_def[0])
                                         .U8(0)   // is_for_guest_container
                                         .U32(1)  // version: RS5, unaligned
                                         .Sequence(0x30, 16)  // silo_id
                                         .Fill(0, 2 + 92)     // padding, unused user_def
                                         .U16(0)
                                         .U16(0)
                                         .U32(15)
                                         .U8(0)
                                         .U8(0)
                                         .U16(0)
                                         .U32(0)
                                         .Take();
  ASSERT_EQ(bytes.size(), 196u);
  const OfferChannel offer = ParseKnownAnswer<OfferChannel>(bytes);
  EXPECT_EQ(offer.channel_flags, kOfferTlnpiProvider | kOfferNamedPipeMode);
  EXPECT_EQ(offer.user_defined.hvsock.pipe_mode, kPipeTypeByte);
  EXPECT_EQ(offer.user_defined.hvsock.is_for_guest_accept, 1);
  EXPECT_EQ(offer.user_defined.hvsock.is_for_guest_container, 0);
  EXPECT_EQ(offer.user_defined.hvsock.version(), kHvsockParametersRs5);
  EXPECT_EQ(offer.user_defined.hvsock.silo_id, kGuidC);
  EXPECT_FALSE(offer.monitor_allocated());
}

TEST(KnownAnswerTest, ChannelIdMessages) {
  const std::vector<uint8_t> rescind = {0x02, 0, 0, 0, 0, 0, 0, 0, 0x0e, 0, 0, 0};
  const std::vector<uint8_t> close = {0x07, 0, 0, 0, 0, 0, 0, 0, 0x0e, 0, 0, 0};
  const std::vector<uint8_t> released = {0x0d, 0, 0, 0, 0, 0, 0, 0, 0x0e, 0, 0, 0};
  const std::vector<uint8_t> reserved_response = {0x14, 0, 0, 0, 0, 0, 0, 0, 0x0e, 0, 0, 0};
  EXPECT_EQ(ParseKnownAnswer<RescindChannelOffer>(rescind).child_relid, 14u);
  EXPECT_EQ(ParseKnownAnswer<CloseChannel>(close).child_relid, 14u);
  EXPECT_EQ(ParseKnownAnswer<RelIdReleased>(released).child_relid, 14u);
  EXPECT_EQ(ParseKnownAnswer<CloseReservedChannelResponse>(reserved_response).child_relid, 14u);
  EXPECT_EQ(Encode(RescindChannelOffer{.child_relid = 14}), rescind);
  EXPECT_EQ(Encode(CloseChannel{.child_relid = 14}), close);
  EXPECT_EQ(Encode(RelIdReleased{.child_relid = 14}), released);
  EXPECT_EQ(Encode(CloseReservedChannelResponse{.child_relid = 14}), reserved_response);
}

TEST(KnownAnswerTest, HeaderOnlyMessages) {
  const std::vector<uint8_t> request_offers = {0x03, 0, 0, 0, 0, 0, 0, 0};
  const std::vector<uint8_t> all_delivered = {0x04, 0, 0, 0, 0, 0, 0, 0};
  const std::vector<uint8_t> unload = {0x10, 0, 0, 0, 0, 0, 0, 0};
  const std::vector<uint8_t> unload_response = {0x11, 0, 0, 0, 0, 0, 0, 0};
  const std::vector<uint8_t> pause = {0x1b, 0, 0, 0, 0, 0, 0, 0};
  const std::vector<uint8_t> pause_response = {0x1c, 0, 0, 0, 0, 0, 0, 0};
  const std::vector<uint8_t> resume = {0x1d, 0, 0, 0, 0, 0, 0, 0};
  ParseKnownAnswer<RequestOffers>(request_offers);
  ParseKnownAnswer<AllOffersDelivered>(all_delivered);
  ParseKnownAnswer<Unload>(unload);
  ParseKnownAnswer<UnloadResponse>(unload_response);
  ParseKnownAnswer<Pause>(pause);
  ParseKnownAnswer<PauseResponse>(pause_response);
  ParseKnownAnswer<Resume>(resume);
  EXPECT_EQ(Encode(RequestOffers{}), request_offers);
  EXPECT_EQ(Encode(AllOffersDelivered{}), all_delivered);
  EXPECT_EQ(Encode(Unload{}), unload);
  EXPECT_EQ(Encode(UnloadResponse{}), unload_response);
  EXPECT_EQ(Encode(Pause{}), pause);
  EXPECT_EQ(Encode(PauseResponse{}), pause_response);
  EXPECT_EQ(Encode(Resume{}), resume);
}

LeBytes OpenChannelBase() {
  LeBytes bytes;
  bytes.U32(5).U32(0).U32(14).U32(0x11223344).U32(0xe1e10000).U32(3).U32(0x10).Sequence(0x80, 120);
  return bytes;
}

OpenChannel BuiltOpenChannel() {
  OpenChannel open{.child_relid = 14,
                   .open_id = 0x11223344,
                   .ring_buffer_gpadl = 0xe1e10000,
                   .target_vp = 3,
                   .downstream_page_offset = 0x10};
  for (int i = 0; i < 120; ++i) open.user_data[i] = static_cast<uint8_t>(0x80 + i);
  return open;
}

TEST(KnownAnswerTest, OpenChannel) {
  const std::vector<uint8_t> bytes = OpenChannelBase().Take();
  ASSERT_EQ(bytes.size(), 148u);
  const OpenChannel open = ParseKnownAnswer<OpenChannel>(bytes);
  EXPECT_EQ(open.child_relid, 14u);
  EXPECT_EQ(open.open_id, 0x11223344u);
  EXPECT_EQ(open.ring_buffer_gpadl, 0xe1e10000u);
  EXPECT_EQ(open.target_vp, 3u);
  EXPECT_EQ(open.downstream_page_offset, 0x10u);
  EXPECT_EQ(open.user_data[0], 0x80);
  EXPECT_EQ(open.user_data[119], static_cast<uint8_t>(0x80 + 119));
  EXPECT_EQ(open.connection_id, 0u);  // No tail: reads as zero.
  EXPECT_EQ(EncodeOpenChannel(BuiltOpenChannel(), /*with_tail=*/false), bytes);
}

TEST(KnownAnswerTest, OpenChannelWithTail) {
  const std::vector<uint8_t> bytes = OpenChannelBase().U32(0x2010).U16(5).U16(1).Take();
  ASSERT_EQ(bytes.size(), 156u);
  const OpenChannel open = ParseKnownAnswer<OpenChannel>(bytes);
  EXPECT_EQ(open.connection_id, 0x2010u);
  EXPECT_EQ(open.event_flag, 5);
  EXPECT_EQ(open.flags, kOpenChannelRedirectInterrupt);
  OpenChannel built = BuiltOpenChannel();
  built.connection_id = 0x2010;
  built.event_flag = 5;
  built.flags = 1;
  EXPECT_EQ(EncodeOpenChannel(built, /*with_tail=*/true), bytes);
}

TEST(KnownAnswerTest, OpenResult) {
  const std::vector<uint8_t> bytes = {0x06, 0, 0,    0,    0,    0,    0,    0, 0x0e, 0,
                                      0,    0, 0x44, 0x33, 0x22, 0x11, 0x01, 0, 0,    0xc0};
  const OpenResult result = ParseKnownAnswer<OpenResult>(bytes);
  EXPECT_EQ(result.child_relid, 14u);
  EXPECT_EQ(result.open_id, 0x11223344u);
  EXPECT_EQ(result.status, 0xc0000001u);
  EXPECT_EQ(Encode(OpenResult{.child_relid = 14, .open_id = 0x11223344, .status = 0xc0000001}),
            bytes);
}

TEST(KnownAnswerTest, GpadlHeaderOneRange) {
  // As Linux sends a 3-page ring: one range, range_buflen = 8 + 3 * 8.
  const std::vector<uint8_t> bytes = LeBytes()
                                         .U32(8)
                                         .U32(0)
                                         .U32(14)          // child_relid
                                         .U32(0xe1e10001)  // gpadl
                                         .U16(32)          // range_buflen
                                         .U16(1)           // rangecount
                                         .U32(0x3000)      // range[0].byte_count
                                         .U32(0)           // range[0].byte_offset
                                         .U64(0x1000)
                                         .U64(0x1001)
                                         .U64(0x1002)
                                         .Take();
  const GpadlHeader header = ParseKnownAnswer<GpadlHeader>(bytes);
  EXPECT_EQ(header.child_relid, 14u);
  EXPECT_EQ(header.gpadl, 0xe1e10001u);
  EXPECT_EQ(header.range_buflen, 32);
  EXPECT_EQ(header.range_count, 1);
  const std::vector<uint64_t> words = {0x3000, 0x1000, 0x1001, 0x1002};
  EXPECT_EQ(ParseMessage(bytes)->words, words);
  absl::StatusOr<std::vector<std::vector<uint8_t>>> encoded = EncodeGpadl(14, 0xe1e10001, 1, words);
  ASSERT_TRUE(encoded.ok()) << encoded.status();
  ASSERT_EQ(encoded->size(), 1u);
  EXPECT_EQ((*encoded)[0], bytes);
}

TEST(KnownAnswerTest, GpadlHeaderTwoRanges) {
  const std::vector<uint8_t> bytes = LeBytes()
                                         .U32(8)
                                         .U32(0)
                                         .U32(14)
                                         .U32(7)
                                         .U16(40)  // 5 words
                                         .U16(2)
                                         .U32(0x800)  // 0x800 bytes at 0x100: one page
                                         .U32(0x100)
                                         .U64(0x2000)
                                         .U32(0x1000)  // 0x1000 bytes at 0x800: two pages
                                         .U32(0x800)
                                         .U64(0x3000)
                                         .U64(0x3001)
                                         .Take();
  const GpadlHeader header = ParseKnownAnswer<GpadlHeader>(bytes);
  EXPECT_EQ(header.range_count, 2);
  EXPECT_EQ(ParseMessage(bytes)->words.size(), 5u);
}

TEST(KnownAnswerTest, GpadlBody) {
  const std::vector<uint8_t> bytes = LeBytes()
                                         .U32(9)
                                         .U32(0)
                                         .U32(0)           // msgnumber
                                         .U32(0xe1e10001)  // gpadl
                                         .U64(0x1000)
                                         .U64(0xfffffffff)
                                         .Take();
  const GpadlBody body = ParseKnownAnswer<GpadlBody>(bytes);
  EXPECT_EQ(body.message_number, 0u);
  EXPECT_EQ(body.gpadl, 0xe1e10001u);
  EXPECT_EQ(ParseMessage(bytes)->words, (std::vector<uint64_t>{0x1000, 0xfffffffff}));
  EXPECT_EQ(
      *EncodeGpadlBody(GpadlBody{.gpadl = 0xe1e10001}, std::vector<uint64_t>{0x1000, 0xfffffffff}),
      bytes);
}

TEST(KnownAnswerTest, GpadlCreatedTeardownTorndown) {
  const std::vector<uint8_t> created = {0x0a, 0, 0,    0, 0,    0,    0, 0, 0x0e, 0,
                                        0,    0, 0x01, 0, 0xe1, 0xe1, 0, 0, 0,    0};
  const std::vector<uint8_t> teardown = {0x0b, 0, 0, 0, 0,    0, 0,    0,
                                         0x0e, 0, 0, 0, 0x01, 0, 0xe1, 0xe1};
  const std::vector<uint8_t> torndown = {0x0c, 0, 0, 0, 0, 0, 0, 0, 0x01, 0, 0xe1, 0xe1};
  const GpadlCreated parsed_created = ParseKnownAnswer<GpadlCreated>(created);
  EXPECT_EQ(parsed_created.child_relid, 14u);
  EXPECT_EQ(parsed_created.gpadl, 0xe1e10001u);
  EXPECT_EQ(parsed_created.creation_status, kStatusSuccess);
  const GpadlTeardown parsed_teardown = ParseKnownAnswer<GpadlTeardown>(teardown);
  EXPECT_EQ(parsed_teardown.child_relid, 14u);
  EXPECT_EQ(parsed_teardown.gpadl, 0xe1e10001u);
  EXPECT_EQ(ParseKnownAnswer<GpadlTorndown>(torndown).gpadl, 0xe1e10001u);
  EXPECT_EQ(Encode(GpadlCreated{.child_relid = 14, .gpadl = 0xe1e10001}), created);
  EXPECT_EQ(Encode(GpadlTeardown{.child_relid = 14, .gpadl = 0xe1e10001}), teardown);
  EXPECT_EQ(Encode(GpadlTorndown{.gpadl = 0xe1e10001}), torndown);
}

TEST(KnownAnswerTest, InitiateContactWin10WithInterruptPage) {
  const std::vector<uint8_t> bytes = LeBytes()
                                         .U32(14)
                                         .U32(0)
                                         .U32(0x00040000)   // 4.0
                                         .U32(1)            // target_vcpu
                                         .U64(0x112345000)  // interrupt_page
                                         .U64(0x123456000)
                                         .U64(0x123457000)
                                         .Take();
  ASSERT_EQ(bytes.size(), 40u);
  const InitiateContact contact = ParseKnownAnswer<InitiateContact>(bytes);
  EXPECT_EQ(contact.vmbus_version_requested, kVersionWin10);
  EXPECT_EQ(contact.target_vcpu, 1u);
  EXPECT_EQ(contact.interrupt_page(), 0x112345000u);
  EXPECT_EQ(contact.message_sint(), kMessageSint);
  EXPECT_EQ(contact.feature_flags(), 0u);
  EXPECT_EQ(contact.monitor_page1, 0x123456000u);
  EXPECT_EQ(contact.monitor_page2, 0x123457000u);
  InitiateContact built{.vmbus_version_requested = kVersionWin10,
                        .target_vcpu = 1,
                        .monitor_page1 = 0x123456000,
                        .monitor_page2 = 0x123457000};
  built.interrupt_page_or_target.interrupt_page = 0x112345000;
  EXPECT_EQ(EncodeInitiateContact(built), bytes);
}

TEST(KnownAnswerTest, InitiateContactV5SintAndVtl) {
  const std::vector<uint8_t> bytes = LeBytes()
                                         .U32(14)
                                         .U32(0)
                                         .U32(0x00050000)
                                         .U32(0)
                                         .U8(2)  // msg_sint
                                         .U8(0)  // msg_vtl
                                         .Fill(0, 6)
                                         .U64(0x123456000)
                                         .U64(0x123457000)
                                         .Take();
  const InitiateContact contact = ParseKnownAnswer<InitiateContact>(bytes);
  EXPECT_EQ(contact.interrupt_page(), std::nullopt);
  EXPECT_EQ(contact.message_sint(), 2);
  EXPECT_EQ(contact.message_vtl(), 0);
  EXPECT_EQ(contact.feature_flags(), 0u);
}

TEST(KnownAnswerTest, InitiateContactCopperConfidentialWithClientId) {
  const std::vector<uint8_t> bytes = LeBytes()
                                         .U32(14)
                                         .U32(0)
                                         .U32(0x00060000)  // 6.0
                                         .U32(0)
                                         .U8(2)
                                         .U8(2)  // VTL 2
                                         .U16(0)
                                         .U32(0x18)  // confidential channels | client id
                                         .U64(0)
                                         .U64(0)
                                         .Sequence(0x30, 16)  // client_id
                                         .Take();
  ASSERT_EQ(bytes.size(), 56u);
  const InitiateContact contact = ParseKnownAnswer<InitiateContact>(bytes);
  EXPECT_EQ(contact.vmbus_version_requested, kVersionWin10V6_0);
  EXPECT_EQ(contact.message_vtl(), 2);
  EXPECT_EQ(contact.feature_flags(), kFeatureConfidentialChannels | kFeatureClientId);
  EXPECT_EQ(contact.client_id, kGuidC);
  InitiateContact built{.vmbus_version_requested = kVersionWin10V6_0, .client_id = kGuidC};
  built.interrupt_page_or_target.target = {
      .message_sint = 2, .message_vtl = 2, .feature_flags = 0x18};
  EXPECT_EQ(EncodeInitiateContact(built), bytes);
}

TEST(KnownAnswerTest, VersionResponse) {
  const std::vector<uint8_t> bytes = {0x0f, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00, 0, 0, 0x04, 0, 0, 0};
  const VersionResponse response = ParseKnownAnswer<VersionResponse>(bytes);
  EXPECT_EQ(response.version_supported, 1);
  EXPECT_EQ(response.connection_state, kConnectionSuccessful);
  EXPECT_EQ(response.message_connection_id, kMessageConnectionId4);
  EXPECT_EQ(response.supported_features, 0u);
  const VersionResponse built{.version_supported = 1, .message_connection_id = 4};
  EXPECT_EQ(EncodeVersionResponse(built, /*with_supported_features=*/false), bytes);
}

TEST(KnownAnswerTest, VersionResponseWithSupportedFeatures) {
  const std::vector<uint8_t> bytes = {0x0f, 0, 0, 0, 0, 0, 0,    0, 0x01, 0x00,
                                      0,    0, 4, 0, 0, 0, 0x10, 0, 0,    0};
  const VersionResponse response = ParseKnownAnswer<VersionResponse>(bytes);
  EXPECT_EQ(response.supported_features, kFeatureConfidentialChannels);
  const VersionResponse built{
      .version_supported = 1, .message_connection_id = 4, .supported_features = 0x10};
  EXPECT_EQ(EncodeVersionResponse(built, /*with_supported_features=*/true), bytes);
}

TEST(KnownAnswerTest, VersionResponseWithServerSpecifiedMonitorPages) {
  const std::vector<uint8_t> bytes = LeBytes()
                                         .U32(15)
                                         .U32(0)
                                         .U32(0x0001)  // version_supported, state, padding
                                         .U32(4)
                                         .U32(0x50)  // confidential channels | monitor pages
                                         .U32(0)
                                         .U64(0)
                                         .U64(0x7f000)
                                         .Take();
  ASSERT_EQ(bytes.size(), 40u);
  const VersionResponse response = ParseKnownAnswer<VersionResponse>(bytes);
  EXPECT_TRUE(response.has_server_monitor_pages());
  EXPECT_EQ(response.parent_to_child_monitor_page, 0u);
  EXPECT_EQ(response.child_to_parent_monitor_page, 0x7f000u);
  const VersionResponse built{.version_supported = 1,
                              .message_connection_id = 4,
                              .supported_features = 0x50,
                              .child_to_parent_monitor_page = 0x7f000};
  EXPECT_EQ(EncodeVersionResponse(built, /*with_supported_features=*/true), bytes);
  // The feature bit without the pages is a truncated message.
  const std::vector<uint8_t> truncated(bytes.begin(), bytes.begin() + 20);
  EXPECT_TRUE(IsProtocolError(ParseMessage(truncated).status(), ProtocolError::kTruncated));
}

TEST(KnownAnswerTest, ReservedChannelMessages) {
  const std::vector<uint8_t> open = LeBytes()
                                        .U32(18)
                                        .U32(0)
                                        .U32(14)
                                        .U32(1)  // target_vp
                                        .U32(2)  // target_sint
                                        .U32(0xe1e10001)
                                        .U32(0x10)
                                        .Take();
  const std::vector<uint8_t> close = LeBytes().U32(19).U32(0).U32(14).U32(1).U32(2).Take();
  const OpenReservedChannel parsed_open = ParseKnownAnswer<OpenReservedChannel>(open);
  EXPECT_EQ(parsed_open.target_sint, 2u);
  EXPECT_EQ(parsed_open.ring_buffer_gpadl, 0xe1e10001u);
  EXPECT_EQ(parsed_open.downstream_page_offset, 0x10u);
  EXPECT_EQ(ParseKnownAnswer<CloseReservedChannel>(close).target_vp, 1u);
  EXPECT_EQ(Encode(OpenReservedChannel{.child_relid = 14,
                                       .target_vp = 1,
                                       .target_sint = 2,
                                       .ring_buffer_gpadl = 0xe1e10001,
                                       .downstream_page_offset = 0x10}),
            open);
  EXPECT_EQ(Encode(CloseReservedChannel{.child_relid = 14, .target_vp = 1, .target_sint = 2}),
            close);
}

TEST(KnownAnswerTest, TlConnectRequestAndResult) {
  const std::vector<uint8_t> request =
      LeBytes().U32(21).U32(0).Sequence(0x10, 16).Sequence(0x20, 16).Take();
  const std::vector<uint8_t> request_with_silo =
      LeBytes().U32(21).U32(0).Sequence(0x10, 16).Sequence(0x20, 16).Sequence(0x30, 16).Take();
  const std::vector<uint8_t> result =
      LeBytes().U32(23).U32(0).Sequence(0x10, 16).Sequence(0x20, 16).U32(0xc0000236).Take();
  const TlConnectRequest parsed = ParseKnownAnswer<TlConnectRequest>(request);
  EXPECT_EQ(parsed.guest_endpoint_id, kGuidA);
  EXPECT_EQ(parsed.host_service_id, kGuidB);
  EXPECT_EQ(parsed.silo_id, Guid{});
  EXPECT_EQ(ParseKnownAnswer<TlConnectRequest>(request_with_silo).silo_id, kGuidC);
  const TlConnectResult parsed_result = ParseKnownAnswer<TlConnectResult>(result);
  EXPECT_EQ(parsed_result.endpoint_id, kGuidA);
  EXPECT_EQ(parsed_result.status, kStatusConnectionRefused);

  const TlConnectRequest built{
      .guest_endpoint_id = kGuidA, .host_service_id = kGuidB, .silo_id = kGuidC};
  EXPECT_EQ(EncodeTlConnectRequest(built, /*with_silo_id=*/false), request);
  EXPECT_EQ(EncodeTlConnectRequest(built, /*with_silo_id=*/true), request_with_silo);
  EXPECT_EQ(
      Encode(TlConnectResult{.endpoint_id = kGuidA, .service_id = kGuidB, .status = 0xc0000236}),
      result);
}

TEST(KnownAnswerTest, ModifyChannelAndResponse) {
  const std::vector<uint8_t> modify = {0x16, 0, 0, 0, 0, 0, 0, 0, 0x0e, 0, 0, 0, 5, 0, 0, 0};
  const std::vector<uint8_t> response = {0x18, 0, 0, 0, 0, 0, 0, 0, 0x0e, 0, 0, 0, 0, 0, 0, 0};
  EXPECT_EQ(ParseKnownAnswer<ModifyChannel>(modify).target_vp, 5u);
  EXPECT_EQ(ParseKnownAnswer<ModifyChannelResponse>(response).status, kStatusSuccess);
  EXPECT_EQ(Encode(ModifyChannel{.child_relid = 14, .target_vp = 5}), modify);
  EXPECT_EQ(Encode(ModifyChannelResponse{.child_relid = 14}), response);
}

TEST(KnownAnswerTest, ModifyConnectionAndResponse) {
  const std::vector<uint8_t> modify =
      LeBytes().U32(25).U32(0).U64(0x123456000).U64(0x123457000).Take();
  const std::vector<uint8_t> response = {0x1a, 0, 0, 0, 0, 0, 0, 0, 0x02};
  const ModifyConnection parsed = ParseKnownAnswer<ModifyConnection>(modify);
  EXPECT_EQ(parsed.monitor_page1, 0x123456000u);
  EXPECT_EQ(parsed.monitor_page2, 0x123457000u);
  EXPECT_EQ(ParseKnownAnswer<ModifyConnectionResponse>(response).connection_state,
            kConnectionFailedUnknownFailure);
  EXPECT_EQ(Encode(ModifyConnection{.monitor_page1 = 0x123456000, .monitor_page2 = 0x123457000}),
            modify);
  EXPECT_EQ(Encode(ModifyConnectionResponse{.connection_state = 2}), response);
}

// Every message type number has a known answer above; this keeps the list honest.
TEST(KnownAnswerTest, TableCoversEveryType) {
  for (uint32_t number = 1; number <= kLastMessageType; ++number) {
    const MessageInfo* info = FindMessageInfo(static_cast<MessageType>(number));
    ASSERT_NE(info, nullptr) << number;
    EXPECT_EQ(static_cast<uint32_t>(info->type), number);
    EXPECT_LE(info->full_bytes, kMaxMessageBytes);
  }
  EXPECT_EQ(FindMessageInfo(MessageType::kInvalid), nullptr);
  EXPECT_EQ(MessageTypeName(MessageType::kGpadlHeader), "GPADL_HEADER");
  EXPECT_EQ(MessageTypeName(static_cast<MessageType>(30)), "UNKNOWN");
}

}  // namespace
}  // namespace cvmbus::paravisor::protocol
