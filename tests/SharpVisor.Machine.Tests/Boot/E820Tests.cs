using SharpVisor.Core;
using SharpVisor.Machine.Boot;

namespace SharpVisor.Machine.Tests.Boot;

public sealed class E820Tests
{
    const ulong EcamBase = 0xB000_0000, EcamSize = 0x1000_0000;

    static E820Map Map(GuestMemory memory) => E820Map.ForMachine(memory, AcpiRegion.AtTopOfLowRam(memory), EcamBase, EcamSize);

    [Fact]
    public void SmallMachineHasTheCustomaryLowLayout()
    {
        using var memory = new GuestMemory(256UL << 20);
        var acpi = AcpiRegion.AtTopOfLowRam(memory);
        var e = Map(memory).Entries;
        Assert.Equal(new E820Entry(0, 0x9FC00, E820Type.Ram), e[0]);
        Assert.Equal(new E820Entry(0x9FC00, 0x400, E820Type.Reserved), e[1]);       // EBDA
        Assert.Equal(new E820Entry(0xE0000, 0x20000, E820Type.Reserved), e[2]);     // BIOS area (RSDP copy)
        Assert.Equal(new E820Entry(0x100000, acpi.Base - 0x100000, E820Type.Ram), e[3]);
        Assert.Equal(new E820Entry(acpi.Base, acpi.TablesSize, E820Type.Acpi), e[4]);
        Assert.Equal(new E820Entry(acpi.NvsBase, acpi.NvsSize, E820Type.Nvs), e[5]);
        Assert.Equal(256UL << 20, e[5].End);                                          // the region ends low RAM
        Assert.Equal(new E820Entry(EcamBase, EcamSize, E820Type.Reserved), e[6]);
        Assert.Equal(7, e.Count);
    }

    [Fact]
    public void LargeMachineGetsRamAbove4GiB()
    {
        using var memory = new GuestMemory(4UL << 30);
        var e = Map(memory).Entries;
        var high = Assert.Single(e, x => x.Address >= GuestMemory.FourGiB);
        Assert.Equal(new E820Entry(GuestMemory.FourGiB, (4UL << 30) - GuestMemory.LowRamWhenSplit, E820Type.Ram), high);
        // RAM never overlaps the PCI hole, ECAM or the MMIO area under 4 GiB.
        Assert.All(e.Where(x => x.Type == E820Type.Ram && x.Address < GuestMemory.FourGiB), x => Assert.True(x.End <= memory.LowRamEnd));
    }

    [Fact]
    public void EntriesAreSortedAndDisjoint()
    {
        using var memory = new GuestMemory(4UL << 30);
        var e = Map(memory).Entries;
        for (int i = 1; i < e.Count; i++)
        {
            Assert.True(e[i].Address >= e[i - 1].End);
        }
    }

    [Fact]
    public void OverlappingEntriesAreAVmmBug() =>
        Assert.Throws<InvalidOperationException>(() => new E820Map([new(0, 0x2000, E820Type.Ram), new(0x1000, 0x1000, E820Type.Reserved)]));

    [Fact]
    public void TinyRamCannotHoldTheAcpiTables()
    {
        using var memory = new GuestMemory(2UL << 20);
        Assert.Throws<UserErrorException>(() => AcpiRegion.AtTopOfLowRam(memory));
    }

    [Fact]
    public void UsableRamQueryRespectsEntryBounds()
    {
        using var memory = new GuestMemory(64UL << 20);
        var map = Map(memory);
        Assert.True(map.IsUsableRam(0x100000, 0x1000));
        Assert.False(map.IsUsableRam(0x9F000, 0x2000));      // runs into the EBDA
        Assert.False(map.IsUsableRam(AcpiRegion.AtTopOfLowRam(memory).Base, 1));
    }
}
