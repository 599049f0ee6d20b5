using System.Buffers.Binary;
using SharpVisor.Core;

namespace SharpVisor.Machine.Boot;

/// <summary>
/// A parsed Linux x86 bzImage: the real-mode setup header and the compressed payload
/// (Documentation/x86/boot.rst, "The Real-Mode Kernel Header").
/// </summary>
public sealed class BzImage
{
    // Setup header field offsets (boot.rst, table in "THE REAL-MODE KERNEL HEADER").
    internal const int SetupSectsOffset = 0x1F1;
    internal const int BootFlagOffset = 0x1FE;
    internal const int JumpOffset = 0x200;
    internal const int HeaderMagicOffset = 0x202;
    internal const int VersionOffset = 0x206;
    internal const int TypeOfLoaderOffset = 0x210;
    internal const int LoadFlagsOffset = 0x211;
    internal const int RamdiskImageOffset = 0x218;
    internal const int RamdiskSizeOffset = 0x21C;
    internal const int HeapEndPtrOffset = 0x224;
    internal const int CmdLinePtrOffset = 0x228;
    internal const int InitrdAddrMaxOffset = 0x22C;
    internal const int KernelAlignmentOffset = 0x230;
    internal const int RelocatableOffset = 0x234;
    internal const int XLoadFlagsOffset = 0x236;
    internal const int CmdlineSizeOffset = 0x238;
    internal const int PayloadOffsetOffset = 0x248;
    internal const int PayloadLengthOffset = 0x24C;
    internal const int PrefAddressOffset = 0x258;
    internal const int InitSizeOffset = 0x260;
    /// <summary>Bytes the parser needs: the header up to and including kernel_info_offset (protocol 2.15).</summary>
    internal const int MinimumHeaderEnd = 0x26C;

    public const uint HeaderMagic = 0x53726448; // "HdrS"
    public const ushort BootFlag = 0xAA55;
    public const ushort MinimumVersion = 0x020C; // 2.12: XLF_KERNEL_64 and the 64-bit entry as we use it
    public const ushort XlfKernel64 = 1 << 0;
    public const ushort XlfCanBeLoadedAbove4G = 1 << 1;

    BzImage(byte[] file) => File = file;

    public byte[] File { get; }
    public int SetupSects { get; private init; }
    public ushort Version { get; private init; }
    public byte LoadFlags { get; private init; }
    public ushort XLoadFlags { get; private init; }
    public uint InitrdAddrMax { get; private init; }
    public uint KernelAlignment { get; private init; }
    public bool Relocatable { get; private init; }
    public uint CmdlineSize { get; private init; }
    public ulong PrefAddress { get; private init; }
    public uint InitSize { get; private init; }

    /// <summary>File offset of the protected-mode kernel ((setup_sects + 1) * 512).</summary>
    public int ProtectedModeOffset => (SetupSects + 1) * 512;

    /// <summary>The compressed vmlinux (payload_offset/payload_length, relative to the protected-mode kernel).</summary>
    public ReadOnlyMemory<byte> Payload { get; private init; }

    /// <summary>The setup header bytes [0x1F1, end) to copy into boot_params (end = 0x202 + byte at 0x201).</summary>
    public ReadOnlySpan<byte> SetupHeader => File.AsSpan(SetupSectsOffset, SetupHeaderEnd - SetupSectsOffset);

    int SetupHeaderEnd { get; init; }

    /// <summary>True when the file starts like a bzImage (boot flag and "HdrS"), without full validation.</summary>
    public static bool LooksLikeBzImage(ReadOnlySpan<byte> file) =>
        file.Length >= HeaderMagicOffset + 4
        && BinaryPrimitives.ReadUInt16LittleEndian(file[BootFlagOffset..]) == BootFlag
        && BinaryPrimitives.ReadUInt32LittleEndian(file[HeaderMagicOffset..]) == HeaderMagic;

