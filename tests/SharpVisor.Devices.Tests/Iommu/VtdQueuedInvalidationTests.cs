using SharpVisor.Core;
using SharpVisor.Devices.Iommu;
using static SharpVisor.Devices.Tests.Iommu.VtdFixture;

namespace SharpVisor.Devices.Tests.Iommu;

public class VtdQueuedInvalidationTests
{
    const ushort Dev = 0x0010;
    const ushort Domain = 3;
    const ulong Queue = 0x40_0000;
    const ulong StatusAddr = 0x41_0000;

    sealed class Bench : IDisposable
    {
        public readonly VtdFixture F = new();
        ulong _tail;
        public Bench()
        {
            // The Linux dmar_enable_qi order: IQT=0, IQA, then GCMD.QIE.
            F.W64(Iqt, 0);
            F.W64(Iqa, Queue);                           // QS=0: one 4 KiB page, 256 descriptors
            F.Command(Qie);
        }
        public void Dispose() => F.Dispose();
        public ulong Tail => _tail;
        public void Put(ulong lo, ulong hi = 0)
        {
            F.Ram.WriteU64(Queue + _tail, lo);
            F.Ram.WriteU64(Queue + _tail + 8, hi);
            _tail = (_tail + 16) % 4096;
        }
        public void Submit() => F.W64(Iqt, _tail);
        public static ulong Wait(uint data, bool sw = true, bool irq = false) => 5UL | (irq ? 1UL << 4 : 0) | (sw ? 1UL << 5 : 0) | ((ulong)data << 32);
        public static ulong IotlbDesc(int g, ushort did) => 2UL | ((ulong)g << 4) | ((ulong)did << 16);
        public static ulong ContextDesc(int g, ushort did, ushort sid = 0) => 1UL | ((ulong)g << 4) | ((ulong)did << 16) | ((ulong)sid << 32);
    }

    [Fact]
    public void DescriptorsRunAndWaitWritesStatus()
    {
        using var b = new Bench();
        var f = b.F;
        Assert.Equal(Qie, f.R32(Gsts) & Qie);
        b.Put(Bench.ContextDesc(1, 0));
        b.Put(Bench.IotlbDesc(1, 0));
        b.Put(Bench.Wait(0x1234_5678), StatusAddr);
        b.Submit();
        Assert.Equal(b.Tail, f.R64(Iqh));
        Assert.Equal(0x1234_5678u, f.Ram.ReadU32(StatusAddr));
        Assert.Equal(1, f.Unit.Counters.ContextInvGlobal.Value);
        Assert.Equal(1, f.Unit.Counters.IotlbInvGlobal.Value);
        Assert.Equal(3, f.Unit.Counters.QueueDescriptors.Value);
        Assert.Equal(0u, f.R32(Fsts));
    }

    [Fact]
    public void QueuedPageInvalidationMakesTheNewMappingVisible()
    {
        using var b = new Bench();
        var f = b.F;
        ulong slpt = f.SetContext(Dev, Domain, 4);
        ulong leaf = f.Map(slpt, 4, 0x8000, 0x70_0000);
        f.EnableTranslation();
        var dma = f.Unit.DmaSpaceFor(Dev);
        dma.Write(0x8000, [1]);
        f.Ram.WriteU64(leaf, 0x71_0000 | 3);
        dma.Write(0x8000, [2]);
        Assert.Equal(2, f.ReadRam(0x70_0000, 1)[0]);        // stale, as hardware would be
        b.Put(Bench.IotlbDesc(3, Domain), 0x8000 | (1 << 6));   // page-selective, IH set
        b.Put(Bench.Wait(1), StatusAddr);
        b.Submit();
        dma.Write(0x8000, [3]);
        Assert.Equal(3, f.ReadRam(0x71_0000, 1)[0]);
        Assert.Equal(1, f.Unit.Counters.IotlbInvPageHint.Value);
    }

    [Fact]
    public void WaitWithInterruptFlagSetsIwcAndSendsTheInvalidationEvent()
    {
        using var b = new Bench();
        var f = b.F;
        f.W32(Iedata, 0x45);
        f.W32(Ieaddr, 0xFEE0_1000);
        f.W32(Iectl, 0);
        b.Put(Bench.Wait(0, sw: false, irq: true));
        b.Submit();
        Assert.Equal(1u, f.R32(Ics));
        var m = Assert.Single(f.Events.Messages);
        Assert.Equal((0xFEE0_1000UL, 0x45u), (m.Address, m.Data));
        // IWC still set: another wait is not a new interrupt condition.
        b.Put(Bench.Wait(0, sw: false, irq: true));
        b.Submit();
        Assert.Single(f.Events.Messages);
        f.W32(Ics, 1);
        Assert.Equal(0u, f.R32(Ics));
        b.Put(Bench.Wait(0, sw: false, irq: true));
        b.Submit();
        Assert.Equal(2, f.Events.Messages.Count);
    }

