using SharpVisor.Devices.Pci;

namespace SharpVisor.Devices.Tests.Pci;

public sealed class PciBarTests
{
    /// <summary>
    /// Sizes a BAR the way Linux __pci_read_base does: save, write all ones, read, restore, and take
    /// the lowest set address bit as the size (for a 64-bit BAR, over both registers).
    /// </summary>
    static (uint Flags, ulong Size) SizeBar(PciTestRig rig, int device, int bar, bool is64)
    {
        int reg = PciConfig.Bar0 + 4 * bar;
        uint original = rig.EcamRead(0, device, 0, reg, 4);
        rig.EcamWrite(0, device, 0, reg, 4, 0xFFFF_FFFF);
        uint low = rig.EcamRead(0, device, 0, reg, 4);
        rig.EcamWrite(0, device, 0, reg, 4, original);
        ulong mask;
        uint flags;
        if ((low & 1) != 0)
        {
            flags = low & 0x3;
            mask = low & 0xFFFF_FFFC & 0xFFFF; // x86 decodes 16 I/O address bits (Linux IO_SPACE_LIMIT)
        }
        else
        {
            flags = low & 0xF;
            mask = low & 0xFFFF_FFF0;
        }
        if (is64)
        {
            uint originalHigh = rig.EcamRead(0, device, 0, reg + 4, 4);
            rig.EcamWrite(0, device, 0, reg + 4, 4, 0xFFFF_FFFF);
            mask |= (ulong)rig.EcamRead(0, device, 0, reg + 4, 4) << 32;
            rig.EcamWrite(0, device, 0, reg + 4, 4, originalHigh);
        }
        return (flags, mask & (~mask + 1));
    }

    [Fact]
    public void EveryBarKindSizesAndRestores()
    {
        using var rig = new PciTestRig();
        var f = new TestFunction();
        f.AddBar(0, PciBarKind.Io, 32);
        f.AddBar(1, PciBarKind.Memory32, 4096);
        f.AddBar(2, PciBarKind.Memory64, 8UL << 30, prefetchable: true); // above 4 GiB: the upper register sizes too
        f.AddBar(4, PciBarKind.Memory32, 16, prefetchable: true);
        rig.Bus.Add(f, 2, 0);

        Assert.Equal((0x1u, 32UL), SizeBar(rig, 2, 0, is64: false));
        Assert.Equal((0x0u, 4096UL), SizeBar(rig, 2, 1, is64: false));
        Assert.Equal((0xCu, 8UL << 30), SizeBar(rig, 2, 2, is64: true)); // type 10b + prefetchable
        Assert.Equal((0x8u, 16UL), SizeBar(rig, 2, 4, is64: false));
        // The original values came back (all zero here: unassigned).
        for (int reg = PciConfig.Bar0; reg < PciConfig.Bar0 + 24; reg += 4)
        {
            Assert.Equal(0u, rig.EcamRead(0, 2, 0, reg, 4) & ~0xFu);
        }
    }

    [Fact]
    public void UnimplementedBarsAndRomReadZeroEvenAfterWritingOnes()
    {
        using var rig = new PciTestRig();
        var f = new TestFunction();
        f.AddBar(0, PciBarKind.Memory32, 4096);
        rig.Bus.Add(f, 2, 0);
        foreach (int reg in new[] { 0x14, 0x18, 0x1C, 0x20, 0x24, PciConfig.ExpansionRom })
        {
            rig.EcamWrite(0, 2, 0, reg, 4, 0xFFFF_FFFF);
            Assert.Equal(0u, rig.EcamRead(0, 2, 0, reg, 4));
        }
    }

