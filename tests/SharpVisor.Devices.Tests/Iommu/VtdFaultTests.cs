using SharpVisor.Core;
using SharpVisor.Devices.Iommu;
using static SharpVisor.Devices.Tests.Iommu.VtdFixture;

namespace SharpVisor.Devices.Tests.Iommu;

public class VtdFaultTests
{
    const ushort Dev = 0x0010;

    static VtdFixture UnitWithFaultEvents(int records)
    {
        var f = new VtdFixture(new VtdOptions { FaultRecordingRegisters = records });
        f.SetContext(Dev, 1, 4);            // empty tables: every DMA faults (PTE not present)
        f.EnableTranslation();
        f.W32(Fedata, 0x0031);
        f.W32(Feaddr, 0xFEE0_0000);
        f.W32(Fectl, 0);                    // unmask
        return f;
    }

    [Fact]
    public void OverflowKeepsNRecordsSetsPfoAndInterruptsOnce()
    {
        const int n = 4, k = 3;
        using var f = UnitWithFaultEvents(n);
        var dma = f.Unit.DmaSpaceFor(Dev);
        for (int i = 0; i < n + k; i++)
        {
            Assert.Equal(DmaStatus.Blocked, dma.Write((ulong)(i + 1) << 12, [1]));  // distinct pages: no compression
        }
        for (int i = 0; i < n; i++)
        {
            var (low, high) = f.FaultRecord(i);
            Assert.True(F(high));
            Assert.Equal((ulong)(i + 1) << 12, low);
        }
        uint fsts = f.R32(Fsts);
        Assert.Equal(1u, fsts & 1);                          // PFO
        Assert.Equal(2u, fsts & 2);                          // PPF
        Assert.Equal(0u, (fsts >> 8) & 0xFF);                // FRI: first pending fault in record 0
        var msg = Assert.Single(f.Events.Messages);
        Assert.Equal((0xFEE0_0000UL, 0x31u), (msg.Address, msg.Data));
        Assert.Equal(n, f.Unit.Counters.FaultsRecorded.Value);
        Assert.Equal(k, f.Unit.Counters.FaultsOverflowed.Value);

        // Software (Linux dmar_fault) clears every F bit, then PFO: logging resumes with a new event.
        for (int i = 0; i < n; i++) f.ClearFault(i);
        Assert.Equal(1u, f.R32(Fsts));                        // PPF follows the F bits; PFO still set
        f.W32(Fsts, 1);
        Assert.Equal(0u, f.R32(Fsts));
        Assert.Equal(DmaStatus.Blocked, dma.Write(0x40_0000, [1]));
        Assert.Equal(2, f.Events.Messages.Count);
        Assert.Equal(0x40_0000UL, f.FaultRecord(0).Low);     // records are used circularly: index n % n
        Assert.True(F(f.FaultRecord(0).High));
    }

    [Fact]
    public void WhileAFaultIsPendingNoFurtherEventIsRaised()
    {
        using var f = UnitWithFaultEvents(8);
        var dma = f.Unit.DmaSpaceFor(Dev);
        dma.Write(0x1000, [1]);
        dma.Write(0x2000, [1]);
        Assert.Single(f.Events.Messages);
        Assert.Equal(2, f.Unit.Counters.FaultsRecorded.Value);
        f.ClearFault(0);
        f.ClearFault(1);
        dma.Write(0x3000, [1]);
        Assert.Equal(2, f.Events.Messages.Count);
        Assert.Equal(2u, (f.R32(Fsts) >> 8) & 0xFF);          // FRI points at the new first pending record
    }

    [Fact]
    public void RepeatedFaultsFromOneSourceAreCompressed()
    {
        using var f = UnitWithFaultEvents(4);
        var dma = f.Unit.DmaSpaceFor(Dev);
        for (int i = 0; i < 10; i++)
        {
            dma.Write(0x1000, [1]);
        }
        Assert.Equal(1, f.Unit.Counters.FaultsRecorded.Value);
        Assert.Equal(9, f.Unit.Counters.FaultsCompressed.Value);
        Assert.False(F(f.FaultRecord(1).High));
        Assert.Equal(0u, f.R32(Fsts) & 1);
        // Once software cleared it, the same fault is new again.
        f.ClearFault(0);
        dma.Write(0x1000, [1]);
        Assert.Equal(2, f.Unit.Counters.FaultsRecorded.Value);
    }

    [Fact]
    public void MaskedFaultEventStaysPendingUntilUnmasked()
    {
        using var f = UnitWithFaultEvents(2);
        f.W32(Fectl, 1u << 31);                               // IM
        f.Unit.DmaSpaceFor(Dev).Write(0x1000, [1]);
        Assert.Empty(f.Events.Messages);
        Assert.Equal((1u << 31) | (1u << 30), f.R32(Fectl));   // IP
        f.W32(Fectl, 0);
        Assert.Single(f.Events.Messages);
        Assert.Equal(0u, f.R32(Fectl));
    }

    [Fact]
    public void ServicingTheFaultWhileMaskedDropsThePendingEvent()
    {
        using var f = UnitWithFaultEvents(2);
        f.W32(Fectl, 1u << 31);
        f.Unit.DmaSpaceFor(Dev).Write(0x1000, [1]);
        f.ClearFault(0);                                      // no status left: IP clears (11.4.9.3)
        Assert.Equal(1u << 31, f.R32(Fectl));
        f.W32(Fectl, 0);
        Assert.Empty(f.Events.Messages);
    }

    [Fact]
    public void FaultRecordsReadAsLinuxReadsThem()
    {
        using var f = UnitWithFaultEvents(2);
        f.Unit.DmaSpaceFor(0x0318).Read(0x5_6789_A000, new byte[4]);   // 03:03.0, beyond nothing: root not present
        int fro = f.Fro;
        // Linux dmar_fault: readl(+12) has F (bit 31), type (bit 30), reason (7:0); readl(+8) the source id; readq(+0) the address.
        uint top = f.R32(fro + 12);
        Assert.Equal(1u, top >> 31);
        Assert.Equal(1u, (top >> 30) & 1);
        Assert.Equal((uint)VtdFaultReason.RootEntryNotPresent, top & 0xFF);
        Assert.Equal(0x0318u, f.R32(fro + 8) & 0xFFFF);
        Assert.Equal(0x5_6789_A000UL, f.R64(fro));
        // Only F is writable: writing other bits changes nothing.
        f.W32(fro + 8, 0);
        f.W64(fro, 0);
        Assert.Equal(0x0318u, f.R32(fro + 8) & 0xFFFF);
        Assert.Equal(0x5_6789_A000UL, f.R64(fro));
    }
}
