using SharpVisor.Core;

namespace SharpVisor.Machine.Boot;

/// <summary>E820 address range types (ACPI 6.4 table 15.1; Linux arch/x86/include/asm/e820/types.h).</summary>
public enum E820Type : uint
{
    Ram = 1,
    Reserved = 2,
    Acpi = 3,
    Nvs = 4,
    Unusable = 5,
}

public readonly record struct E820Entry(ulong Address, ulong Length, E820Type Type)
{
    public ulong End => Address + Length;
}

/// <summary>Where the ACPI tables live: a reclaimable table area followed by NVS (for the FACS).</summary>
/// <param name="Base">Start of the region (page aligned).</param>
/// <param name="TablesSize">Bytes of ACPI-reclaim (type 3) memory holding the tables.</param>
/// <param name="NvsSize">Bytes of ACPI NVS (type 4) memory after the tables (the FACS goes there).</param>
public readonly record struct AcpiRegion(ulong Base, ulong TablesSize, ulong NvsSize)
{
    public const ulong DefaultTablesSize = 0x1F000;
    public const ulong DefaultNvsSize = 0x1000;

    public ulong NvsBase => Base + TablesSize;
    public ulong End => Base + TablesSize + NvsSize;

    /// <summary>The customary place: the last 128 KiB of low RAM (as QEMU/SeaBIOS do).</summary>
    public static AcpiRegion AtTopOfLowRam(GuestMemory memory)
    {
        ulong size = DefaultTablesSize + DefaultNvsSize;
        if (memory.LowRamEnd < BootLayout.OneMiB + size + BootLayout.OneMiB)
        {
            throw new UserErrorException($"guest RAM ({memory.LowRamEnd >> 20} MiB below 4 GiB) is too small for the ACPI tables; give the guest at least 4 MiB");
        }
        return new AcpiRegion(memory.LowRamEnd - size, DefaultTablesSize, DefaultNvsSize);
    }
}

/// <summary>
/// The BIOS memory map (INT 15h E820) the loaders hand to the guest, built from the guest RAM layout.
/// </summary>
public sealed class E820Map
{
    /// <summary>Linux boot_params holds at most this many entries (E820_MAX_ENTRIES_ZEROPAGE).</summary>
    public const int MaxZeroPageEntries = 128;

    readonly List<E820Entry> _entries;

    public E820Map(IEnumerable<E820Entry> entries)
    {
        _entries = entries.Where(e => e.Length != 0).OrderBy(e => e.Address).ToList();
        for (int i = 1; i < _entries.Count; i++)
        {
            if (_entries[i].Address < _entries[i - 1].End)
            {
                ThrowHelper.InvalidOperation($"E820 entries overlap at 0x{_entries[i].Address:x}");
            }
        }
    }

    public IReadOnlyList<E820Entry> Entries => _entries;

    /// <summary>
    /// The q35 map: RAM 0..0x9FC00, reserved EBDA 0x9FC00..0xA0000, reserved BIOS area
    /// 0xE0000..0x100000 (it holds the RSDP copy), RAM 1 MiB..ACPI region, ACPI tables, ACPI NVS,
    /// the PCIe ECAM window reserved, and RAM above 4 GiB.
    /// </summary>
    /// <remarks>
    /// Only the ECAM window of the PCI hole is reserved, as QEMU does (PCI Firmware spec 3.2 4.1.2
    /// requires MCFG space to be reserved in the firmware map). The rest of the hole is left out of
    /// the map rather than marked reserved: Linux clips its PCI host bridge windows against E820
    /// reserved ranges (pci_use_e820 in arch/x86/pci/acpi.c, resource_clip in
    /// arch/x86/kernel/resource.c) and would then find no space for BARs.
    /// 0xA0000..0xE0000 (VGA window, option ROMs) is a hole: not RAM, not described.
    /// </remarks>
    public static E820Map ForMachine(GuestMemory memory, AcpiRegion acpi, ulong ecamBase = 0, ulong ecamSize = 0)
    {
        if (memory.LowRamEnd < acpi.End || acpi.Base < BootLayout.OneMiB)
        {
            ThrowHelper.InvalidOperation($"ACPI region 0x{acpi.Base:x}-0x{acpi.End:x} is not inside low RAM above 1 MiB");
        }
        var entries = new List<E820Entry>
        {
            new(0, BootLayout.Ebda, E820Type.Ram),
            new(BootLayout.Ebda, 0xA0000 - BootLayout.Ebda, E820Type.Reserved),
            new(BootLayout.BiosArea, BootLayout.OneMiB - BootLayout.BiosArea, E820Type.Reserved),
            new(BootLayout.OneMiB, acpi.Base - BootLayout.OneMiB, E820Type.Ram),
            new(acpi.Base, acpi.TablesSize, E820Type.Acpi),
            new(acpi.NvsBase, acpi.NvsSize, E820Type.Nvs),
        };
        if (acpi.End < memory.LowRamEnd)
        {
            entries.Add(new(acpi.End, memory.LowRamEnd - acpi.End, E820Type.Ram));
        }
        if (ecamSize != 0)
        {
            entries.Add(new(ecamBase, ecamSize, E820Type.Reserved));
        }
        if (memory.HighRamSize != 0)
        {
            entries.Add(new(GuestMemory.FourGiB, memory.HighRamSize, E820Type.Ram));
        }
        return new E820Map(entries);
    }

    /// <summary>Highest RAM end below 4 GiB (the top of the largest usable low range).</summary>
    public ulong LowRamTop => _entries.Where(e => e.Type == E820Type.Ram && e.End <= GuestMemory.FourGiB).Select(e => e.End).DefaultIfEmpty(0UL).Max();

    /// <summary>True when [address, address+length) lies wholly inside one RAM entry.</summary>
    public bool IsUsableRam(ulong address, ulong length) =>
        _entries.Any(e => e.Type == E820Type.Ram && address >= e.Address && address + length <= e.End && address + length >= address);
}
