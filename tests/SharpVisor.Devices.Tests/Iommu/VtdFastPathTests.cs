using SharpVisor.Core;
using SharpVisor.Devices.Iommu;
using static SharpVisor.Devices.Tests.Iommu.VtdFixture;

namespace SharpVisor.Devices.Tests.Iommu;

/// <summary>
/// The per-requester translation snapshot (the lock-free IOTLB-hit path) must obey the same
/// invalidation rules as the IOTLB and context cache it short-cuts (VT-d spec 6.5: once an
/// invalidation completes, no DMA may use what it invalidated).
/// </summary>
public class VtdFastPathTests
{
    const ushort Dev = 0x0010;
    const ushort Domain = 3;
    const ulong Iova = 0x4000_0000;
    const ulong Target = 0x60_0000;
    const ulong Queue = 0x3F0_0000;
    const ulong StatusAddr = 0x3F1_0000;

    static (VtdFixture F, ulong Leaf, IDmaSpace Dma) Mapped(bool write = true)
    {
        var f = new VtdFixture();
        ulong slpt = f.SetContext(Dev, Domain, 4);
        ulong leaf = f.Map(slpt, 4, Iova, Target, write: write);
        f.EnableTranslation();
        return (f, leaf, f.Unit.DmaSpaceFor(Dev));
    }

    int IotlbRegister(VtdFixture f) => f.Iro + 8;

    [Fact]
    public void RepeatedHitsOnOnePageCountAsIotlbHitsAndWalkOnce()
    {
        var (f, _, dma) = Mapped();
        using var _f = f;
        for (int i = 0; i < 10; i++)
        {
            Assert.Equal(DmaStatus.Ok, dma.Write(Iova + (ulong)i * 8, BitConverter.GetBytes((ulong)i)));
        }
        Assert.Equal(9UL, f.Ram.ReadU64(Target + 72));
        Assert.Equal(1, f.Unit.Counters.SecondLevelWalks.Value);
        Assert.Equal(9, f.Unit.Counters.IotlbHits4K.Value);
        Assert.Equal(10, f.Unit.Counters.Translations.Value);
        // A request leaving the page takes the slow path and is still translated page by page.
        Assert.Equal(DmaStatus.Blocked, dma.Write(Iova + 0xFFC, new byte[8]));   // next page unmapped
        Assert.Equal(0u, f.Ram.ReadU32(Target + 0xFFC));
    }

    [Fact]
    public void PageSelectiveRegisterInvalidationEndsTheSnapshot()
    {
        var (f, leaf, dma) = Mapped();
        using var _f = f;
        Assert.Equal(DmaStatus.Ok, dma.Write(Iova, [1]));
        f.Ram.WriteU64(leaf, 0);                          // unmap; the cached translation lives on...
        Assert.Equal(DmaStatus.Ok, dma.Write(Iova, [2]));
        Assert.Equal(2, f.ReadRam(Target, 1)[0]);
        f.W64(f.Iro, Iova);                               // IVA, AM=0 ... until the page is invalidated (11.4.8)
        f.W64(IotlbRegister(f), (1UL << 63) | (3UL << 60) | ((ulong)Domain << 32));
        Assert.Equal(0UL, f.R64(IotlbRegister(f)) >> 63); // IVT clear: the invalidation completed
        Assert.Equal(DmaStatus.Blocked, dma.Write(Iova, [3]));
        Assert.Equal(DmaStatus.Blocked, dma.Read(Iova, new byte[1]));
        Assert.Equal(2, f.ReadRam(Target, 1)[0]);
        Assert.Equal((int)VtdFaultReason.WriteNotPermitted, Reason(f.FaultRecord(0).High));
    }

    [Fact]
    public void QueuedInvalidationTakesEffectBeforeTheWaitStatusIsWritten()
    {
        var (f, leaf, dma) = Mapped();
        using var _f = f;
        Assert.Equal(DmaStatus.Ok, dma.Read(Iova, new byte[4]));
        f.W64(Iqt, 0);
        f.W64(Iqa, Queue);
        f.Command(Qie);
        f.Ram.WriteU64(leaf, 0);
        f.Ram.WriteU64(Queue, 2UL | (3UL << 4) | ((ulong)Domain << 16));     // IOTLB, page-selective (6.5.2.3)
        f.Ram.WriteU64(Queue + 8, Iova);
        f.Ram.WriteU64(Queue + 16, 5UL | (1UL << 5) | (0x77UL << 32));       // wait, SW=1 (6.5.2.8)
        f.Ram.WriteU64(Queue + 24, StatusAddr);
        f.W64(Iqt, 32);
        Assert.Equal(0x77u, f.Ram.ReadU32(StatusAddr));
        Assert.Equal(DmaStatus.Blocked, dma.Read(Iova, new byte[4]));
        Assert.Equal((int)VtdFaultReason.ReadNotPermitted, Reason(f.FaultRecord(0).High));
    }