    /// <summary>Parses and validates a bzImage; every malformed case is a <see cref="UserErrorException"/>.</summary>
    public static BzImage Parse(byte[] file, string name = "kernel")
    {
        if (file.Length < VersionOffset + 2)
        {
            throw new UserErrorException($"{name}: file too short ({file.Length} bytes) to be a Linux bzImage");
        }
        if (!LooksLikeBzImage(file))
        {
            throw new UserErrorException($"{name}: not a Linux bzImage (no 0xAA55 boot flag and \"HdrS\" setup header magic at 0x202)");
        }
        ushort version = BinaryPrimitives.ReadUInt16LittleEndian(file.AsSpan(VersionOffset));
        if (version < MinimumVersion)
        {
            throw new UserErrorException($"{name}: boot protocol {version >> 8}.{version & 0xFF} is too old; version 2.12 or newer (Linux 3.8+) is required");
        }
        if (file.Length < MinimumHeaderEnd)
        {
            throw new UserErrorException($"{name}: truncated bzImage ({file.Length} bytes; the setup header alone needs 0x{MinimumHeaderEnd:x})");
        }
        var f = file.AsSpan();
        int headerEnd = 0x202 + file[JumpOffset + 1];
        int setupSects = file[SetupSectsOffset] == 0 ? 4 : file[SetupSectsOffset]; // boot.rst: 0 means 4
        ushort xloadflags = BinaryPrimitives.ReadUInt16LittleEndian(f[XLoadFlagsOffset..]);
        if ((xloadflags & XlfKernel64) == 0)
        {
            throw new UserErrorException($"{name}: not a 64-bit kernel (XLF_KERNEL_64 is clear in xloadflags 0x{xloadflags:x}); SharpVisor boots x86-64 kernels");
        }
        uint alignment = BinaryPrimitives.ReadUInt32LittleEndian(f[KernelAlignmentOffset..]);
        if (alignment < GuestMemory.PageSize || (alignment & (alignment - 1)) != 0)
        {
            throw new UserErrorException($"{name}: invalid kernel_alignment 0x{alignment:x} (must be a power of two of at least 4 KiB)");
        }
        ulong prefAddress = BinaryPrimitives.ReadUInt64LittleEndian(f[PrefAddressOffset..]);
        if (prefAddress < BootLayout.OneMiB || prefAddress % alignment != 0)
        {
            throw new UserErrorException($"{name}: invalid pref_address 0x{prefAddress:x} (must be above 1 MiB and aligned to kernel_alignment 0x{alignment:x})");
        }
        uint initSize = BinaryPrimitives.ReadUInt32LittleEndian(f[InitSizeOffset..]);
        if (initSize == 0)
        {
            throw new UserErrorException($"{name}: init_size is 0 in the setup header");
        }
        int protectedModeOffset = (setupSects + 1) * 512;
        if (protectedModeOffset >= file.Length)
        {
            throw new UserErrorException($"{name}: truncated bzImage: {setupSects} setup sectors announced but the file is only {file.Length} bytes");
        }
        if (headerEnd < MinimumHeaderEnd || headerEnd > protectedModeOffset)
        {
            throw new UserErrorException($"{name}: setup header end 0x{headerEnd:x} (from the jump at 0x200) is outside the setup sectors");
        }
        uint payloadOffset = BinaryPrimitives.ReadUInt32LittleEndian(f[PayloadOffsetOffset..]);
        uint payloadLength = BinaryPrimitives.ReadUInt32LittleEndian(f[PayloadLengthOffset..]);
        long protectedModeSize = file.Length - protectedModeOffset;
        if (payloadLength == 0 || payloadOffset + (long)payloadLength > protectedModeSize)
        {
            throw new UserErrorException($"{name}: compressed payload 0x{payloadOffset:x}+0x{payloadLength:x} is out of range of the 0x{protectedModeSize:x}-byte protected-mode kernel (truncated file?)");
        }
        return new BzImage(file)
        {
            SetupSects = setupSects,
            Version = version,
            LoadFlags = file[LoadFlagsOffset],
            XLoadFlags = xloadflags,
            InitrdAddrMax = BinaryPrimitives.ReadUInt32LittleEndian(f[InitrdAddrMaxOffset..]),
            KernelAlignment = alignment,
            Relocatable = file[RelocatableOffset] != 0,
            CmdlineSize = BinaryPrimitives.ReadUInt32LittleEndian(f[CmdlineSizeOffset..]),
            PrefAddress = prefAddress,
            InitSize = initSize,
            Payload = file.AsMemory(protectedModeOffset + (int)payloadOffset, (int)payloadLength),
            SetupHeaderEnd = Math.Min(headerEnd, ZeroPage.SetupHeaderLimit),
        };
    }
}
