using SharpVisor.Core;
using SharpVisor.Devices.Iommu;
using static SharpVisor.Devices.Tests.Iommu.VtdFixture;

namespace SharpVisor.Devices.Tests.Iommu;

public class VtdTranslationTests
{
    const ushort Dev = 0x0010;      // 00:02.0
    const ushort Domain = 5;

    [Theory]
    [InlineData(3)]
    [InlineData(4)]
    [InlineData(5)]
    public void MappedDmaReachesTheTranslatedPage(int levels)
    {
        using var f = new VtdFixture();
        ulong slpt = f.SetContext(Dev, Domain, levels);
        f.Map(slpt, levels, 0x12_3456_7000, 0x50_0000);
        f.EnableTranslation();
        var dma = f.Unit.DmaSpaceFor(Dev);
        Assert.Equal(DmaStatus.Ok, dma.Write(0x12_3456_7010, [1, 2, 3, 4]));
        Assert.Equal(new byte[] { 1, 2, 3, 4 }, f.ReadRam(0x50_0010, 4));
        var back = new byte[4];
        Assert.Equal(DmaStatus.Ok, dma.Read(0x12_3456_7010, back));
        Assert.Equal(new byte[] { 1, 2, 3, 4 }, back);
        Assert.Equal(levels, f.Unit.Counters.PageWalkReads.Value);
        Assert.Equal(1, f.Unit.Counters.IotlbHits4K.Value); // the read hit the IOTLB entry the write filled
    }

    [Fact]
    public void SuperpagesTranslateWithinTheLargePage()
    {
        using var f = new VtdFixture();
        ulong slpt = f.SetContext(Dev, Domain, 4);
        f.Map(slpt, 4, 0x4000_0000, 0x0, leafLevel: 3);           // 1 GiB → 0
        f.Map(slpt, 4, 0x8000_0000, 0x20_0000, leafLevel: 2);     // 2 MiB → 2 MiB
        f.EnableTranslation();
        var dma = f.Unit.DmaSpaceFor(Dev);
        Assert.Equal(DmaStatus.Ok, dma.Write(0x4000_0000 + 0x123_4560, [7]));
        Assert.Equal(7, f.ReadRam(0x123_4560, 1)[0]);
        Assert.Equal(DmaStatus.Ok, dma.Write(0x8000_0000 + 0x1F_F000, [9]));
        Assert.Equal(9, f.ReadRam(0x3F_F000, 1)[0]);
        Assert.Equal(DmaStatus.Ok, dma.Write(0x4000_0000 + 0x200_0000, [8]));
        Assert.Equal(1, f.Unit.Counters.IotlbHits1G.Value);
    }

    [Fact]
    public void UnsupportedSuperpageIsAReservedFieldFault()
    {
        using var f = new VtdFixture(new VtdOptions { Superpages1G = false });
        ulong slpt = f.SetContext(Dev, Domain, 4);
        f.Map(slpt, 4, 0x4000_0000, 0x0, leafLevel: 3);
        f.EnableTranslation();
        Assert.Equal(DmaStatus.Blocked, f.Unit.DmaSpaceFor(Dev).Write(0x4000_0000, [1]));
        Assert.Equal((int)VtdFaultReason.PagingEntryReserved, Reason(f.FaultRecord(0).High));
    }

    [Fact]
    public void PassThroughAndTranslationOffAreIdentity()
    {
        using var f = new VtdFixture();
        var dma = f.Unit.DmaSpaceFor(Dev);
        Assert.Equal(DmaStatus.Ok, dma.Write(0x60_0000, [5]));       // TE=0
        Assert.Equal(5, f.ReadRam(0x60_0000, 1)[0]);
        f.SetContext(Dev, Domain, 4, tt: 2);
        f.EnableTranslation();
        Assert.Equal(DmaStatus.Ok, dma.Write(0x60_0001, [6]));
        Assert.Equal(6, f.ReadRam(0x60_0001, 1)[0]);
        Assert.Equal(1, f.Unit.Counters.PassThroughDma.Value);
        Assert.Equal(DmaStatus.NotRam, dma.Write(0xF000_0000, [6]));  // identity to a hole
    }

