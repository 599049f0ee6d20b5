using System.Buffers.Binary;
using System.IO.Compression;

namespace SharpVisor.Machine.Tests.Boot;

/// <summary>Hand-built kernels: ELF64/ELF32 executables and bzImages wrapping them.</summary>
internal static class SyntheticImages
{
    public const ulong KernelBase = 0x100_0000;   // LOAD_PHYSICAL_ADDR
    public const ulong KernelVirtualBase = 0xFFFF_FFFF_8100_0000;
    public const int TextSize = 0x3000;
    public const ulong BssSize = 0x5000;
    public const ulong PvhEntryOffset = 0x40;

    /// <summary>Text bytes: a recognisable pattern so tests can check what landed in RAM.</summary>
    public static byte[] Text()
    {
        var text = new byte[TextSize];
        for (int i = 0; i < text.Length; i++)
        {
            text[i] = (byte)(i * 7 + 3);
        }
        return text;
    }

    /// <summary>
    /// A vmlinux-like ELF64: one PT_LOAD (text + bss) at p_paddr 0x1000000 / p_vaddr 0xffffffff81000000,
    /// and optionally a PT_NOTE with the Xen PVH entry note (8-byte descriptor, as Linux emits it).
    /// </summary>
    public static byte[] Elf64(bool pvhNote = true, ulong? entry = null, ulong paddr = KernelBase, ulong bss = BssSize)
    {
        byte[] note = pvhNote ? PvhNote(paddr + PvhEntryOffset) : [];
        int phnum = pvhNote ? 2 : 1;
        int textOffset = 0x1000;
        int noteOffset = textOffset + TextSize;
        var f = new byte[noteOffset + note.Length];
        var s = f.AsSpan();
        "\x7F"u8.CopyTo(s);
        "ELF"u8.CopyTo(s[1..]);
        f[4] = 2; // ELFCLASS64
        f[5] = 1; // little-endian
        f[6] = 1; // EV_CURRENT
        BinaryPrimitives.WriteUInt16LittleEndian(s[16..], 2);  // ET_EXEC
        BinaryPrimitives.WriteUInt16LittleEndian(s[18..], 62); // EM_X86_64
        BinaryPrimitives.WriteUInt32LittleEndian(s[20..], 1);
        BinaryPrimitives.WriteUInt64LittleEndian(s[24..], entry ?? paddr); // phys_startup_64
        BinaryPrimitives.WriteUInt64LittleEndian(s[32..], 64);             // e_phoff
        BinaryPrimitives.WriteUInt16LittleEndian(s[52..], 64);             // e_ehsize
        BinaryPrimitives.WriteUInt16LittleEndian(s[54..], 56);             // e_phentsize
        BinaryPrimitives.WriteUInt16LittleEndian(s[56..], (ushort)phnum);
        var ph = s[64..];
        BinaryPrimitives.WriteUInt32LittleEndian(ph, 1);                   // PT_LOAD
        BinaryPrimitives.WriteUInt32LittleEndian(ph[4..], 7);
        BinaryPrimitives.WriteUInt64LittleEndian(ph[8..], (ulong)textOffset);
        BinaryPrimitives.WriteUInt64LittleEndian(ph[16..], KernelVirtualBase + (paddr - KernelBase));
        BinaryPrimitives.WriteUInt64LittleEndian(ph[24..], paddr);
        BinaryPrimitives.WriteUInt64LittleEndian(ph[32..], TextSize);
        BinaryPrimitives.WriteUInt64LittleEndian(ph[40..], TextSize + bss);
        if (pvhNote)
        {
            var nh = s[(64 + 56)..];
            BinaryPrimitives.WriteUInt32LittleEndian(nh, 4);               // PT_NOTE
            BinaryPrimitives.WriteUInt64LittleEndian(nh[8..], (ulong)noteOffset);
            BinaryPrimitives.WriteUInt64LittleEndian(nh[32..], (ulong)note.Length);
            BinaryPrimitives.WriteUInt64LittleEndian(nh[40..], (ulong)note.Length);
            note.CopyTo(s[noteOffset..]);
        }
        Text().CopyTo(s[textOffset..]);
        return f;
    }

    /// <summary>An ELF note list: a harmless note first, then XEN_ELFNOTE_PHYS32_ENTRY.</summary>
    static byte[] PvhNote(ulong entry)
    {
        var n = new byte[(12 + 4 + 4) + (12 + 4 + 8)];
        var s = n.AsSpan();
        // "GNU" build-id-like note with a 4-byte descriptor.
        BinaryPrimitives.WriteUInt32LittleEndian(s, 4);
        BinaryPrimitives.WriteUInt32LittleEndian(s[4..], 4);
        BinaryPrimitives.WriteUInt32LittleEndian(s[8..], 3);
        "GNU\0"u8.CopyTo(s[12..]);
        var x = s[20..];
        BinaryPrimitives.WriteUInt32LittleEndian(x, 4);
        BinaryPrimitives.WriteUInt32LittleEndian(x[4..], 8);
        BinaryPrimitives.WriteUInt32LittleEndian(x[8..], 18);
        "Xen\0"u8.CopyTo(x[12..]);
        BinaryPrimitives.WriteUInt64LittleEndian(x[16..], entry);
        return n;
    }

    public static byte[] Gzip(byte[] data)
    {
        using var output = new MemoryStream();
        using (var gz = new GZipStream(output, CompressionLevel.Fastest, leaveOpen: true))
        {
            gz.Write(data);
        }
        // No size trailer: gzip's own ISIZE field is the last 4 bytes (what mkpiggy reads), as in the kernel build.
        return output.ToArray();
    }

