using System.Buffers.Binary;
using SharpVisor.Core;

namespace SharpVisor.Machine.Boot;

/// <summary>
/// The GDT, TSS and identity page tables every loader shares, and the <see cref="BootEntry"/> values
/// that match them.
/// </summary>
/// <remarks>
/// GDT layout (selectors chosen so the Linux 64-bit protocol finds what it expects,
/// Documentation/x86/boot.rst "64-bit Boot Protocol": __BOOT_CS = 0x10, __BOOT_DS = 0x18, both 4 GiB flat):
/// 0x00 null, 0x08 flat 32-bit code, 0x10 flat 64-bit code, 0x18 flat data, 0x20 32-bit TSS.
/// </remarks>
public static class BootStructures
{
    public const ushort Code32Selector = 0x08;
    public const ushort Code64Selector = 0x10; // __BOOT_CS
    public const ushort DataSelector = 0x18;   // __BOOT_DS
    public const ushort TssSelector = 0x20;
    const int GdtEntries = 5;
    public const ushort GdtLimit = GdtEntries * 8 - 1;
    const uint TssLimit = 0x67;

    // VMX-layout access rights (SDM 24.4.1): type | S<<4 | DPL<<5 | P<<7 | L<<13 | DB<<14 | G<<15.
    const ushort Code32Attributes = 0xB | 0x10 | 0x80 | 0x4000 | 0x8000;  // execute/read, accessed, D=1, G=1
    const ushort Code64Attributes = 0xB | 0x10 | 0x80 | 0x2000 | 0x8000;  // execute/read, accessed, L=1, G=1
    const ushort DataAttributes = 0x3 | 0x10 | 0x80 | 0x4000 | 0x8000;    // read/write, accessed, B=1, G=1
    const ushort TssAttributes = 0xB | 0x80;                              // busy 32-bit TSS (as after LTR)

    public const ulong Cr0ProtectionEnable = 1UL << 0;
    public const ulong Cr0ExtensionType = 1UL << 4;
    public const ulong Cr0Paging = 1UL << 31;
    public const ulong Cr4Pae = 1UL << 5;
    public const ulong EferLme = 1UL << 8;
    public const ulong EferLma = 1UL << 10;

    /// <summary>Bytes of low memory the identity map's page tables take at <see cref="BootLayout.Pml4"/>.</summary>
    public const int PageTableBytes = 6 * 4096;

    /// <summary>Writes the GDT and TSS at their fixed addresses.</summary>
    public static void WriteGdt(GuestMemory memory)
    {
        Span<byte> gdt = stackalloc byte[GdtEntries * 8];
        gdt.Clear();
        WriteDescriptor(gdt[0x08..], 0, 0xFFFFF, Code32Attributes);
        WriteDescriptor(gdt[0x10..], 0, 0xFFFFF, Code64Attributes);
        WriteDescriptor(gdt[0x18..], 0, 0xFFFFF, DataAttributes);
        WriteDescriptor(gdt[0x20..], (uint)BootLayout.Tss, TssLimit, TssAttributes);
        Write(memory, BootLayout.Gdt, gdt);
        Write(memory, BootLayout.Tss, new byte[TssLimit + 1]);
    }

    // Legacy descriptor format, SDM Vol. 3A 3.4.5 figure 3-8. limit20 is in units of G.
    static void WriteDescriptor(Span<byte> d, uint baseAddress, uint limit20, ushort attributes)
    {
        ulong v = (limit20 & 0xFFFF)
            | ((ulong)(baseAddress & 0xFFFFFF) << 16)
            | ((ulong)(attributes & 0xFF) << 40)
            | ((ulong)((limit20 >> 16) & 0xF) << 48)
            | ((ulong)((attributes >> 12) & 0xF) << 52)
            | ((ulong)(baseAddress >> 24) << 56);
        BinaryPrimitives.WriteUInt64LittleEndian(d, v);
    }

    /// <summary>
    /// Identity-maps the first 4 GiB with 2 MiB pages (PML4 → one PDPT → four page directories).
    /// 2 MiB rather than 1 GiB pages so the map works on a CPU model without PDPE1GB.
    /// </summary>
    public static void WriteIdentityPageTables(GuestMemory memory)
    {
        const ulong present = 1, writable = 2, largePage = 0x80;
        ulong pdpt = BootLayout.Pml4 + 0x1000;
        ulong pd0 = BootLayout.Pml4 + 0x2000;
        var tables = new byte[PageTableBytes];
        Span<byte> t = tables;
        BinaryPrimitives.WriteUInt64LittleEndian(t, pdpt | present | writable);
        for (int i = 0; i < 4; i++)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(t[(0x1000 + i * 8)..], (pd0 + (ulong)i * 0x1000) | present | writable);
        }
        for (int i = 0; i < 4 * 512; i++)
        {
            ulong address = (ulong)i << 21;
            BinaryPrimitives.WriteUInt64LittleEndian(t[(0x2000 + i * 8)..], address | present | writable | largePage);
        }
        Write(memory, BootLayout.Pml4, tables);
    }

    /// <summary>64-bit entry state: long mode, identity paging, CS=__BOOT_CS, data=__BOOT_DS.</summary>
    public static BootEntry LongModeEntry(ulong rip, ulong rsi) => new(
        BootMode.Long64, rip, Rsi: rsi, Rax: 0, Rbx: 0,
        Cr0: Cr0ProtectionEnable | Cr0ExtensionType | Cr0Paging,
        Cr3: BootLayout.Pml4,
        Cr4: Cr4Pae,
        Efer: EferLme | EferLma,
        GdtBase: BootLayout.Gdt, GdtLimit: GdtLimit,
        Cs: new BootSegment(Code64Selector, 0, uint.MaxValue, Code64Attributes),
        Data: new BootSegment(DataSelector, 0, uint.MaxValue, DataAttributes),
        Tr: new BootSegment(TssSelector, BootLayout.Tss, TssLimit, TssAttributes));

    /// <summary>32-bit flat protected mode with paging off (PVH and Multiboot).</summary>
    public static BootEntry Protected32Entry(uint eip, uint eax, uint ebx) => new(
        BootMode.Protected32, eip, Rsi: 0, Rax: eax, Rbx: ebx,
        Cr0: Cr0ProtectionEnable | Cr0ExtensionType,
        Cr3: 0, Cr4: 0, Efer: 0,
        GdtBase: BootLayout.Gdt, GdtLimit: GdtLimit,
        Cs: new BootSegment(Code32Selector, 0, uint.MaxValue, Code32Attributes),
        Data: new BootSegment(DataSelector, 0, uint.MaxValue, DataAttributes),
        Tr: new BootSegment(TssSelector, BootLayout.Tss, TssLimit, TssAttributes));

    internal static void Write(GuestMemory memory, ulong gpa, ReadOnlySpan<byte> bytes)
    {
        if (!memory.TryWrite(gpa, bytes))
        {
            throw new UserErrorException($"guest RAM too small: cannot place {bytes.Length} boot bytes at 0x{gpa:x}");
        }
    }
}