    [Fact]
    public void PassThroughIsInvalidWithoutEcapPt()
    {
        using var f = new VtdFixture(new VtdOptions { PassThrough = false });
        f.SetContext(Dev, Domain, 4, tt: 2);
        f.EnableTranslation();
        Assert.Equal(DmaStatus.Blocked, f.Unit.DmaSpaceFor(Dev).Write(0x60_0000, [6]));
        Assert.Equal((int)VtdFaultReason.ContextEntryInvalid, Reason(f.FaultRecord(0).High));
        Assert.Equal(0, f.ReadRam(0x60_0000, 1)[0]);
    }

    /// <summary>Every legacy fault reason, each on a fresh unit: the DMA is blocked, memory unchanged, the record right.</summary>
    [Theory]
    [InlineData(0x1)]
    [InlineData(0x2)]
    [InlineData(0x3)]
    [InlineData(0x4)]
    [InlineData(0x5)]
    [InlineData(0x6)]
    [InlineData(0x7)]
    [InlineData(0x8)]
    [InlineData(0x9)]
    [InlineData(0xA)]
    [InlineData(0xB)]
    [InlineData(0xC)]
    public void EachFaultReasonBlocksAndRecords(int expected)
    {
        using var f = new VtdFixture(new VtdOptions { SupportedAgaw = VtdAgaw.Levels3 | VtdAgaw.Levels4 });
        const ulong iova = 0x1000, target = 0x70_0000;
        bool write = expected != 0x6;
        ulong slpt = 0;
        ulong rootTable = RootTable;
        switch (expected)
        {
            case 0x1:
                break; // empty root table
            case 0x2:
                f.ContextTable(0);
                break;
            case 0x3:
                f.SetContext(Dev, Domain, levels: 5);   // AW=011b but SAGAW lacks 5 levels
                break;
            case 0x4:
                slpt = f.SetContext(Dev, Domain, 3);
                f.Map(slpt, 3, iova, target);
                break;
            case 0x5:
                slpt = f.SetContext(Dev, Domain, 4);
                f.Map(slpt, 4, iova, target, read: true, write: false);
                break;
            case 0x6:
                slpt = f.SetContext(Dev, Domain, 4);
                f.Map(slpt, 4, iova, target, read: false, write: true);
                break;
            case 0x7:
                f.SetContext(Dev, Domain, 4, slpt: 0x7000_0000); // SLPTPTR in no RAM (within HAW)
                break;
            case 0x8:
                rootTable = 0x70_0000_0000 & 0x7F_FFFF_F000; // RTADDR in no RAM
                break;
            case 0x9:
                f.Ram.WriteU64(RootTable, 0x7000_0000 | 1);  // context table in no RAM
                break;
            case 0xA:
                f.Ram.WriteU64(RootTable, f.AllocTable() | 1 | 0x10); // reserved bit 4
                break;
            case 0xB:
                f.WriteContextRaw(Dev, f.AllocTable() | 1 | 0x100, 2 | (Domain << 8));
                break;
            case 0xC:
                slpt = f.SetContext(Dev, Domain, 4);
                f.Map(slpt, 4, iova, 1UL << 45);   // output beyond the 39-bit HAW
                break;
        }
        f.EnableTranslation(rootTable);
        f.Fill(target, 16, 0xAA);
        var dma = f.Unit.DmaSpaceFor(Dev);
        ulong address = expected == 0x4 ? 1UL << 40 : iova;
        var status = write ? dma.Write(address, new byte[16]) : dma.Read(address, new byte[16]);
        Assert.Equal(DmaStatus.Blocked, status);
        Assert.All(f.ReadRam(target, 16), b => Assert.Equal(0xAA, b));
        var (low, high) = f.FaultRecord(0);
        Assert.True(F(high));
        Assert.Equal(expected, Reason(high));
        Assert.Equal(Dev, (ushort)high);
        Assert.Equal(write ? 0UL : 1UL, (high >> 62) & 1);   // T: 1 = read (Linux dma_frcd_type)
        Assert.Equal(address & ~0xFFFUL, low);
        Assert.Equal(1, f.Unit.Counters.FaultsByReason((VtdFaultReason)expected).Value);
        Assert.Equal(2u, f.R32(Fsts) & 2);                   // PPF
    }