    /// <summary>The kernel build appends the decompressed size to non-gzip payloads (scripts/Makefile.lib size_append).</summary>
    public static byte[] WithSizeAppend(byte[] compressed, int size) => [.. compressed, .. BitConverter.GetBytes((uint)size)];

    public sealed record BzOptions
    {
        public ushort Version { get; init; } = 0x020F;
        public byte SetupSects { get; init; } = 4;
        public ushort XLoadFlags { get; init; } = 0x7F & ~0x20;
        public uint KernelAlignment { get; init; } = 0x20_0000;
        public ulong PrefAddress { get; init; } = KernelBase;
        public uint InitSize { get; init; } = 0x40_0000;
        public uint InitrdAddrMax { get; init; } = 0x7FFF_FFFF;
        public uint CmdlineSize { get; init; } = 0x7FF;
        public uint? PayloadOffsetOverride { get; init; }
        public uint? PayloadLengthOverride { get; init; }
    }

    /// <summary>A bzImage: setup sectors with a setup header, then a small "decompressor" and the payload.</summary>
    public static byte[] BzImage(byte[] payload, BzOptions? options = null)
    {
        var o = options ?? new BzOptions();
        int setup = (o.SetupSects + 1) * 512;
        const int decompressorStub = 0x200; // stands in for arch/x86/boot/compressed before the payload
        var f = new byte[setup + decompressorStub + payload.Length];
        var s = f.AsSpan();
        f[0x1F1] = o.SetupSects;
        BinaryPrimitives.WriteUInt16LittleEndian(s[0x1FE..], 0xAA55);
        f[0x200] = 0xEB;           // jmp short
        f[0x201] = 0x6A;           // header end = 0x202 + 0x6A = 0x26C
        BinaryPrimitives.WriteUInt32LittleEndian(s[0x202..], 0x53726448);
        BinaryPrimitives.WriteUInt16LittleEndian(s[0x206..], o.Version);
        f[0x211] = 0x01;           // LOADED_HIGH
        BinaryPrimitives.WriteUInt32LittleEndian(s[0x214..], 0x100000);
        BinaryPrimitives.WriteUInt32LittleEndian(s[0x22C..], o.InitrdAddrMax);
        BinaryPrimitives.WriteUInt32LittleEndian(s[0x230..], o.KernelAlignment);
        f[0x234] = 1;              // relocatable
        f[0x235] = 21;
        BinaryPrimitives.WriteUInt16LittleEndian(s[0x236..], o.XLoadFlags);
        BinaryPrimitives.WriteUInt32LittleEndian(s[0x238..], o.CmdlineSize);
        BinaryPrimitives.WriteUInt32LittleEndian(s[0x248..], o.PayloadOffsetOverride ?? decompressorStub);
        BinaryPrimitives.WriteUInt32LittleEndian(s[0x24C..], o.PayloadLengthOverride ?? (uint)payload.Length);
        BinaryPrimitives.WriteUInt64LittleEndian(s[0x258..], o.PrefAddress);
        BinaryPrimitives.WriteUInt32LittleEndian(s[0x260..], o.InitSize);
        payload.CopyTo(s[(setup + decompressorStub)..]);
        return f;
    }

    /// <summary>A plain ELF32 i386 executable with one PT_LOAD at <paramref name="paddr"/>.</summary>
    public static byte[] Elf32(uint paddr, uint entry, byte[] code, uint bss, int prefix = 0x100)
    {
        var f = new byte[prefix + code.Length];
        var s = f.AsSpan();
        "\x7F"u8.CopyTo(s);
        "ELF"u8.CopyTo(s[1..]);
        f[4] = 1;
        f[5] = 1;
        f[6] = 1;
        BinaryPrimitives.WriteUInt16LittleEndian(s[16..], 2);
        BinaryPrimitives.WriteUInt16LittleEndian(s[18..], 3);
        BinaryPrimitives.WriteUInt32LittleEndian(s[20..], 1);
        BinaryPrimitives.WriteUInt32LittleEndian(s[24..], entry);
        BinaryPrimitives.WriteUInt32LittleEndian(s[28..], 52);
        BinaryPrimitives.WriteUInt16LittleEndian(s[40..], 52);
        BinaryPrimitives.WriteUInt16LittleEndian(s[42..], 32);
        BinaryPrimitives.WriteUInt16LittleEndian(s[44..], 1);
        var ph = s[52..];
        BinaryPrimitives.WriteUInt32LittleEndian(ph, 1);
        BinaryPrimitives.WriteUInt32LittleEndian(ph[4..], (uint)prefix);
        BinaryPrimitives.WriteUInt32LittleEndian(ph[8..], paddr);
        BinaryPrimitives.WriteUInt32LittleEndian(ph[12..], paddr);
        BinaryPrimitives.WriteUInt32LittleEndian(ph[16..], (uint)code.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(ph[20..], (uint)code.Length + bss);
        code.CopyTo(s[prefix..]);
        return f;
    }

    /// <summary>Writes a Multiboot header (with a.out kludge fields when given) at <paramref name="offset"/>.</summary>
    public static void WriteMultibootHeader(byte[] file, int offset, uint flags, uint[]? addressFields = null, bool badChecksum = false)
    {
        var s = file.AsSpan(offset);
        const uint magic = 0x1BADB002;
        BinaryPrimitives.WriteUInt32LittleEndian(s, magic);
        BinaryPrimitives.WriteUInt32LittleEndian(s[4..], flags);
        BinaryPrimitives.WriteUInt32LittleEndian(s[8..], unchecked(0u - magic - flags + (badChecksum ? 1u : 0u)));
        if (addressFields is not null)
        {
            for (int i = 0; i < addressFields.Length; i++)
            {
                BinaryPrimitives.WriteUInt32LittleEndian(s[(12 + 4 * i)..], addressFields[i]);
            }
        }
    }
}