    [Fact]
    public void ContextCacheInvalidationEndsTheSnapshot()
    {
        var (f, _, dma) = Mapped();
        using var _f = f;
        Assert.Equal(DmaStatus.Ok, dma.Read(Iova, new byte[4]));
        f.WriteContextRaw(Dev, 0, 0);                     // context entry no longer present
        f.W64(Ccmd, (1UL << 63) | (3UL << 61) | ((ulong)Dev << 16) | Domain);   // device-selective (11.4.6)
        f.W64(IotlbRegister(f), (1UL << 63) | (2UL << 60) | ((ulong)Domain << 32));
        Assert.Equal(DmaStatus.Blocked, dma.Read(Iova, new byte[4]));
        Assert.Equal((int)VtdFaultReason.ContextEntryNotPresent, Reason(f.FaultRecord(0).High));
    }

    [Fact]
    public void ReadOnlyPageNeverLetsAWriteThroughTheSnapshot()
    {
        var (f, _, dma) = Mapped(write: false);
        using var _f = f;
        f.Fill(Target, 4, 0xAA);
        Assert.Equal(DmaStatus.Ok, dma.Read(Iova, new byte[4]));
        Assert.Equal(DmaStatus.Blocked, dma.Write(Iova, [1]));
        Assert.Equal(0xAA, f.ReadRam(Target, 1)[0]);
        Assert.Equal((int)VtdFaultReason.WriteNotPermitted, Reason(f.FaultRecord(0).High));
        Assert.Equal(DmaStatus.Ok, dma.Read(Iova + 8, new byte[4]));
    }

    [Fact]
    public void TranslationOffThenProtectedRegionEndsTheUntranslatedSnapshot()
    {
        using var f = new VtdFixture(new VtdOptions { ProtectedMemoryRegions = true });
        var dma = f.Unit.DmaSpaceFor(Dev);
        Assert.Equal(DmaStatus.Ok, dma.Write(0x20_0000, [1]));
        Assert.Equal(DmaStatus.Ok, dma.Write(0x20_0001, [2]));
        Assert.Equal(2, f.Unit.Counters.UntranslatedDma.Value);
        f.W32(0x68, 0x0020_0000);     // PLMBASE 2 MiB
        f.W32(0x6C, 0x0020_0000);     // PLMLIMIT: [2 MiB, 4 MiB)
        f.W32(0x64, 1u << 31);        // EPM (11.4.13)
        Assert.Equal(DmaStatus.Blocked, dma.Write(0x20_0002, [3]));
        Assert.Equal(0, f.ReadRam(0x20_0002, 1)[0]);
        // Turning translation on (no context entry): the untranslated snapshot must not survive.
        f.W32(0x64, 0);
        Assert.Equal(DmaStatus.Ok, dma.Write(0x40_0000, [4]));
        f.EnableTranslation();
        Assert.Equal(DmaStatus.Blocked, dma.Write(0x40_0001, [5]));
        Assert.Equal(0, f.ReadRam(0x40_0001, 1)[0]);
    }

    [Fact]
    public void InterruptRangeIsNeverServedFromTheSnapshot()
    {
        using var f = new VtdFixture();
        var dma = f.Unit.DmaSpaceFor(Dev);
        // TE=0: a DWORD write to 0xFEEx_xxxx is an interrupt each time, never memory.
        Assert.Equal(DmaStatus.Ok, dma.Write(0xFEE0_0000, BitConverter.GetBytes(0x30u)));
        Assert.Equal(DmaStatus.Ok, dma.Write(0xFEE0_0000, BitConverter.GetBytes(0x31u)));
        Assert.Equal(2, f.Apic.Delivered.Count);
        Assert.Equal(2, f.Unit.Counters.DmaToInterruptRange.Value);
    }

