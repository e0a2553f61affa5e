"""guest_program: a freestanding 64-bit guest program for a KvmVm, embedded in a cc_library.

    load("//hw/kvm/guest:guest_program.bzl", "guest_program")
    guest_program(
        name = "boot_guest",
        srcs = ["boot_guest.c"],
    )

makes the cc_library `:boot_guest` with the header `<package>/boot_guest.h`:

    namespace cvmbus::hw::kvm::guest::boot_guest {
    absl::Span<const uint8_t> Image();        // The flat image, to be copied to kLoadGpa.
    inline constexpr uint64_t kLoadGpa = ...;  // Where the image's first byte goes.
    inline constexpr uint64_t kEntryGpa = ...; // _start: LongModeEntry::rip.
    inline constexpr uint64_t kEndGpa = ...;   // First byte past the image and its .bss.
    }

The sources (C and .S) are compiled with the cc toolchain's gcc together with the guest
runtime (//hw/kvm/guest:runtime, guest.h: _start, the IDT, MSR, x2APIC and hypercall helpers),
linked by guest.ld at `load_address`, and `objcopy -O binary`ed to a flat image. The program
provides `uint32_t guest_main(void)`.

Why a genrule and not a cc_binary: the guest must not see the host's compile flags. The
repository's configurations add -fsanitize=... (asan, ubsan, tsan) and -march=native (opt),
which a freestanding guest cannot link or, on this KVM, run (KVM's emulator stops on SSE/AVX
state instructions, cmpxchg16b, popcnt, int3, clac/stac). The genrule runs the compiler with
exactly GUEST_COPTS below, the same in every configuration; they include -Wall -Wextra
-Werror, as the repository's .bazelrc does for host code. The embedding .cc is a byte array
written by od and awk (no xxd, no python).
"""

# Every guest compile: freestanding, no PIC, general registers only (no SSE/AVX for the
# emulator to trip on), no red zone (interrupts arrive on the same stack), no stack protector
# (no TLS), no builtins and no loop-to-memset rewriting (the runtime's memset is such a loop),
# no unwind tables. -mcmodel=small: code and data live below 2 GiB (the load address must).
GUEST_COPTS = [
    "-m64",
    "-march=x86-64",
    "-mtune=generic",
    "-ffreestanding",
    "-fno-pic",
    "-fno-pie",
    "-mgeneral-regs-only",
    "-mno-red-zone",
    "-fno-stack-protector",
    "-fno-builtin",
    "-fno-tree-loop-distribute-patterns",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
    "-fcf-protection=none",
    "-mcmodel=small",
    "-O2",
    "-std=gnu11",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-iquote",
    ".",
]

GUEST_LINKOPTS = [
    "-nostdlib",
    "-static",
    "-no-pie",
    "-Wl,--build-id=none",
    "-Wl,-z,noexecstack",
    "-Wl,-z,max-page-size=4096",
    "-Wl,--no-warn-rwx-segments",
]

_RUNTIME_SRCS = [
    "//hw/kvm/guest:runtime/entry.S",
    "//hw/kvm/guest:runtime/runtime.c",
]
_RUNTIME_HDRS = ["//hw/kvm/guest:runtime/guest.h"]
_LINKER_SCRIPT = "//hw/kvm/guest:guest.ld"