    [Fact]
    public void MemoryBarDecodesOnlyWithMemorySpaceEnabledAndFollowsMoves()
    {
        using var rig = new PciTestRig();
        var f = new TestFunction();
        f.AddBar(1, PciBarKind.Memory32, 4096);
        rig.Bus.Add(f, 2, 0);
        rig.EcamWrite(0, 2, 0, 0x14, 4, 0xC000_0000);
        Assert.False(rig.Memory.TryFindMmio(0xC000_0000, out _));
        Assert.Equal(0xFFFF_FFFFUL, rig.Memory.Read(0xC000_0010, 4));

        rig.EcamWrite(0, 2, 0, PciConfig.Command, 2, (uint)PciCommand.MemorySpace);
        Assert.Equal(0xA5A5_0010UL, rig.Memory.Read(0xC000_0010, 4));
        Assert.Equal((1, 0x10UL, 4, 0UL, false), f.Accesses[^1]);

        // Moving the BAR unmaps the old place and maps the new one.
        rig.EcamWrite(0, 2, 0, 0x14, 4, 0xC010_0000);
        Assert.False(rig.Memory.TryFindMmio(0xC000_0000, out _));
        rig.Memory.Write(0xC010_0008, 4, 0x55);
        Assert.Equal((1, 0x8UL, 4, 0x55UL, true), f.Accesses[^1]);

        // Disabling decode unmaps it; sizing (all ones) with decode on maps nothing bogus.
        rig.EcamWrite(0, 2, 0, PciConfig.Command, 2, 0);
        Assert.False(rig.Memory.TryFindMmio(0xC010_0000, out _));
        rig.EcamWrite(0, 2, 0, PciConfig.Command, 2, (uint)PciCommand.MemorySpace);
        rig.EcamWrite(0, 2, 0, 0x14, 4, 0xFFFF_FFFF);
        Assert.DoesNotContain(rig.Memory.Regions, r => r.Device.Name.Contains("test"));
    }

    [Fact]
    public void SixtyFourBitBarMapsAboveFourGiB()
    {
        using var rig = new PciTestRig();
        var f = new TestFunction();
        f.AddBar(2, PciBarKind.Memory64, 1 << 20, prefetchable: true);
        rig.Bus.Add(f, 2, 0);
        rig.EcamWrite(0, 2, 0, 0x18, 4, 0x0000_0000);
        rig.EcamWrite(0, 2, 0, 0x1C, 4, 0x0000_0080); // 0x80_0000_0000
        rig.EcamWrite(0, 2, 0, PciConfig.Command, 2, (uint)PciCommand.MemorySpace);
        Assert.True(rig.Memory.TryFindMmio(0x80_0000_0000, out var region));
        Assert.Equal(1UL << 20, region.Size);
        Assert.Equal(0xA5A5_0100UL, rig.Memory.Read(0x80_0000_0100, 4));
        // Beyond the physical address width: left unmapped.
        rig.EcamWrite(0, 2, 0, 0x1C, 4, 0xFFFF_0000);
        Assert.False(rig.Memory.TryFindMmio(0x80_0000_0000, out _));
        Assert.DoesNotContain(rig.Memory.Regions, r => r.Device.Name.Contains("test"));
    }

    [Fact]
    public void IoBarRegistersPortsWithIoSpaceEnabled()
    {
        using var rig = new PciTestRig();
        var f = new TestFunction();
        f.AddBar(0, PciBarKind.Io, 32);
        rig.Bus.Add(f, 2, 0);
        rig.EcamWrite(0, 2, 0, 0x10, 4, 0xC040);
        Assert.Null(rig.Ports.DeviceAt(0xC040));
        rig.EcamWrite(0, 2, 0, PciConfig.Command, 2, (uint)PciCommand.IoSpace);
        Assert.Equal(0xA5A5_0004u, rig.Ports.Read(0xC044, 4));
        Assert.Equal((0, 4UL, 4, 0UL, false), f.Accesses[^1]);
        Assert.Null(rig.Ports.DeviceAt(0xC060));
        rig.EcamWrite(0, 2, 0, PciConfig.Command, 2, 0);
        Assert.Null(rig.Ports.DeviceAt(0xC040));
    }