    /// <summary>
    /// A translated request skips the context check while the requester's permit is valid; a
    /// context-cache invalidation after software turned TT=01b into 00b must end it (VT-d 4.2.4).
    /// </summary>
    [Fact]
    public void TranslatedRequestPermitEndsWithTheContextInvalidation()
    {
        using var f = new VtdFixture();
        ulong slpt = f.SetContext(Dev, Domain, 4, tt: 1);
        f.Map(slpt, 4, Iova, Target);
        f.EnableTranslation();
        var ats = new AtsDmaSpace(f.Unit, Dev, new DeviceIotlb("dev"));
        ats.Attach();
        Assert.Equal(DmaStatus.Ok, ats.Write(Iova, [1]));
        Assert.Equal(DmaStatus.Ok, ats.Write(Iova + 1, [2]));       // device-TLB hit, permit held
        Assert.Equal(2, f.Unit.Counters.TranslatedRequests.Value);
        f.SetContext(Dev, Domain, 4, tt: 0, slpt: slpt);             // device-TLBs no longer allowed
        f.Ram.WriteU64(f.ContextTable(0) + Dev * 16UL + 8, 2 | ((ulong)Domain << 8));
        // The device keeps its translation (nobody invalidated its TLB), but once the context
        // cache is invalidated its translated requests must be refused.
        f.W64(Ccmd, (1UL << 63) | (1UL << 61));                     // global context invalidation
        Assert.Equal(DmaStatus.Blocked, f.Unit.TranslatedDmaWrite(Dev, Target + 2, [3]));
        Assert.Equal(0, f.ReadRam(Target + 2, 1)[0]);
        Assert.Equal((int)VtdFaultReason.TranslationTypeBlocked, Reason(f.FaultRecord(0).High));
        Assert.Equal(1, ats.Tlb.Count);
        f.ClearFault(0);
        Assert.Equal(DmaStatus.Blocked, ats.Write(Iova + 3, [4]));   // through the device's own path too
        Assert.Equal(0, f.ReadRam(Target + 3, 1)[0]);
    }

    [Fact]
    public async Task ConcurrentDmaNeverUsesATranslationAfterItsInvalidationCompleted()
    {
        var (f, leaf, dma) = Mapped();
        using var _f = f;
        ulong pte = f.Ram.ReadU64(leaf);
        int unmappedRound = 0;   // non-zero: the mapping is gone and its invalidation has completed
        int acknowledged = 0;    // the last such round in which the worker started and finished a DMA
        int leaks = 0;
        int mappedOk = 0;        // successful DMAs while mapped: the snapshot gets filled and hit
        bool stop = false;
        var worker = Task.Run(() =>
        {
            var buffer = new byte[8];
            while (!Volatile.Read(ref stop))
            {
                int round = Volatile.Read(ref unmappedRound);
                if (round != 0 && round == Volatile.Read(ref acknowledged))
                {
                    continue;   // one DMA per unmapped round, so none can outlive the round
                }
                var status = dma.Read(Iova, buffer);
                if (round == 0 && status == DmaStatus.Ok)
                {
                    Interlocked.Increment(ref mappedOk);
                }
                if (round != 0)
                {
                    if (status == DmaStatus.Ok)
                    {
                        Interlocked.Increment(ref leaks);
                    }
                    Volatile.Write(ref acknowledged, round);
                }
            }
        });
        for (int round = 1; round <= 100; round++)
        {
            f.Ram.WriteU64(leaf, 0);
            f.W64(IotlbRegister(f), (1UL << 63) | (2UL << 60) | ((ulong)Domain << 32));   // domain-selective
            Volatile.Write(ref unmappedRound, round);
            var spin = new SpinWait();
            var deadline = DateTime.UtcNow.AddSeconds(10);
            while (Volatile.Read(ref acknowledged) != round && DateTime.UtcNow < deadline)
            {
                spin.SpinOnce();
            }
            f.Ram.WriteU64(leaf, pte);
            int before = Volatile.Read(ref mappedOk);
            Volatile.Write(ref unmappedRound, 0);
            while (Volatile.Read(ref mappedOk) < before + 3 && DateTime.UtcNow < deadline)
            {
                spin.SpinOnce();
            }
        }
        Volatile.Write(ref stop, true);
        await worker;
        Assert.Equal(0, leaks);
        Assert.True(f.Unit.Counters.IotlbHits4K.Value > 0);
    }
}