def guest_program(
        name,
        srcs,
        hdrs = [],
        load_address = "0x100000",
        cc_namespace = None,
        copts = [],
        testonly = False,
        visibility = None):
    """A freestanding guest program as a cc_library (see the file's docstring).

    Args:
      name: the cc_library; also the header `<name>.h` and the namespace's last part.
      srcs: the program's .c and .S files.
      hdrs: headers those files include (as "<package>/<file>" from the workspace root).
      load_address: where the image is linked and must be loaded, a hex string below 2 GiB.
      cc_namespace: the C++ namespace of the header (default cvmbus::hw::kvm::guest::<name>).
      copts: extra gcc flags for the program's and the runtime's compiles.
      testonly: as for any rule.
      visibility: of the cc_library.
    """
    namespace = cc_namespace or ("cvmbus::hw::kvm::guest::" + name)
    package = native.package_name()
    guard = ("CVMBUS_GUEST_" + package + "_" + name + "_H_").upper().replace("/", "_").replace("-", "_")
    flags = " ".join(GUEST_COPTS + copts)
    linkflags = " ".join(GUEST_LINKOPTS)

    native.genrule(
        name = name + "_build",
        srcs = srcs + hdrs + _RUNTIME_SRCS + _RUNTIME_HDRS + [_LINKER_SCRIPT],
        outs = [
            name + ".elf",
            name + ".bin",
            name + "_image.cc",
            name + ".h",
        ],
        cmd = "\n".join([
            # genrule-setup.sh has set -euo pipefail: any failing step fails the rule.
            "objdir=$$(mktemp -d)",
            "trap 'rm -rf $$objdir' EXIT",
            "objs=",
            "n=0",
            # The program's sources, then the runtime's; headers are only inputs.
            "for src in $(SRCS); do case $$src in *.c|*.S) " +
            "n=$$((n + 1)); $(CC) " + flags + " -iquote $(GENDIR) -c $$src -o $$objdir/$$n.o; " +
            "objs=\"$$objs $$objdir/$$n.o\";; esac; done",
            "$(CC) " + linkflags + " -Wl,-T,$(location " + _LINKER_SCRIPT + ")" +
            " -Wl,--defsym=__guest_load_address=" + load_address +
            " -o $(location " + name + ".elf) $$objs",
            "$(OBJCOPY) -O binary $(location " + name + ".elf) $(location " + name + ".bin)",
            # The addresses the header states, from the linked program's symbols.
            "entry=$$($(NM) $(location " + name + ".elf) | awk '$$3 == \"_start\" { print $$1 }')",
            "end=$$($(NM) $(location " + name + ".elf) | awk '$$3 == \"_end\" { print $$1 }')",
            "test -n \"$$entry\" -a -n \"$$end\"",
            "size=$$(wc -c < $(location " + name + ".bin))",
            "{ echo '// Generated by guest_program(name = \"" + name + "\"): do not edit.';" +
            " echo '#ifndef " + guard + "';" +
            " echo '#define " + guard + "';" +
            " echo '#include <cstdint>';" +
            " echo '#include \"absl/types/span.h\"';" +
            " echo 'namespace " + namespace + " {';" +
            " echo '// The flat image of the program, to be copied to kLoadGpa.';" +
            " echo 'absl::Span<const uint8_t> Image();';" +
            " echo 'inline constexpr uint64_t kLoadGpa = " + load_address + ";';" +
            " echo \"inline constexpr uint64_t kEntryGpa = 0x$$entry;  // _start\";" +
            " echo \"inline constexpr uint64_t kEndGpa = 0x$$end;  // past the image and .bss\";" +
            " echo \"inline constexpr uint64_t kImageBytes = $$size;\";" +
            " echo '}  // namespace " + namespace + "';" +
            " echo '#endif  // " + guard + "'; } > $(location " + name + ".h)",
            "{ echo '// Generated by guest_program(name = \"" + name + "\"): do not edit.';" +
            " echo '#include \"" + package + "/" + name + ".h\"';" +
            " echo 'namespace " + namespace + " {';" +
            " echo 'namespace {';" +
            " echo 'constexpr uint8_t kImage[] = {';" +
            " od -An -v -tx1 $(location " + name + ".bin) |" +
            " awk '{ line = \"\"; for (i = 1; i <= NF; i++) line = line \"0x\" $$i \",\"; print line }';" +
            " echo '};';" +
            " echo 'static_assert(sizeof(kImage) == kImageBytes);';" +
            " echo '}  // namespace';" +
            " echo 'absl::Span<const uint8_t> Image() { return kImage; }';" +
            " echo '}  // namespace " + namespace + "'; } > $(location " + name + "_image.cc)",
        ]),
        toolchains = ["@bazel_tools//tools/cpp:current_cc_toolchain"],
        tools = ["@bazel_tools//tools/cpp:current_cc_toolchain"],
        testonly = testonly,
        visibility = ["//visibility:private"],
    )

    native.cc_library(
        name = name,
        srcs = [name + "_image.cc"],
        hdrs = [name + ".h"],
        deps = ["@system//:absl"],
        testonly = testonly,
        visibility = visibility,
    )