    [Fact]
    public void OverlappingBarsAreRefusedWithoutExceptionAndMapOnceFreed()
    {
        using var rig = new PciTestRig();
        var a = new TestFunction();
        a.AddBar(0, PciBarKind.Memory32, 4096);
        var b = new TestFunction();
        b.AddBar(0, PciBarKind.Memory32, 4096);
        rig.Bus.Add(a, 2, 0);
        rig.Bus.Add(b, 3, 0);
        rig.EcamWrite(0, 2, 0, 0x10, 4, 0xC000_0000);
        rig.EcamWrite(0, 2, 0, PciConfig.Command, 2, (uint)PciCommand.MemorySpace);
        rig.EcamWrite(0, 3, 0, 0x10, 4, 0xC000_0000);
        rig.EcamWrite(0, 3, 0, PciConfig.Command, 2, (uint)PciCommand.MemorySpace);
        Assert.Equal(1, rig.Bus.BarConflicts.Value);
        Assert.True(rig.Memory.TryFindMmio(0xC000_0000, out var owner));
        Assert.StartsWith("00:02.0", owner.Device.Name);

        // Further config writes do not re-count the same conflict.
        rig.EcamWrite(0, 3, 0, PciConfig.Command, 2, (uint)PciCommand.MemorySpace);
        Assert.Equal(1, rig.Bus.BarConflicts.Value);

        // When the first BAR moves away, the second one gets the place.
        rig.EcamWrite(0, 2, 0, 0x10, 4, 0xC000_1000);
        Assert.True(rig.Memory.TryFindMmio(0xC000_0000, out owner));
        Assert.StartsWith("00:03.0", owner.Device.Name);
        Assert.True(rig.Memory.TryFindMmio(0xC000_1000, out owner));
        Assert.StartsWith("00:02.0", owner.Device.Name);
    }

    [Fact]
    public void BarOverRamOrEcamIsRefused()
    {
        using var rig = new PciTestRig();
        var f = new TestFunction();
        f.AddBar(0, PciBarKind.Memory32, 4096);
        rig.Bus.Add(f, 2, 0);
        rig.EcamWrite(0, 2, 0, PciConfig.Command, 2, (uint)PciCommand.MemorySpace);
        rig.EcamWrite(0, 2, 0, 0x10, 4, 0x0010_0000); // guest RAM
        Assert.Equal(1, rig.Bus.BarConflicts.Value);
        rig.EcamWrite(0, 2, 0, 0x10, 4, 0xB000_0000); // the ECAM window itself
        Assert.Equal(2, rig.Bus.BarConflicts.Value);
        // Config space still works: the ECAM window was not displaced.
        Assert.Equal(0x29C0_8086u, rig.EcamRead(0, 0, 0, 0, 4));
    }

    [Fact]
    public void IoBarOverClaimedPortsIsRefused()
    {
        using var rig = new PciTestRig();
        var f = new TestFunction();
        f.AddBar(0, PciBarKind.Io, 16);
        rig.Bus.Add(f, 2, 0);
        rig.EcamWrite(0, 2, 0, 0x10, 4, 0xCF0); // covers 0xCF8 and 0xCFC
        rig.EcamWrite(0, 2, 0, PciConfig.Command, 2, (uint)PciCommand.IoSpace);
        Assert.Equal(1, rig.Bus.BarConflicts.Value);
        Assert.Equal(0x29C0_8086u, rig.Cf8Read(0, 0, 0, 0, 4));
    }

