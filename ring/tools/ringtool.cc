// ringtool: prints and builds VMBus ring images, for people debugging a ring.
//
//   ringtool dump FILE [--max-payload-bytes=N]
//   ringtool fill FILE --data-bytes=N [--packets=SPEC[,SPEC...]] [--start-index=N]
//
// FILE is one ring exactly as it lies in memory: the 4096-byte control page, then the data area
// (a multiple of 4096 bytes, at least 4096). Both commands run the production ring code
// (IncomingRing / OutgoingRing) over a private memfd-backed copy of the ring, so dump reports
// exactly what the paravisor would, and never changes the user's file (nor commits a read).
//
// Exit codes: 0 success; 1 dump found a corrupt ring (after printing every packet before the
// corruption); 2 bad arguments or an unusable file. Errors are one line on stderr.
//
// The command line is Abseil's. Its flag names are identifiers, so the dashed names above are
// rewritten to max_payload_bytes, data_bytes and start_index before it parses (either spelling
// works; --help lists the underscored ones). Abseil's own errors, an unknown flag or a flag
// without its value, are its one line and exit 1; --help lists the flags and exits 1 (Abseil's
// choice); `ringtool help` prints the usage and exits 0.
#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/format.h"
#include "base/status_macros.h"
#include "guestmem/ring_memory.h"
#include "ring/errors.h"
#include "ring/packet.h"
#include "ring/protocol.h"
#include "ring/ring.h"
#include "ring/tools/ring_dump.h"
#include "ring/tools/ring_image.h"

// Numbers are kept as text and parsed by ringtool (decimal or 0x-hex, below 2^32), so a bad one
// is refused with its own message and exit 2; unset means the default.
ABSL_FLAG(std::optional<std::string>, max_payload_bytes, std::nullopt,
          "dump: the payload bytes shown of each packet (default 16). On the command line "
          "--max-payload-bytes=N.");
ABSL_FLAG(std::optional<std::string>, data_bytes, std::nullopt,
          "fill, required: the data area's bytes, a nonzero multiple of 4096 up to 1073741824. "
          "On the command line --data-bytes=N.");
ABSL_FLAG(std::optional<std::string>, packets, std::nullopt,
          "fill: the packets to write, SPEC[,SPEC...] (see above).");
ABSL_FLAG(std::optional<std::string>, start_index, std::nullopt,
          "fill: the read and write index the packets start at, 8-aligned and below the data "
          "area's size (default 0). On the command line --start-index=N.");