    [Fact]
    public void PermissionsAreTheAndOfEveryLevel()
    {
        using var f = new VtdFixture();
        ulong slpt = f.SetContext(Dev, Domain, 4);
        f.Map(slpt, 4, 0x1000, 0x70_0000);
        // Make the PML4 entry read-only: the leaf allows writes but the path does not.
        f.Ram.WriteU64(slpt, f.Ram.ReadU64(slpt) & ~2UL);
        f.EnableTranslation();
        var dma = f.Unit.DmaSpaceFor(Dev);
        Assert.Equal(DmaStatus.Ok, dma.Read(0x1000, new byte[4]));
        Assert.Equal(DmaStatus.Blocked, dma.Write(0x1000, [1]));
        Assert.Equal((int)VtdFaultReason.WriteNotPermitted, Reason(f.FaultRecord(0).High));
    }

    [Fact]
    public void FaultProcessingDisableSuppressesQualifiedFaultsOnly()
    {
        using var f = new VtdFixture();
        f.SetContext(Dev, Domain, 4, fpd: true);           // empty tables: PTE not present (qualified)
        f.EnableTranslation();
        Assert.Equal(DmaStatus.Blocked, f.Unit.DmaSpaceFor(Dev).Write(0x1000, [1]));
        Assert.False(F(f.FaultRecord(0).High));
        Assert.Equal(0u, f.R32(Fsts));
        Assert.Equal(1, f.Unit.Counters.FaultsSuppressedByFpd.Value);
        // A root-entry fault happens before any context entry: not qualified, always recorded.
        Assert.Equal(DmaStatus.Blocked, f.Unit.DmaSpaceFor(0x0300).Write(0x1000, [1]));
        Assert.Equal((int)VtdFaultReason.RootEntryNotPresent, Reason(f.FaultRecord(0).High));
    }

    [Fact]
    public void CrossPageDmaIsTranslatedPageByPageAndAllOrNothing()
    {
        using var f = new VtdFixture();
        ulong slpt = f.SetContext(Dev, Domain, 4);
        f.Map(slpt, 4, 0x1000, 0x90_0000);
        f.Map(slpt, 4, 0x2000, 0x80_0000);   // discontiguous on purpose
        f.EnableTranslation();
        var dma = f.Unit.DmaSpaceFor(Dev);
        var data = Enumerable.Range(0, 64).Select(i => (byte)(i + 1)).ToArray();
        Assert.Equal(DmaStatus.Ok, dma.Write(0x1FE0, data));
        Assert.Equal(data[..32], f.ReadRam(0x90_0FE0, 32));
        Assert.Equal(data[32..], f.ReadRam(0x80_0000, 32));

        // The third page is unmapped: a write spanning pages 2 and 3 writes nothing at all.
        f.Fill(0x80_0FF0, 16, 0x55);
        Assert.Equal(DmaStatus.Blocked, dma.Write(0x2FF0, new byte[32]));
        Assert.All(f.ReadRam(0x80_0FF0, 16), b => Assert.Equal(0x55, b));
        Assert.Equal(0x3000UL, f.FaultRecord(0).Low);
    }