    [Fact]
    public void FirmwareAssignsAlignedNonOverlappingBarsAndEnablesDecode()
    {
        using var rig = new PciTestRig();
        var f = new TestFunction();
        f.AddBar(0, PciBarKind.Io, 64);
        f.AddBar(1, PciBarKind.Memory32, 4096);
        f.AddBar(2, PciBarKind.Memory64, 16 << 20, prefetchable: true);
        var g = new TestFunction();
        g.AddBar(0, PciBarKind.Io, 32);
        g.AddBar(2, PciBarKind.Memory64, 8UL << 30); // cannot fit the 32-bit hole
        rig.Bus.Add(f, 2, 0);
        rig.Bus.Add(g, 3, 0);
        rig.Bus.Add(new EduDevice(), 4, 0);

        var assigned = PciFirmware.AssignResources(rig.Bus, interruptLine: fn => (byte)(16 + (fn.RequesterId >> 3) % 4));
        Assert.Equal(6, assigned.Count);
        foreach (var a in assigned)
        {
            Assert.Equal(0UL, a.Address % a.Size);
            if (a.Kind == PciBarKind.Io)
            {
                Assert.InRange(a.Address, 0xC000UL, 0xFFFFUL - a.Size + 1);
                Assert.NotNull(rig.Ports.DeviceAt((ushort)a.Address));
            }
            else
            {
                bool inHole = a.Address >= 0xC000_0000 && a.Address + a.Size <= 0xFEC0_0000;
                Assert.True(inHole || (a.Kind == PciBarKind.Memory64 && a.Address >= 1UL << 32), $"0x{a.Address:x}");
                Assert.True(rig.Memory.TryFindMmio(a.Address, out var r) && r.Size == a.Size);
            }
            foreach (var other in assigned)
            {
                if (!ReferenceEquals(other.Function, a.Function) || other.Bar != a.Bar)
                {
                    bool sameSpace = (other.Kind == PciBarKind.Io) == (a.Kind == PciBarKind.Io);
                    Assert.False(sameSpace && a.Address < other.Address + other.Size && other.Address < a.Address + a.Size);
                }
            }
        }
        Assert.Equal(PciCommand.IoSpace | PciCommand.MemorySpace, f.Command);
        Assert.Equal(PciCommand.MemorySpace, rig.Bus.Find(4, 0)!.Command);
        Assert.Equal(PciCommand.None, rig.Bus.Find(0, 0)!.Command); // host bridge: no BARs
        Assert.False(f.BusMasterEnabled);
        Assert.Equal(16u + 4 % 4, rig.EcamRead(0, 4, 0, PciConfig.InterruptLine, 1));
        // Running it again changes nothing: everything is assigned.
        Assert.Empty(PciFirmware.AssignResources(rig.Bus));
    }

    [Fact]
    public void D3HotStopsDecodeAndD0RestoresItWithBarsIntact()
    {
        using var rig = new PciTestRig();
        var f = new TestFunction();
        f.AddBar(0, PciBarKind.Memory32, 4096);
        int pm = f.PowerManagement();
        rig.Bus.Add(f, 2, 0);
        ulong bar = PciFirmware.AssignResources(rig.Bus).Single().Address;
        Assert.Equal(0x3u, rig.EcamRead(0, 2, 0, pm + 2, 2) & 7);   // PM spec version 1.2
        Assert.Equal(0x8u, rig.EcamRead(0, 2, 0, pm + 4, 2));       // D0, No_Soft_Reset

        rig.EcamWrite(0, 2, 0, pm + 4, 2, 3);                        // D3hot
        Assert.True(f.InD3Hot);
        Assert.False(rig.Memory.TryFindMmio(bar, out _));
        Assert.Equal(0x0001_1B36u, rig.EcamRead(0, 2, 0, 0, 4));   // config space still answers

        rig.EcamWrite(0, 2, 0, pm + 4, 2, 1);                        // D1 is unsupported: discarded
        Assert.True(f.InD3Hot);
        rig.EcamWrite(0, 2, 0, pm + 4, 2, 0);                        // back to D0
        Assert.False(f.InD3Hot);
        Assert.Equal(0xA5A5_0000UL, rig.Memory.Read(bar, 4));        // same BAR, decoding again
    }
}
