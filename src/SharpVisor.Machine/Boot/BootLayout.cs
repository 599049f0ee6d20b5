namespace SharpVisor.Machine.Boot;

/// <summary>
/// Fixed guest-physical addresses of what the loaders place in conventional memory (below 640 KiB).
/// Page 0 (real-mode IVT/BDA) is left alone; everything else sits above 0x500 and below the EBDA at
/// 0x9FC00, which the E820 map reserves.
/// </summary>
public static class BootLayout
{
    /// <summary>GDT (flat segments, see <see cref="BootStructures"/>).</summary>
    public const ulong Gdt = 0x500;

    /// <summary>32-bit TSS the PVH ABI wants TR to point at (104 bytes).</summary>
    public const ulong Tss = 0x580;

    /// <summary>PVH hvm_start_info, or the Multiboot information structure.</summary>
    public const ulong StartInfo = 0x6000;

    /// <summary>PVH module list / memory map, or Multiboot mmap / module list (up to 0x7000).</summary>
    public const ulong StartInfoTables = 0x6100;

    /// <summary>Linux boot_params ("zero page").</summary>
    public const ulong ZeroPage = 0x7000;

    /// <summary>Long-mode page tables: PML4, then one PDPT, then four page directories (0x9000-0xEFFF).</summary>
    public const ulong Pml4 = 0x9000;

    /// <summary>Kernel command line and other strings (up to <see cref="CommandLineEnd"/>).</summary>
    public const ulong CommandLine = 0x20000;

    public const ulong CommandLineEnd = 0x30000;

    /// <summary>End of conventional memory handed to the guest; the EBDA follows (reserved).</summary>
    public const ulong Ebda = 0x9FC00;

    /// <summary>Start of the BIOS area where Linux scans for a copy of the RSDP (ACPI 6.4 5.2.5.1).</summary>
    public const ulong BiosArea = 0xE0000;

    public const ulong OneMiB = 0x100000;

    public static ulong AlignUp(ulong value, ulong alignment) => (value + alignment - 1) & ~(alignment - 1);

    public static ulong AlignDown(ulong value, ulong alignment) => value & ~(alignment - 1);
}