    [Fact]
    public void LargeDmaAcrossManyPages()
    {
        using var f = new VtdFixture();
        ulong slpt = f.SetContext(Dev, Domain, 4);
        for (ulong p = 0; p < 40; p++)
        {
            f.Map(slpt, 4, 0x10_0000 + p * 4096, 0x200_0000 + (39 - p) * 4096);  // reversed order
        }
        f.EnableTranslation();
        var data = new byte[40 * 4096];
        new Random(1).NextBytes(data);
        var dma = f.Unit.DmaSpaceFor(Dev);
        Assert.Equal(DmaStatus.Ok, dma.Write(0x10_0000, data));
        Assert.Equal(data[4096..8192], f.ReadRam(0x200_0000 + 38 * 4096, 4096));
        var back = new byte[data.Length];
        Assert.Equal(DmaStatus.Ok, dma.Read(0x10_0000, back));
        Assert.Equal(data, back);
    }

    [Fact]
    public void InterruptRangeWritesAreInterruptsAndReadsAreBlocked()
    {
        using var f = new VtdFixture();
        ulong slpt = f.SetContext(Dev, Domain, 4);
        f.Map(slpt, 4, 0xFEE0_0000, 0x70_0000);      // a mapping there must not turn it into DMA
        f.EnableTranslation();
        var dma = f.Unit.DmaSpaceFor(Dev);
        // Compatibility-format MSI, IR disabled: delivered as is (vector 0x41 to APIC 2).
        Assert.Equal(DmaStatus.Ok, dma.Write(0xFEE0_2000, BitConverter.GetBytes(0x41u)));
        var irq = Assert.Single(f.Apic.Delivered);
        Assert.Equal(0x41, irq.Vector);
        Assert.Equal(2u, irq.Destination);
        Assert.Equal(0, f.ReadRam(0x70_0000, 1)[0]);
        Assert.Equal(DmaStatus.Blocked, dma.Write(0xFEE0_0000, new byte[8]));
        Assert.Equal(DmaStatus.Blocked, dma.Read(0xFEE0_0000, new byte[4]));
        Assert.Equal((int)VtdFaultReason.ReadNotPermitted, Reason(f.FaultRecord(0).High));
    }

    [Fact]
    public void ProtectedMemoryRegionBlocksUntranslatedDma()
    {
        using var f = new VtdFixture(new VtdOptions { ProtectedMemoryRegions = true });
        f.W32(0x68, 0x0020_0000);     // PLMBASE 2 MiB
        f.W32(0x6C, 0x0020_0000);     // PLMLIMIT: region [2 MiB, 4 MiB)
        f.W32(0x64, 1u << 31);        // EPM
        Assert.Equal((1u << 31) | 1u, f.R32(0x64));   // PRS follows
        var dma = f.Unit.DmaSpaceFor(Dev);
        Assert.Equal(DmaStatus.Blocked, dma.Write(0x3F_FFF0, [1]));
        Assert.Equal(DmaStatus.Ok, dma.Write(0x40_0000, [1]));
        Assert.Equal(0, f.ReadRam(0x3F_FFF0, 1)[0]);
    }

    [Fact]
    public void WithTranslationOffNothingIsRecorded()
    {
        using var f = new VtdFixture();
        var dma = f.Unit.DmaSpaceFor(Dev);
        Assert.Equal(DmaStatus.NotRam, dma.Read(0xFEE0_0000, new byte[4]));
        Assert.Equal(DmaStatus.NotRam, dma.Write(0x7000_0000, new byte[4]));
        Assert.Equal(0u, f.R32(Fsts));
        Assert.Equal(0, f.Unit.Counters.FaultsRecorded.Value);
    }

    [Fact]
    public void FpdAlsoSuppressesInvalidContextProgramming()
    {
        using var f = new VtdFixture(new VtdOptions { SupportedAgaw = VtdAgaw.Levels4 });
        f.SetContext(Dev, Domain, levels: 3, fpd: true);   // AW not in SAGAW: reason 3, qualified
        f.EnableTranslation();
        Assert.Equal(DmaStatus.Blocked, f.Unit.DmaSpaceFor(Dev).Write(0x1000, [1]));
        Assert.Equal(0u, f.R32(Fsts));
        Assert.Equal(1, f.Unit.Counters.FaultsByReason(VtdFaultReason.ContextEntryInvalid).Value);
    }
}