    [Theory]
    [InlineData(0x6UL, 0UL)]                 // PASID-based IOTLB: scalable mode only
    [InlineData(0xFUL, 0UL)]                 // undefined type
    [InlineData(0x1UL | (1UL << 8), 0UL)]    // context-cache descriptor with a reserved bit
    [InlineData(0x2UL | (1UL << 4), 1UL << 8)]  // IOTLB descriptor with a reserved bit in the high half
    [InlineData(0x1UL, 0UL)]                 // context-cache descriptor with granularity 00b
    [InlineData(0x5UL | (1UL << 8), 0UL)]    // wait descriptor with a reserved bit
    public void InvalidDescriptorStopsTheQueueAtItWithIqe(ulong lo, ulong hi)
    {
        using var b = new Bench();
        var f = b.F;
        f.W32(Fedata, 0x22);
        f.W32(Feaddr, 0xFEE0_0000);
        f.W32(Fectl, 0);
        b.Put(Bench.Wait(1), StatusAddr);
        b.Put(lo, hi);
        b.Put(Bench.Wait(2), StatusAddr);
        b.Submit();
        Assert.Equal(16UL, f.R64(Iqh));                      // IQH at the bad descriptor
        Assert.Equal(1u, f.Ram.ReadU32(StatusAddr));         // the wait after it did not run
        Assert.Equal(1u << 4, f.R32(Fsts));                  // IQE
        Assert.Single(f.Events.Messages);                    // a fault event
        // Nothing is fetched while IQE is set.
        f.W64(Iqt, b.Tail);
        Assert.Equal(16UL, f.R64(Iqh));
        // Software (Linux qi_check_fault) replaces the bad descriptor, clears IQE and resubmits.
        f.Ram.WriteU64(Queue + 16, Bench.Wait(7));
        f.Ram.WriteU64(Queue + 24, StatusAddr + 4);
        f.W32(Fsts, 1u << 4);
        Assert.Equal(b.Tail, f.R64(Iqh));                    // fetching resumed as IQE cleared
        Assert.Equal(7u, f.Ram.ReadU32(StatusAddr + 4));
        Assert.Equal(2u, f.Ram.ReadU32(StatusAddr));
    }

    [Fact]
    public void QueueOutsideRamIsAQueueError()
    {
        using var f = new VtdFixture();
        f.W64(Iqa, 0x7000_0000);
        f.Command(Qie);
        f.W64(Iqt, 0x10);
        Assert.Equal(1u << 4, f.R32(Fsts) & (1u << 4));
        Assert.Equal(0UL, f.R64(Iqh));
    }

    [Fact]
    public void TailBeyondTheQueueIsAQueueError()
    {
        using var b = new Bench();
        b.F.W64(Iqt, 0x1000);                                // QS=0: the queue is 4 KiB
        Assert.Equal(1u << 4, b.F.R32(Fsts) & (1u << 4));
    }

    [Fact]
    public void QueueWrapsAround()
    {
        using var b = new Bench();
        for (int i = 0; i < 300; i++)
        {
            b.Put(Bench.Wait((uint)i), StatusAddr);
            b.Submit();
        }
        Assert.Equal(299u, b.F.Ram.ReadU32(StatusAddr));
        Assert.Equal(b.Tail, b.F.R64(Iqh));
    }

    [Fact]
    public void DisablingQueuedInvalidationResetsTheHead()
    {
        using var b = new Bench();
        b.Put(Bench.Wait(1), StatusAddr);
        b.Submit();
        Assert.Equal(16UL, b.F.R64(Iqh));
        b.F.Command(Qie, on: false);
        Assert.Equal(0UL, b.F.R64(Iqh));
        Assert.Equal(0u, b.F.R32(Gsts) & Qie);
    }

    [Fact]
    public void RegisterInvalidationIsIgnoredWhileQueuedInvalidationIsOn()
    {
        using var b = new Bench();
        b.F.W64(Ccmd, (1UL << 63) | (1UL << 61));
        Assert.Equal(0, b.F.Unit.Counters.ContextInvGlobal.Value);
        Assert.Equal(0UL, (b.F.R64(Ccmd) >> 59) & 3);   // CAIG 0: not performed
        Assert.Equal(0UL, b.F.R64(Ccmd) >> 63);         // ICC cleared
    }

    [Fact]
    public void DeviceTlbAndInterruptCacheDescriptorsAreAccepted()
    {
        using var b = new Bench();
        b.Put(3UL | (0x10UL << 32), 0);   // device-TLB invalidate for 00:02.0
        b.Put(4UL);                        // interrupt entry cache, global
        b.Put(4UL | (1UL << 4) | (2UL << 27) | (8UL << 32));  // index-selective, 4 entries from 8
        b.Submit();
        Assert.Equal(0u, b.F.R32(Fsts));
        Assert.Equal(1, b.F.Unit.Counters.DeviceTlbInv.Value);
        Assert.Equal(1, b.F.Unit.Counters.InterruptEntryCacheInvGlobal.Value);
        Assert.Equal(1, b.F.Unit.Counters.InterruptEntryCacheInvIndex.Value);
    }
}