namespace cvmbus::ring::tools {
namespace {

constexpr int kExitCorrupt = 1;
constexpr int kExitUsage = 2;
constexpr uint32_t kPage = control::kPageBytes;
constexpr uint64_t kFirstGpn = 0x1000;  // Page numbers fill puts in GPA-direct ranges.

constexpr char kUsage[] = R"(usage:
  ringtool dump FILE [--max-payload-bytes=N]
      Prints the control page and every packet from read_index to write_index, stopping at
      the first corruption (exit 1). Shows the first N payload bytes (default 16).
  ringtool fill FILE --data-bytes=N [--packets=SPEC[,SPEC...]] [--start-index=N]
      Creates or overwrites FILE with a fresh ring of an N-byte data area (a multiple of 4096)
      and writes the packets, starting at --start-index (default 0) to test wrapping.
      SPEC: inband:SIZE | completion:SIZE | gpa:SIZE:PAGES | xfer:RANGES, then optionally
      @XID (transaction id) and +c (completion requested). SIZE is the payload in bytes.
FILE is a ring as in memory: the 4096-byte control page, then the data area.
Numbers are decimal or 0x-hex. Exit codes: 0 ok, 1 corrupt ring, 2 bad arguments or file;
Abseil's own flag errors (an unknown flag, a flag without its value) exit 1, as --help does.
)";

// Parses a decimal or 0x-prefixed hexadecimal number no larger than `max`.
std::optional<uint64_t> ParseNumber(std::string_view text, uint64_t max) {
  int base = 10;
  if (text.starts_with("0x") || text.starts_with("0X")) {
    text.remove_prefix(2);
    base = 16;
  }
  uint64_t value = 0;
  const char* end = text.data() + text.size();
  const auto [stop, error] = std::from_chars(text.data(), end, value, base);
  if (text.empty() || error != std::errc() || stop != end || value > max) return std::nullopt;
  return value;
}

absl::Status Usage(std::string message) { return absl::InvalidArgumentError(message); }
std::string_view Message(const absl::Status& status) {
  return std::string_view(status.message().data(), status.message().size());
}

// --- dump -----------------------------------------------------------------------------------

int Dump(const std::string& path, uint32_t max_payload_bytes) {
  absl::StatusOr<RingImage> image = LoadImage(path);
  if (!image.ok()) {
    fmt::print(stderr, "ringtool: {}: {}\n", path, Message(image.status()));
    return kExitUsage;
  }
  const RingDump dump = DumpRing(*image, path, max_payload_bytes);
  fmt::print("{}", dump.text);
  std::fflush(stdout);
  if (!dump.corruption.ok()) {
    fmt::print(stderr, "ringtool: {}: {}\n", path, Message(dump.corruption));
    return kExitCorrupt;
  }
  return 0;
}

// --- fill -----------------------------------------------------------------------------------

struct PacketSpec {
  std::string text;
  PacketType type = PacketType::kDataInBand;
  uint32_t payload_bytes = 0;
  uint32_t count = 0;  // GPA-direct: pages in the one range; transfer pages: ranges.
  uint64_t transaction_id = 0;
  uint16_t flags = 0;
};

// The fill spec kinds: name, usage form and packet type.
struct SpecKind {
  std::string_view name;
  std::string_view form;
  PacketType type;
};
constexpr SpecKind kSpecKinds[] = {
    {"inband", "inband:SIZE", PacketType::kDataInBand},
    {"completion", "completion:SIZE", PacketType::kCompletion},
    {"gpa", "gpa:SIZE:PAGES", PacketType::kDataUsingGpaDirect},
    {"xfer", "xfer:RANGES", PacketType::kDataUsingTransferPages},
};
constexpr uint64_t kMaxSpecPayload = 1 << 20;  // Beyond what length8 can describe anyway.
constexpr uint64_t kMaxSpecCount = 0xffff;     // PAGES and RANGES.

absl::StatusOr<PacketSpec> ParseSpec(std::string_view text) {
  PacketSpec spec{.text = std::string(text)};
  const auto bad = [&](std::string_view why) {
    return Usage(fmt::format("bad packet spec '{}': {}", text, why));
  };
  // Suffixes, in either order: @XID and +c.
  bool have_xid = false;
  const std::string_view body = text.substr(0, text.find_first_of("@+"));
  for (std::string_view rest = text.substr(body.size()); !rest.empty();) {
    const std::string_view suffix = rest.substr(0, rest.find_first_of("@+", 1));
    rest.remove_prefix(suffix.size());
    if (suffix == "+c" && spec.flags == 0) {
      spec.flags = kFlagCompletionRequested;
    } else if (suffix[0] == '@' && !have_xid) {
      const std::optional<uint64_t> xid = ParseNumber(suffix.substr(1), UINT64_MAX);
      if (!xid.has_value()) return bad("@XID must be a 64-bit number");
      spec.transaction_id = *xid;
      have_xid = true;
    } else {
      return bad(fmt::format("unexpected suffix '{}' (want @XID and/or +c, once each)", suffix));
    }
  }
  const std::string_view name = body.substr(0, body.find(':'));
  const SpecKind* kind = nullptr;
  for (const SpecKind& candidate : kSpecKinds) {
    if (candidate.name == name) kind = &candidate;
  }
  if (kind == nullptr) return bad("the kind must be inband, completion, gpa or xfer");
  spec.type = kind->type;
  std::vector<uint64_t> numbers;
  for (std::string_view rest = body.substr(name.size()); !rest.empty();) {
    rest.remove_prefix(1);  // The ':'.
    const std::string_view field = rest.substr(0, rest.find(':'));
    rest.remove_prefix(field.size());
    const std::optional<uint64_t> number = ParseNumber(field, kMaxSpecPayload);
    if (!number.has_value()) {
      return bad(fmt::format("'{}' is not a number up to {}", field, kMaxSpecPayload));
    }
    numbers.push_back(*number);
  }
  if (numbers.size() !=
      static_cast<size_t>(std::count(kind->form.begin(), kind->form.end(), ':'))) {
    return bad(fmt::format("want {}", kind->form));
  }
  if (spec.type == PacketType::kDataUsingTransferPages) {
    spec.count = static_cast<uint32_t>(numbers[0]);
  } else {
    spec.payload_bytes = static_cast<uint32_t>(numbers[0]);
  }
  if (spec.type == PacketType::kDataUsingGpaDirect) spec.count = static_cast<uint32_t>(numbers[1]);
  if (spec.type == PacketType::kDataUsingGpaDirect &&
      (spec.count == 0 || spec.count > kMaxSpecCount)) {
    return bad(fmt::format("PAGES must be 1 to {}", kMaxSpecCount));
  }
  if (spec.count > kMaxSpecCount)
    return bad(fmt::format("RANGES must be at most {}", kMaxSpecCount));
  return spec;
}

// Writes one packet of `spec`; payload byte i of packet n is (16 * n + i) mod 256.
absl::Status WriteSpec(const PacketSpec& spec, size_t n, OutgoingRing* ring) {
  std::vector<uint8_t> payload(spec.payload_bytes);
  for (size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<uint8_t>(16 * n + i);
  std::vector<uint64_t> gpns;
  std::vector<GpaRange> gpa_ranges;
  std::vector<TransferPageRange> transfer_ranges;
  OutgoingPacket packet{.type = spec.type,
                        .flags = spec.flags,
                        .transaction_id = spec.transaction_id,
                        .payload = payload};
  if (spec.type == PacketType::kDataUsingGpaDirect) {
    for (uint64_t i = 0; i < spec.count; ++i) gpns.push_back(kFirstGpn + i);
    gpa_ranges.push_back({spec.count * kPage, 0, gpns});
    packet.gpa_ranges = gpa_ranges;
  }
  if (spec.type == PacketType::kDataUsingTransferPages) {
    for (uint32_t i = 0; i < spec.count; ++i) transfer_ranges.push_back({kPage / 2, i * kPage / 2});
    packet.transfer_page_set_id = 1;
    packet.transfer_ranges = transfer_ranges;
  }
  const absl::StatusOr<bool> written = ring->Write(packet);
  if (written.ok()) return absl::OkStatus();
  const std::optional<RingError> kind = GetRingError(written.status());
  return Usage(fmt::format("packet {} ({}): {}: {}", n, spec.text,
                           kind.has_value() ? RingErrorName(*kind) : "error",
                           written.status().message()));
}

absl::Status Fill(const std::string& path, uint64_t data_bytes, uint64_t start_index,
                  const std::vector<PacketSpec>& specs) {
  if (data_bytes == 0 || data_bytes % kPage != 0 || data_bytes > guestmem::kMaxRingDataBytes) {
    return Usage(fmt::format("--data-bytes={}: must be a nonzero multiple of {} up to {}",
                             data_bytes, kPage, guestmem::kMaxRingDataBytes));
  }
  if (start_index >= data_bytes || start_index % 8 != 0) {
    return Usage(
        fmt::format("--start-index={:#x}: must be 8-aligned and below --data-bytes", start_index));
  }
  CVMBUS_ASSIGN_OR_RETURN(const RingImage image, NewImage(data_bytes));
  CVMBUS_ASSIGN_OR_RETURN(guestmem::RingMemory memory, image.Open());
  const auto start = static_cast<uint32_t>(start_index);
  memory.StoreControl(control::kWriteIndex, start, std::memory_order_relaxed);
  memory.StoreControl(control::kReadIndex, start, std::memory_order_relaxed);
  CVMBUS_ASSIGN_OR_RETURN(OutgoingRing ring, OutgoingRing::Create(std::move(memory)));
  for (size_t n = 0; n < specs.size(); ++n) {
    CVMBUS_RETURN_IF_ERROR(WriteSpec(specs[n], n, &ring));
  }
  CVMBUS_RETURN_IF_ERROR(SaveImage(image, path));
  fmt::print("wrote {}: {} packets, data area {:#x} bytes, read_index {:#x}, write_index {:#x}\n",
             path, specs.size(), data_bytes, start,
             image.memory().ReadPlain<uint32_t>(control::kWriteIndex).value_or(0));
  return absl::OkStatus();
}

// --- Command line ---------------------------------------------------------------------------

// The flags spelled with dashes; Abseil knows them with underscores.
constexpr std::string_view kDashedFlags[] = {"max-payload-bytes", "data-bytes", "start-index"};

// The arguments as Abseil is to see them: each dashed flag name with underscores, and -h as
// --help (ringtool took it before its command line was Abseil's); nothing after a "--".
std::vector<std::string> AbseilSpelling(int argc, char** argv) {
  std::vector<std::string> args(argv, argv + argc);
  for (size_t i = 1; i < args.size() && args[i] != "--"; ++i) {
    std::string& arg = args[i];
    if (arg == "-h") {
      arg = "--help";
      continue;
    }
    const size_t dashes = arg.starts_with("--") ? 2 : arg.starts_with("-") ? 1 : 0;
    const size_t end = std::min(arg.find('='), arg.size());
    if (dashes == 0 ||
        std::find(std::begin(kDashedFlags), std::end(kDashedFlags),
                  std::string_view(arg).substr(dashes, end - dashes)) == std::end(kDashedFlags)) {
      continue;
    }
    std::replace(arg.begin() + dashes, arg.begin() + end, '-', '_');
  }
  return args;
}

int Main(int argc, char** argv) {
  const auto usage_error = [](std::string_view message) {
    fmt::print(stderr, "ringtool: {}\n", message);
    return kExitUsage;
  };
  std::vector<std::string> spelled = AbseilSpelling(argc, argv);
  std::vector<char*> args;
  for (std::string& arg : spelled) args.push_back(arg.data());
  // The usage without its last newline: Abseil's --help adds a blank line after it.
  absl::SetProgramUsageMessage(absl::string_view(kUsage, sizeof(kUsage) - 2));
  const std::vector<char*> rest =
      absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  const std::vector<std::string_view> positional(rest.begin() + 1, rest.end());
  if (!positional.empty() && positional[0] == "help") {
    fmt::print("{}", kUsage);
    return 0;
  }
  if (positional.empty()) return usage_error("missing command: dump or fill");
  const std::string_view command = positional[0];
  if (command != "dump" && command != "fill") {
    return usage_error(fmt::format("unknown command '{}': want dump or fill", command));
  }
  if (positional.size() != 2) {
    return usage_error(
        fmt::format("{} takes exactly one FILE, got {}", command, positional.size() - 1));
  }
  const std::string path(positional[1]);

  // Each flag belongs to one command.
  const std::optional<std::string> max_payload_flag = absl::GetFlag(FLAGS_max_payload_bytes);
  const std::optional<std::string> data_bytes_flag = absl::GetFlag(FLAGS_data_bytes);
  const std::optional<std::string> packets_flag = absl::GetFlag(FLAGS_packets);
  const std::optional<std::string> start_index_flag = absl::GetFlag(FLAGS_start_index);
  const std::pair<std::string_view, bool> given[] = {
      {"--max-payload-bytes", command == "fill" && max_payload_flag.has_value()},
      {"--data-bytes", command == "dump" && data_bytes_flag.has_value()},
      {"--packets", command == "dump" && packets_flag.has_value()},
      {"--start-index", command == "dump" && start_index_flag.has_value()},
  };
  for (const auto& [name, misplaced] : given) {
    if (misplaced) return usage_error(fmt::format("unknown flag '{}' for {}", name, command));
  }
  // A number flag's value (decimal or 0x-hex, below 2^32), or `fallback` when it is not given.
  const auto number = [](std::string_view name, const std::optional<std::string>& text,
                         uint64_t fallback) -> absl::StatusOr<uint64_t> {
    if (!text.has_value()) return fallback;
    const std::optional<uint64_t> value = ParseNumber(*text, UINT32_MAX);
    if (value.has_value()) return *value;
    return Usage(fmt::format("{}={}: not a number (decimal or 0x-hex, < 2^32)", name, *text));
  };

  if (command == "dump") {
    const absl::StatusOr<uint64_t> max_payload_bytes =
        number("--max-payload-bytes", max_payload_flag, 16);
    if (!max_payload_bytes.ok()) return usage_error(Message(max_payload_bytes.status()));
    return Dump(path, static_cast<uint32_t>(*max_payload_bytes));
  }
  const absl::StatusOr<uint64_t> data_bytes = number("--data-bytes", data_bytes_flag, 0);
  if (!data_bytes.ok()) return usage_error(Message(data_bytes.status()));
  const absl::StatusOr<uint64_t> start_index = number("--start-index", start_index_flag, 0);
  if (!start_index.ok()) return usage_error(Message(start_index.status()));
  std::vector<PacketSpec> specs;
  const std::string packets_text = packets_flag.value_or("");
  const std::string_view packets = packets_text;
  for (size_t start = 0; start <= packets.size() && !packets.empty();) {
    const size_t comma = std::min(packets.find(',', start), packets.size());
    absl::StatusOr<PacketSpec> spec = ParseSpec(packets.substr(start, comma - start));
    if (!spec.ok()) return usage_error(Message(spec.status()));
    specs.push_back(*std::move(spec));
    start = comma + 1;
  }
  if (!data_bytes_flag.has_value()) return usage_error("fill needs --data-bytes=N");
  if (absl::Status status = Fill(path, *data_bytes, *start_index, specs); !status.ok()) {
    fmt::print(stderr, "ringtool: {}\n", status.message());
    return kExitUsage;
  }
  return 0;
}

}  // namespace
}  // namespace cvmbus::ring::tools

int main(int argc, char** argv) { return cvmbus::ring::tools::Main(argc, argv); }
