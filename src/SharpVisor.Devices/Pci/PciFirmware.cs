using SharpVisor.Core;

namespace SharpVisor.Devices.Pci;

/// <summary>Address windows firmware hands out BAR addresses from (the host bridge's _CRS must cover them).</summary>
public sealed record PciResourceWindows
{
    /// <summary>The 32-bit PCI hole: above the ECAM window, below the IOAPIC at 0xFEC00000.</summary>
    public ulong Memory32Base { get; init; } = 0xC000_0000;
    public ulong Memory32Limit { get; init; } = 0xFEC0_0000;
    /// <summary>64-bit BARs that do not fit the 32-bit hole go here (0 size: none).</summary>
    public ulong Memory64Base { get; init; } = 0x80_0000_0000;
    public ulong Memory64Limit { get; init; } = 0x100_0000_0000;
    /// <summary>I/O BARs from 0xC000 up, clear of the legacy ISA range (SeaBIOS does the same).</summary>
    public ushort IoBase { get; init; } = 0xC000;
    public int IoLimit { get; init; } = 0x1_0000;
}

/// <summary>One BAR placed by <see cref="PciFirmware.AssignResources"/>.</summary>
public readonly record struct PciBarAssignment(PciFunction Function, int Bar, PciBarKind Kind, ulong Address, ulong Size);

/// <summary>
/// What PC firmware does to PCI before the OS runs: give every BAR an address and enable decode.
/// </summary>
/// <remarks>
/// On a PC the BIOS (SeaBIOS on QEMU, pciinit.c) assigns BARs; Linux on x86 keeps those assignments
/// (pcibios_resource_survey claims them) and only assigns what firmware left unassigned, inside the
/// host bridge windows from ACPI _CRS. SharpVisor boots the kernel directly with no BIOS, so the VMM
/// has to do the BIOS's part: otherwise devices come up with decode off at address 0, early boot code
/// finds nothing, and everything hinges on Linux's reassignment path. Like SeaBIOS, memory BARs are
/// packed largest first (each aligned to its size) into the 32-bit hole, I/O BARs go from 0xC000,
/// and the Memory/IO Space enables are set; Bus Master stays off until a driver calls pci_set_master.
/// </remarks>
public static class PciFirmware
{
    /// <summary>Assigns every unassigned BAR of <paramref name="bus"/> and enables decode.</summary>
    /// <param name="interruptLine">Optional: the value to put in each function's Interrupt Line
    /// register (the GSI its INTx is routed to), as a BIOS does.</param>
    public static IReadOnlyList<PciBarAssignment> AssignResources(PciBus bus, PciResourceWindows? windows = null,
        Func<PciFunction, byte>? interruptLine = null)
    {
        windows ??= new PciResourceWindows();
        var requests = new List<(PciFunction Function, PciFunction.Bar Bar)>();
        foreach (var f in bus.Functions)
        {
            for (int i = 0; i < PciConfig.BarCount; i++)
            {
                var bar = f.GetBar(i);
                if (bar.Kind != PciBarKind.None && !bar.IsUpperHalf && CurrentAddress(f, bar) == 0)
                {
                    requests.Add((f, bar));
                }
            }
        }
        // Largest first keeps every BAR naturally aligned with no holes between same-size BARs.
        requests.Sort((a, b) => b.Bar.Size.CompareTo(a.Bar.Size));

        var taken = new List<(ulong Base, ulong End)>();
        foreach (var r in bus.Memory.Regions)
        {
            taken.Add((r.Base, r.End));
        }
        ulong memory32 = windows.Memory32Base;
        ulong memory64 = windows.Memory64Base;
        ulong io = windows.IoBase;
        var result = new List<PciBarAssignment>();
        foreach (var (f, bar) in requests)
        {
            ulong address;
            bool placed;
            if (bar.Kind == PciBarKind.Io)
            {
                placed = TryPlacePorts(bus, ref io, bar.Size, (ulong)windows.IoLimit, out address);
            }
            else
            {
                placed = TryPlace(taken, ref memory32, bar.Size, windows.Memory32Limit, out address);
                if (!placed && bar.Kind == PciBarKind.Memory64)
                {
                    placed = TryPlace(taken, ref memory64, bar.Size, windows.Memory64Limit, out address);
                }
            }
            if (!placed)
            {
                bus.Log.Warn("pci", $"firmware: no room for {f.Location} {f.Name} BAR{bar.Index} ({bar.Kind}, 0x{bar.Size:x} bytes); left unassigned");
                continue;
            }
            int offset = PciConfig.Bar0 + 4 * bar.Index;
            f.ConfigWrite(offset, 4, (uint)address);
            if (bar.Kind == PciBarKind.Memory64)
            {
                f.ConfigWrite(offset + 4, 4, (uint)(address >> 32));
            }
            result.Add(new PciBarAssignment(f, bar.Index, bar.Kind, address, bar.Size));
        }

        foreach (var f in bus.Functions)
        {
            var enable = PciCommand.None;
            for (int i = 0; i < PciConfig.BarCount; i++)
            {
                var kind = f.GetBar(i).Kind;
                enable |= kind == PciBarKind.Io ? PciCommand.IoSpace
                    : kind is PciBarKind.Memory32 or PciBarKind.Memory64 ? PciCommand.MemorySpace : PciCommand.None;
            }
            if (enable != PciCommand.None)
            {
                f.ConfigWrite(PciConfig.Command, 2, (uint)(f.Command | enable));
            }
            if (interruptLine is not null && f.InterruptPin != 0)
            {
                f.ConfigWrite(PciConfig.InterruptLine, 1, interruptLine(f));
            }
        }
        return result;
    }

    static ulong CurrentAddress(PciFunction f, PciFunction.Bar bar)
    {
        int offset = PciConfig.Bar0 + 4 * bar.Index;
        ulong low = f.ConfigRead(offset, 4) & (bar.Kind == PciBarKind.Io ? 0xFFFF_FFFCu : 0xFFFF_FFF0u);
        return bar.Kind == PciBarKind.Memory64 ? low | (ulong)f.ConfigRead(offset + 4, 4) << 32 : low;
    }

    static bool TryPlace(List<(ulong Base, ulong End)> taken, ref ulong cursor, ulong size, ulong limit, out ulong address)
    {
        address = AlignUp(cursor, size);
        while (address + size <= limit && address + size > address)
        {
            ulong candidate = address;
            var clash = taken.FirstOrDefault(t => candidate < t.End && t.Base < candidate + size);
            if (clash == default)
            {
                taken.Add((address, address + size));
                cursor = address + size;
                return true;
            }
            address = AlignUp(clash.End, size);
        }
        return false;
    }

    static bool TryPlacePorts(PciBus bus, ref ulong cursor, ulong size, ulong limit, out ulong address)
    {
        for (address = AlignUp(cursor, size); address + size <= limit; address += size)
        {
            bool free = true;
            for (ulong p = address; p < address + size && free; p++)
            {
                free = bus.Ports.DeviceAt((ushort)p) is null;
            }
            if (free)
            {
                cursor = address + size;
                return true;
            }
        }
        return false;
    }

    static ulong AlignUp(ulong value, ulong alignment) => (value + alignment - 1) & ~(alignment - 1);
}
