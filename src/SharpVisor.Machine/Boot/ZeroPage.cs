using System.Buffers.Binary;

namespace SharpVisor.Machine.Boot;

/// <summary>
/// Builds Linux's struct boot_params, the "zero page" (arch/x86/include/uapi/asm/bootparam.h;
/// Documentation/x86/zero-page.rst), that RSI points to at the 64-bit entry.
/// </summary>
public static class ZeroPage
{
    public const int Size = 4096;
    // boot_params offsets (zero-page.rst).
    public const int AcpiRsdpAddrOffset = 0x070;
    public const int ExtRamdiskImageOffset = 0x0C0;
    public const int ExtRamdiskSizeOffset = 0x0C4;
    public const int ExtCmdLinePtrOffset = 0x0C8;
    public const int E820EntriesOffset = 0x1E8;
    public const int SetupHeaderOffset = 0x1F1;
    /// <summary>The setup header area of boot_params ends where edd_mbr_sig_buffer starts.</summary>
    public const int SetupHeaderLimit = 0x290;
    public const int E820TableOffset = 0x2D0;
    public const int E820EntrySize = 20;

    public const byte TypeOfLoaderUndefined = 0xFF; // boot.rst type_of_loader: 0xFF = undefined/other
    public const byte LoadedHigh = 1 << 0;
    public const byte CanUseHeap = 1 << 7;
    /// <summary>heap_end_ptr: end of the setup heap (0xFE00 = 0x10000 - 0x200, boot.rst "heap_end_ptr").</summary>
    public const ushort HeapEndPtr = 0xFE00;

    /// <summary>
    /// Returns a boot_params page for a kernel that enters at the 64-bit entry point.
    /// </summary>
    /// <param name="setupHeader">The bzImage setup header bytes (from offset 0x1F1).</param>
    /// <param name="commandLine">Physical address of the NUL-terminated command line (0 = none).</param>
    /// <param name="initrdAddress">Physical address of the initrd (0 = none).</param>
    /// <param name="initrdSize">Initrd size in bytes.</param>
    /// <param name="rsdp">Physical address of the ACPI RSDP (0 = let the kernel scan; boot protocol 2.14).</param>
    /// <param name="e820">The memory map.</param>
    public static byte[] Build(ReadOnlySpan<byte> setupHeader, ulong commandLine, ulong initrdAddress, ulong initrdSize, ulong rsdp, E820Map e820)
    {
        if (e820.Entries.Count > E820Map.MaxZeroPageEntries)
        {
            throw new ArgumentException($"{e820.Entries.Count} E820 entries do not fit in boot_params (max {E820Map.MaxZeroPageEntries})", nameof(e820));
        }
        var page = new byte[Size];
        var p = page.AsSpan();
        int headerLength = Math.Min(setupHeader.Length, SetupHeaderLimit - SetupHeaderOffset);
        setupHeader[..headerLength].CopyTo(p[SetupHeaderOffset..]);

        p[BzImage.TypeOfLoaderOffset] = TypeOfLoaderUndefined;
        // Keep the kernel's own flags except KASLR (bit 1, written by the decompressor we skip), add ours.
        p[BzImage.LoadFlagsOffset] = (byte)((p[BzImage.LoadFlagsOffset] & ~0x02) | LoadedHigh | CanUseHeap);
        BinaryPrimitives.WriteUInt16LittleEndian(p[BzImage.HeapEndPtrOffset..], HeapEndPtr);
        WriteSplit(p, BzImage.CmdLinePtrOffset, ExtCmdLinePtrOffset, commandLine);
        WriteSplit(p, BzImage.RamdiskImageOffset, ExtRamdiskImageOffset, initrdAddress);
        WriteSplit(p, BzImage.RamdiskSizeOffset, ExtRamdiskSizeOffset, initrdSize);
        BinaryPrimitives.WriteUInt64LittleEndian(p[AcpiRsdpAddrOffset..], rsdp);

        p[E820EntriesOffset] = (byte)e820.Entries.Count;
        for (int i = 0; i < e820.Entries.Count; i++)
        {
            var entry = p.Slice(E820TableOffset + i * E820EntrySize, E820EntrySize);
            var e = e820.Entries[i];
            BinaryPrimitives.WriteUInt64LittleEndian(entry, e.Address);
            BinaryPrimitives.WriteUInt64LittleEndian(entry[8..], e.Length);
            BinaryPrimitives.WriteUInt32LittleEndian(entry[16..], (uint)e.Type);
        }
        return page;
    }

    /// <summary>
    /// A minimal setup header for a kernel loaded from a bare vmlinux (no bzImage around it): boot
    /// flag, "HdrS", protocol 2.15, 64-bit and relocatable-above-4G capable flags.
    /// </summary>
    public static byte[] SyntheticSetupHeader()
    {
        var header = new byte[SetupHeaderLimit - SetupHeaderOffset];
        var h = header.AsSpan();
        BinaryPrimitives.WriteUInt16LittleEndian(h[(BzImage.BootFlagOffset - SetupHeaderOffset)..], BzImage.BootFlag);
        BinaryPrimitives.WriteUInt32LittleEndian(h[(BzImage.HeaderMagicOffset - SetupHeaderOffset)..], BzImage.HeaderMagic);
        BinaryPrimitives.WriteUInt16LittleEndian(h[(BzImage.VersionOffset - SetupHeaderOffset)..], 0x020F);
        BinaryPrimitives.WriteUInt16LittleEndian(h[(BzImage.XLoadFlagsOffset - SetupHeaderOffset)..], BzImage.XlfKernel64 | BzImage.XlfCanBeLoadedAbove4G);
        BinaryPrimitives.WriteUInt32LittleEndian(h[(BzImage.InitrdAddrMaxOffset - SetupHeaderOffset)..], 0x7FFFFFFF);
        return header;
    }

    // A 64-bit value split between a 32-bit setup-header field and its ext_* high half (protocol 2.12+).
    static void WriteSplit(Span<byte> p, int lowOffset, int highOffset, ulong value)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(p[lowOffset..], (uint)value);
        BinaryPrimitives.WriteUInt32LittleEndian(p[highOffset..], (uint)(value >> 32));
    }
}
