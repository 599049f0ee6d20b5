using System.Buffers.Binary;
using System.Text;
using SharpVisor.Core;
using SharpVisor.Machine.Acpi;
using SharpVisor.Machine.Boot;

namespace SharpVisor.Machine.Tests.Acpi;

public sealed class AcpiTablesTests
{
    /// <summary>A minimal DMAR-shaped table (header + host address width + flags + reserved), checksum left 0.</summary>
    internal static byte[] FakeDmar()
    {
        var t = new byte[48];
        Encoding.ASCII.GetBytes("DMAR", t);
        BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(4), 48);
        t[8] = 1;
        Encoding.ASCII.GetBytes("SHRPVSSHARPVSR", t.AsSpan(10));
        t[36] = 38; // host address width - 1
        return t;
    }

    static byte[] Read(GuestMemory memory, ulong gpa, int length)
    {
        var b = new byte[length];
        Assert.True(memory.TryRead(gpa, b), $"0x{gpa:x}+{length} is not RAM");
        return b;
    }

    static byte[] ReadTable(GuestMemory memory, ulong gpa) => Read(memory, gpa, (int)memory.ReadU32(gpa + 4));

    static byte Sum(byte[] b) => AcpiTables.Sum(b);

    [Fact]
    public void RsdpIsValidAtTheReportedAddressAndInTheBiosArea()
    {
        var (memory, _, tables) = AcpiTestMachine.Build();
        using var _m = memory;
        foreach (ulong at in new[] { tables.RsdpAddress, AcpiTableSet.BiosRsdpCopy })
        {
            byte[] rsdp = Read(memory, at, 36);
            Assert.Equal("RSD PTR ", Encoding.ASCII.GetString(rsdp, 0, 8));
            Assert.Equal(0, Sum(rsdp[..20]));   // ACPI 1.0 checksum
            Assert.Equal(0, Sum(rsdp));         // extended checksum
            Assert.Equal(2, rsdp[15]);
            Assert.Equal(36u, BinaryPrimitives.ReadUInt32LittleEndian(rsdp.AsSpan(20)));
            Assert.Equal(0u, at % 16); // Linux scans on 16-byte boundaries
        }
        // Linux's legacy scan covers 0xE0000-0xFFFFF (drivers/acpi/acpica/tbxfroot.c).
        Assert.InRange(AcpiTableSet.BiosRsdpCopy, 0xE0000UL, 0xFFFFFUL - 36);
    }

    [Fact]
    public void XsdtAndRsdtListEveryTableAndEveryChecksumIsZero()
    {
        var (memory, _, tables) = AcpiTestMachine.Build(extra: [FakeDmar()]);
        using var _m = memory;
        byte[] rsdp = Read(memory, tables.RsdpAddress, 36);
        byte[] xsdt = ReadTable(memory, BinaryPrimitives.ReadUInt64LittleEndian(rsdp.AsSpan(24)));
        byte[] rsdt = ReadTable(memory, BinaryPrimitives.ReadUInt32LittleEndian(rsdp.AsSpan(16)));
        Assert.Equal("XSDT", Encoding.ASCII.GetString(xsdt, 0, 4));
        Assert.Equal("RSDT", Encoding.ASCII.GetString(rsdt, 0, 4));
        Assert.Equal(0, Sum(xsdt));
        Assert.Equal(0, Sum(rsdt));
        var signatures = new List<string>();
        for (int i = 36; i < xsdt.Length; i += 8)
        {
            ulong address = BinaryPrimitives.ReadUInt64LittleEndian(xsdt.AsSpan(i));
            Assert.Equal((uint)address, BinaryPrimitives.ReadUInt32LittleEndian(rsdt.AsSpan(36 + (i - 36) / 2)));
            byte[] table = ReadTable(memory, address);
            Assert.Equal(0, Sum(table));
            Assert.Equal("SHRPVS", Encoding.ASCII.GetString(table, 10, 6));
            signatures.Add(Encoding.ASCII.GetString(table, 0, 4));
        }
        Assert.Equal(["APIC", "DMAR", "FACP", "HPET", "MCFG"], signatures.Order());
    }

    [Fact]
    public void FadtDescribesTheIch9PmBlockResetRegisterAndDsdt()
    {
        var (memory, _, tables) = AcpiTestMachine.Build();
        using var _m = memory;
        byte[] f = ReadTable(memory, tables.TableAddresses["FACP"]);
        var s = f.AsSpan();
        Assert.Equal(276, f.Length);
        Assert.Equal(6, f[8]);
        uint U32(int o) => BinaryPrimitives.ReadUInt32LittleEndian(f.AsSpan(o));
        ulong U64(int o) => BinaryPrimitives.ReadUInt64LittleEndian(f.AsSpan(o));
        Assert.Equal(9, BinaryPrimitives.ReadUInt16LittleEndian(s[46..]));   // SCI_INT
        Assert.Equal(0u, U32(48));                                           // no SMI_CMD: already in ACPI mode
        Assert.Equal(0x600u, U32(56));                                       // PM1a_EVT_BLK
        Assert.Equal(0x604u, U32(64));                                       // PM1a_CNT_BLK
        Assert.Equal(0x608u, U32(76));                                       // PM_TMR_BLK
        Assert.Equal(0x620u, U32(80));                                       // GPE0_BLK
        Assert.Equal([4, 2, 0, 4, 16], f[88..93]);
        Assert.Equal(0x32, f[108]);                                          // CENTURY
        Assert.Equal(0x6, BinaryPrimitives.ReadUInt16LittleEndian(s[109..])); // 8042 + VGA not present
        uint flags = U32(112);
        Assert.NotEqual(0u, flags & (1 << 0));   // WBINVD
        Assert.NotEqual(0u, flags & (1 << 2));   // PROC_C1
        Assert.NotEqual(0u, flags & (1 << 5));   // SLP_BUTTON
        Assert.NotEqual(0u, flags & (1 << 10));  // RESET_REG_SUP
        Assert.Equal(0u, flags & (1 << 20));     // not HW_REDUCED_ACPI: Linux must use the PM1 blocks
        Assert.Equal(0u, flags & (1 << 8));      // ICH9's PM timer is 24-bit
        // RESET_REG: system I/O, 8 bits, port 0xCF9; RESET_VALUE 6.
        Assert.Equal(1, f[116]);
        Assert.Equal(8, f[117]);
        Assert.Equal(0xCF9UL, U64(120));
        Assert.Equal(6, f[128]);
        Assert.Equal(tables.TableAddresses["DSDT"], U64(140));              // X_DSDT
        Assert.Equal((uint)tables.TableAddresses["DSDT"], U32(40));
        Assert.Equal(tables.TableAddresses["FACS"], U64(132));              // X_FIRMWARE_CTRL
        // X_PM1a_CNT_BLK and X_PM_TMR_BLK as I/O GAS at the same ports.
        Assert.Equal(1, f[172]);
        Assert.Equal(0x604UL, U64(176));
        Assert.Equal(1, f[208]);
        Assert.Equal(32, f[209]);
        Assert.Equal(0x608UL, U64(212));
    }

    [Fact]
    public void FacsIsIn64ByteAlignedNvsMemory()
    {
        var (memory, _, tables) = AcpiTestMachine.Build();
        using var _m = memory;
        ulong facs = tables.TableAddresses["FACS"];
        Assert.Equal(0UL, facs % 64);
        var e820 = E820Map.ForMachine(memory, tables.Region);
        Assert.Contains(e820.Entries, e => e.Type == E820Type.Nvs && facs >= e.Address && facs + 64 <= e.End);
        Assert.Equal("FACS", Encoding.ASCII.GetString(Read(memory, facs, 4)));
        Assert.Equal(64u, memory.ReadU32(facs + 4));
    }

    [Fact]
    public void AllTablesLieInTheE820AcpiRegion()
    {
        var (memory, _, tables) = AcpiTestMachine.Build(extra: [FakeDmar()]);
        using var _m = memory;
        var acpi = E820Map.ForMachine(memory, tables.Region).Entries.Single(e => e.Type == E820Type.Acpi);
        foreach (var (signature, address) in tables.TableAddresses.Where(kv => kv.Key != "FACS"))
        {
            Assert.True(address >= acpi.Address && address + (ulong)tables.Table(signature).Length <= acpi.End, signature);
        }
    }

    static List<(byte Type, byte[] Entry)> MadtEntries(byte[] madt)
    {
        var list = new List<(byte, byte[])>();
        for (int i = 44; i < madt.Length; i += madt[i + 1])
        {
            Assert.True(madt[i + 1] >= 2);
            list.Add((madt[i], madt[i..(i + madt[i + 1])]));
        }
        return list;
    }

    [Fact]
    public void MadtHasAnEnabledLapicPerCpuTheIoApicOverridesAndNmi()
    {
        var (memory, d, tables) = AcpiTestMachine.Build(cpus: 4);
        using var _m = memory;
        byte[] madt = ReadTable(memory, tables.TableAddresses["APIC"]);
        Assert.Equal(0xFEE00000u, BinaryPrimitives.ReadUInt32LittleEndian(madt.AsSpan(36)));
        Assert.Equal(1u, BinaryPrimitives.ReadUInt32LittleEndian(madt.AsSpan(40)) & 1); // PCAT_COMPAT
        var entries = MadtEntries(madt);
        var lapics = entries.Where(e => e.Type == 0).Select(e => e.Entry).ToList();
        Assert.Equal([0, 1, 2, 3], lapics.Select(e => (int)e[3]));
        Assert.All(lapics, e => Assert.Equal(1u, BinaryPrimitives.ReadUInt32LittleEndian(e.AsSpan(4)) & 1));
        var ioapic = Assert.Single(entries, e => e.Type == 1).Entry;
        Assert.Equal(d.IoApicAddress, BinaryPrimitives.ReadUInt32LittleEndian(ioapic.AsSpan(4)));
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32LittleEndian(ioapic.AsSpan(8)));
        var overrides = entries.Where(e => e.Type == 2).Select(e => e.Entry).ToDictionary(e => e[3]);
        Assert.Equal(2u, BinaryPrimitives.ReadUInt32LittleEndian(overrides[0].AsSpan(4)));      // IRQ0 -> GSI2
        Assert.Equal(0x4, BinaryPrimitives.ReadUInt16LittleEndian(overrides[0].AsSpan(8)) & 0xC); // edge
        Assert.Equal(9u, BinaryPrimitives.ReadUInt32LittleEndian(overrides[9].AsSpan(4)));
        Assert.Equal(0xD, BinaryPrimitives.ReadUInt16LittleEndian(overrides[9].AsSpan(8)));     // level, active high
        var nmi = Assert.Single(entries, e => e.Type == 4).Entry;
        Assert.Equal(0xFF, nmi[2]);
        Assert.Equal(1, nmi[5]); // LINT1
    }

    [Fact]
    public void MadtUsesX2ApicEntriesForIdsOf255AndAbove()
    {
        using var memory = new GuestMemory(64UL << 20);
        var d = AcpiMachineDescription.ForMachine(memory, 2) with { ApicIds = [0, 300] };
        var tables = AcpiTables.Build(d, AcpiRegion.AtTopOfLowRam(memory));
        var entries = MadtEntries(tables.Table("APIC"));
        Assert.Single(entries, e => e.Type == 0);
        var x2 = Assert.Single(entries, e => e.Type == 9).Entry;
        Assert.Equal(300u, BinaryPrimitives.ReadUInt32LittleEndian(x2.AsSpan(4)));
        Assert.Equal(1u, BinaryPrimitives.ReadUInt32LittleEndian(x2.AsSpan(12))); // UID
        Assert.Single(entries, e => e.Type == 0x0A);                                // x2APIC NMI
    }

    [Fact]
    public void McfgAndHpetDescribeTheirWindows()
    {
        var (memory, d, tables) = AcpiTestMachine.Build();
        using var _m = memory;
        byte[] mcfg = tables.Table("MCFG");
        Assert.Equal(60, mcfg.Length);
        Assert.Equal(d.EcamBase, BinaryPrimitives.ReadUInt64LittleEndian(mcfg.AsSpan(44)));
        Assert.Equal(0, mcfg[54]);
        Assert.Equal(255, mcfg[55]);
        byte[] hpet = tables.Table("HPET");
        Assert.Equal(56, hpet.Length);
        Assert.Equal(0x8086A201u, BinaryPrimitives.ReadUInt32LittleEndian(hpet.AsSpan(36)));
        Assert.Equal(0, hpet[40]); // system memory
        Assert.Equal(0xFED00000UL, BinaryPrimitives.ReadUInt64LittleEndian(hpet.AsSpan(44)));
    }

    [Fact]
    public void NoHpetMeansNoHpetTable()
    {
        using var memory = new GuestMemory(64UL << 20);
        var d = AcpiMachineDescription.ForMachine(memory, 1) with { HpetAddress = null };
        var tables = AcpiTables.Build(d, AcpiRegion.AtTopOfLowRam(memory));
        Assert.False(tables.TableAddresses.ContainsKey("HPET"));
        Assert.Equal(-1, tables.Table("DSDT").AsSpan().IndexOf(Aml.EisaId("PNP0103")));
        Assert.True(tables.Table("DSDT").AsSpan().IndexOf(Aml.EisaId("PNP0501")) > 0);
    }

    [Fact]
    public void DsdtHasS5PackageWithSleepTypeZero()
    {
        var (memory, _, tables) = AcpiTestMachine.Build();
        using var _m = memory;
        byte[] dsdt = tables.Table("DSDT");
        // Name(\_S5, Package(4){0,0,0,0}): Linux's acpi_enter_sleep_state_prep reads SLP_TYPa from it.
        byte[] s5 = [0x08, 0x5C, .. "_S5_"u8, 0x12, 0x06, 0x04, 0, 0, 0, 0];
        Assert.True(dsdt.AsSpan().IndexOf(s5) > 0);
        Assert.Equal(2, dsdt[8]); // revision 2: 64-bit integers (the QWord window)
    }

    [Fact]
    public void PciRootCrsCoversIoAndBothMmioWindows()
    {
        var (memory, d, tables) = AcpiTestMachine.Build();
        using var _m = memory;
        byte[] dsdt = tables.Table("DSDT");
        byte[] io1 = new ResourceTemplate().WordWindow(AddressSpaceType.Io, 0, 0xCF7).ToBytes()[..^2];
        byte[] io2 = new ResourceTemplate().WordWindow(AddressSpaceType.Io, 0xD00, 0xFFFF).ToBytes()[..^2];
        byte[] mem32 = new ResourceTemplate().DWordWindow(AddressSpaceType.Memory, d.Pci32WindowBase, d.Pci32WindowLimit).ToBytes()[..^2];
        byte[] mem64 = new ResourceTemplate().QWordWindow(AddressSpaceType.Memory, d.Pci64WindowBase, d.Pci64WindowBase + d.Pci64WindowSize - 1).ToBytes()[..^2];
        foreach (byte[] descriptor in new[] { io1, io2, mem32, mem64 })
        {
            Assert.True(dsdt.AsSpan().IndexOf(descriptor) > 0);
        }
        // The 32-bit window lies between the ECAM window and the IOAPIC; the 64-bit one above RAM.
        Assert.True(d.Pci32WindowBase >= d.EcamBase + d.EcamSize);
        Assert.True(d.Pci32WindowLimit < d.IoApicAddress);
        Assert.True(d.Pci64WindowBase >= Math.Max(GuestMemory.FourGiB, memory.HighRamEnd));
    }

    [Fact]
    public void ExtraTableChecksumIsFixedAndBadExtraTablesAreRejected()
    {
        var (memory, _, tables) = AcpiTestMachine.Build(extra: [FakeDmar()]);
        using var _m = memory;
        Assert.Equal(0, Sum(tables.Table("DMAR")));
        byte[] bad = FakeDmar();
        bad[4] = 47; // length field disagrees with the size
        using var m2 = new GuestMemory(64UL << 20);
        var d = AcpiMachineDescription.ForMachine(m2, 1) with { ExtraTables = [bad] };
        Assert.Throws<ArgumentException>(() => AcpiTables.Build(d, AcpiRegion.AtTopOfLowRam(m2)));
    }

    [Fact]
    public void TablesTooBigForTheRegionAreAUserError()
    {
        using var memory = new GuestMemory(64UL << 20);
        var d = AcpiMachineDescription.ForMachine(memory, 1) with { ExtraTables = [BigTable(0x20000)] };
        Assert.Throws<UserErrorException>(() => AcpiTables.Build(d, AcpiRegion.AtTopOfLowRam(memory)));
    }

    static byte[] BigTable(int size)
    {
        var t = new byte[size];
        Encoding.ASCII.GetBytes("SSDT", t);
        BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(4), (uint)size);
        return t;
    }
}
