using SharpVisor.Core;
using SharpVisor.Devices.Iommu;
using static SharpVisor.Devices.Tests.Iommu.VtdFixture;
using static SharpVisor.Devices.Tests.Iommu.VtdScalableFixture;

namespace SharpVisor.Devices.Tests.Iommu;

/// <summary>
/// Paging-structure caches (VT-d spec 6.2.4 PML5E/PML4E/PDPE/PDE caches, 6.2.5 their use in a walk)
/// and their invalidation (6.5.2.1-6.5.2.4, 11.4.4, 11.4.8).
/// </summary>
public class VtdPagingStructureCacheTests
{
    const ushort Dev = 0x0010;      // 00:02.0
    const ushort Dev2 = 0x0018;     // 00:03.0
    const ushort Domain = 9;
    const ulong Iova = 0x4000;
    const ulong OldPage = 0x70_0000, NewPage = 0x71_0000;
    const ulong Queue = 0x3F0_0000, StatusAddr = 0x3F8_0000;

    /// <summary>A fully associative paging-structure cache: set selection cannot keep tags apart.</summary>
    static readonly VtdOptions OneSet = new() { PagingStructureCacheSets = 1, PagingStructureCacheWays = 16 };

    /// <summary>IOTLB register (11.4.8.1): IVT 63, IIRG 61:60, DID 47:32.</summary>
    static ulong IotlbCommand(int granularity, ushort did) => (1UL << 63) | ((ulong)granularity << 60) | ((ulong)did << 32);

    /// <summary>IVA (11.4.8.2) / descriptor ADDR+IH+AM (6.5.2.3, 6.5.2.4): address 63:12, IH 6, AM 5:0.</summary>
    static ulong Iva(ulong address, bool ih, int am = 0) => address | (ih ? 1UL << 6 : 0) | (uint)am;

    /// <summary>The slot of the entry of <paramref name="level"/> on the way to <paramref name="iova"/> (9.8 / 9.7 layout).</summary>
    static ulong Slot(GuestMemory ram, ulong root, int levels, ulong iova, int level)
    {
        ulong table = root;
        for (int l = levels; l > level; l--)
        {
            table = ram.ReadU64(table + ((iova >> (12 + 9 * (l - 1))) & 511) * 8) & 0x000F_FFFF_FFFF_F000UL;
        }
        return table + ((iova >> (12 + 9 * (level - 1))) & 511) * 8;
    }

    /// <summary>Second-level page-table reads one DMA caused (0 when it hit the IOTLB or the snapshot).</summary>
    static long ReadsOf(IntelIommu unit, Func<DmaStatus> dma, DmaStatus expected = DmaStatus.Ok)
    {
        long before = unit.Counters.PageWalkReads.Value;
        Assert.Equal(expected, dma());
        return unit.Counters.PageWalkReads.Value - before;
    }

    static (VtdFixture F, ulong Slpt) Legacy(int levels = 4, VtdOptions? options = null)
    {
        var f = new VtdFixture(options);
        ulong slpt = f.SetContext(Dev, Domain, levels);
        f.Map(slpt, levels, Iova, OldPage);
        f.EnableTranslation();
        return (f, slpt);
    }

    /// <summary>
    /// The guest moves <see cref="Iova"/> to a new page table (a NON-leaf change: the PDE now points
    /// at another table, mapping the page to <see cref="NewPage"/>), as Linux does when it frees
    /// and reallocates a page-table page.
    /// </summary>
    static void RepointPde(VtdFixture f, ulong slpt, int levels)
    {
        ulong newTable = f.AllocTable();
        f.Ram.WriteU64(newTable + ((Iova >> 12) & 511) * 8, NewPage | 3);
        f.Ram.WriteU64(Slot(f.Ram, slpt, levels, Iova, 2), newTable | 3);
    }

    /// <summary>1 when a DMA write of <paramref name="value"/> landed in the new page, 0 in the old one.</summary>
    static int WriteAndSee(VtdFixture f, byte value, ushort dev = Dev)
    {
        Assert.Equal(DmaStatus.Ok, f.Unit.DmaSpaceFor(dev).Write(Iova, [value]));
        return f.ReadRam(NewPage, 1)[0] == value ? 1 : f.ReadRam(OldPage, 1)[0] == value ? 0 : -1;
    }

    static void RegisterPsi(VtdFixture f, ushort did, ulong address, bool ih, int am = 0)
    {
        f.W64(f.Iro, Iva(address, ih, am));
        f.W64(f.Iro + 8, IotlbCommand(3, did));
        Assert.Equal(3UL, (f.R64(f.Iro + 8) >> 57) & 3);   // IAIG: page-selective performed, not a coarser one
    }

    [Theory]
    [InlineData(3)]
    [InlineData(4)]
    [InlineData(5)]
    public void AWalkAfterACachedWalkReadsOnlyTheLevelsBelowTheCachedEntry(int levels)
    {
        var (f, slpt) = Legacy(levels);
        using var _f = f;
        f.Map(slpt, levels, Iova + 0x1000, OldPage + 0x1000);             // same page table (same PDE)
        f.Map(slpt, levels, Iova + 0x20_0000, OldPage + 0x2000);          // same PD, another PDE
        var dma = f.Unit.DmaSpaceFor(Dev);
        var c = f.Unit.Counters;
        // 6.2.5: the first walk reads every level; the next one in the same 2 MiB starts below
        // the cached PDE and reads only the PTE; one in the same 1 GiB starts below the PDPE.
        Assert.Equal(levels, ReadsOf(f.Unit, () => dma.Write(Iova, [1])));
        Assert.Equal(1, ReadsOf(f.Unit, () => dma.Write(Iova + 0x1000, [2])));
        Assert.Equal(2, ReadsOf(f.Unit, () => dma.Write(Iova + 0x20_0000, [3])));
        Assert.Equal(1, f.ReadRam(OldPage, 1)[0]);
        Assert.Equal(2, f.ReadRam(OldPage + 0x1000, 1)[0]);
        Assert.Equal(3, f.ReadRam(OldPage + 0x2000, 1)[0]);
        Assert.Equal(1, c.PscHitsPde.Value);
        Assert.Equal(1, c.PscHitsPdpe.Value);
        Assert.Equal(1, c.PscMisses.Value);
        Assert.Equal(levels - 1 + 1, c.PscFills.Value);   // the first walk's non-leaf entries, then the new PDE
    }

    [Fact]
    public void WithoutPagingStructureCachesEveryWalkStartsAtTheTop()
    {
        var (f, slpt) = Legacy(4, new VtdOptions { PagingStructureCaches = false });
        using var _f = f;
        f.Map(slpt, 4, Iova + 0x1000, OldPage + 0x1000);
        var dma = f.Unit.DmaSpaceFor(Dev);
        Assert.Equal(4, ReadsOf(f.Unit, () => dma.Write(Iova, [1])));
        Assert.Equal(4, ReadsOf(f.Unit, () => dma.Write(Iova + 0x1000, [2])));
        Assert.Equal(0, f.Unit.PagingStructureCacheCount);
        Assert.Equal(0, f.Unit.Counters.PscMisses.Value);
    }

    [Fact]
    public void RegisterPageInvalidationWithLeafHintKeepsTheCachedTableAndWithoutItDropsIt()
    {
        var (f, slpt) = Legacy();
        using var _f = f;
        Assert.Equal(0, WriteAndSee(f, 1));
        RepointPde(f, slpt, 4);
        // 11.4.8.2 IH=1: software says no non-leaf entry changed, so the unit may keep its cached
        // PDE. The guest lied: the walk after the IOTLB flush starts from the stale page table.
        // This is the architecturally permitted outcome (and what Linux never does: it sets IH=1
        // only when its unmap freed no page-table page).
        RegisterPsi(f, Domain, Iova, ih: true);
        Assert.Equal(0, WriteAndSee(f, 2));
        Assert.Equal(1, f.Unit.Counters.PscHitsPde.Value);
        Assert.Equal(1, f.Unit.Counters.PscKeptByHint.Value);
        Assert.Equal(1, f.Unit.Counters.IotlbInvPageHint.Value);
        // IH=0: the cached non-leaf entries covering the page go, and the new table is used.
        RegisterPsi(f, Domain, Iova, ih: false);
        Assert.Equal(1, WriteAndSee(f, 3));
        Assert.True(f.Unit.Counters.PscEntriesInvalidated.Value > 0);
    }

    [Fact]
    public void PageInvalidationWithoutHintKeepsEntriesOutsideTheRangeAndOfOtherDomains()
    {
        var (f, slpt) = Legacy();
        using var _f = f;
        f.Map(slpt, 4, Iova + 0x4000_0000, OldPage + 0x1000);     // another 1 GiB region
        var dma = f.Unit.DmaSpaceFor(Dev);
        Assert.Equal(DmaStatus.Ok, dma.Write(Iova, [1]));
        Assert.Equal(DmaStatus.Ok, dma.Write(Iova + 0x4000_0000, [1]));
        // The first walk cached the PML4E, PDPE and PDE; the second started below the PML4E and
        // cached its own PDPE and PDE.
        Assert.Equal(5, f.Unit.PagingStructureCacheCount);
        RegisterPsi(f, Domain + 1, Iova, ih: false);               // another domain
        Assert.Equal(5, f.Unit.PagingStructureCacheCount);
        // AM=1 over 0x4000-0x5FFF: only the entries whose regions hold it (PML4E, PDPE, PDE).
        RegisterPsi(f, Domain, Iova, ih: false, am: 1);
        Assert.Equal(2, f.Unit.PagingStructureCacheCount);
        // The other 1 GiB region's PDE survived: a walk next to the page there reads only a PTE
        // (not present: a fault).
        Assert.Equal(1, ReadsOf(f.Unit, () => dma.Write(Iova + 0x4000_0000 + 0x1000, [2]), DmaStatus.Blocked));
    }

    [Theory]
    [InlineData(1)]     // global (11.4.8.1 IIRG=01b)
    [InlineData(2)]     // domain-selective
    public void GlobalAndDomainRegisterInvalidationDropTheCache(int granularity)
    {
        var (f, slpt) = Legacy();
        using var _f = f;
        Assert.Equal(0, WriteAndSee(f, 1));
        RepointPde(f, slpt, 4);
        f.W64(f.Iro + 8, IotlbCommand(2, Domain + 1));              // another domain's invalidation...
        RegisterPsi(f, Domain, Iova, ih: true);                     // ...and a leaf-only one keep the stale PDE
        Assert.Equal(0, WriteAndSee(f, 2));
        f.W64(f.Iro + 8, IotlbCommand(granularity, Domain));
        Assert.Equal((ulong)granularity, (f.R64(f.Iro + 8) >> 57) & 3);
        Assert.Equal(1, WriteAndSee(f, 3));
    }

    static void EnableQueue(VtdFixture f)
    {
        // The Linux dmar_enable_qi order: IQT=0, IQA (128-bit descriptors, one 4 KiB page), GCMD.QIE.
        f.W64(Iqt, 0);
        f.W64(Iqa, Queue);
        f.Command(Qie);
    }

    /// <summary>Queues the descriptors and a status-writing wait (6.5.2.8); true when the wait completed.</summary>
    static bool RunQueue(VtdFixture f, params (ulong Lo, ulong Hi)[] descriptors)
    {
        ulong tail = f.R64(Iqt);
        f.Ram.WriteU32(StatusAddr, 0);
        void Put(ulong lo, ulong hi)
        {
            f.Ram.WriteU64(Queue + tail, lo);
            f.Ram.WriteU64(Queue + tail + 8, hi);
            tail = (tail + 16) % 4096;
        }
        foreach (var (lo, hi) in descriptors)
        {
            Put(lo, hi);
        }
        Put(5UL | (1UL << 5) | (0x600DUL << 32), StatusAddr);
        f.W64(Iqt, tail);
        return f.Ram.ReadU32(StatusAddr) == 0x600D;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void QueuedIotlbPageInvalidationHonoursTheHint(bool ih)
    {
        var (f, slpt) = Legacy();
        using var _f = f;
        EnableQueue(f);
        Assert.Equal(0, WriteAndSee(f, 1));
        RepointPde(f, slpt, 4);
        // 6.5.2.3 IOTLB invalidate descriptor, G=11b page-selective-within-domain, ADDR/IH/AM in the high quadword.
        Assert.True(RunQueue(f, (2UL | (3UL << 4) | ((ulong)Domain << 16), Iva(Iova, ih))));
        Assert.Equal(ih ? 0 : 1, WriteAndSee(f, 2));
        // A domain-selective descriptor always drops them.
        Assert.True(RunQueue(f, (2UL | (2UL << 4) | ((ulong)Domain << 16), 0)));
        Assert.Equal(1, WriteAndSee(f, 3));
    }

    [Fact]
    public void AddressMaskBeyondMamvDegradesToDomainAndDropsTheCache()
    {
        var (f, slpt) = Legacy(4, new VtdOptions { MaxAddressMaskValue = 2 });
        using var _f = f;
        Assert.Equal(0, WriteAndSee(f, 1));
        RepointPde(f, slpt, 4);
        f.W64(f.Iro, Iva(Iova, ih: true, am: 9));
        f.W64(f.Iro + 8, IotlbCommand(3, Domain));
        Assert.Equal(2UL, (f.R64(f.Iro + 8) >> 57) & 3);   // IAIG: performed domain-selectively (11.4.8.1)
        Assert.Equal(1, WriteAndSee(f, 2));                // so the hint no longer applies
    }

    [Fact]
    public void DomainsDoNotAliasEvenOverTheSameTables()
    {
        // Two devices in two domains sharing one set of tables (6.2.4: entries are tagged by DID).
        // One set, so every entry meets every lookup: only the tag keeps them apart.
        using var f = new VtdFixture(OneSet);
        ulong slpt = f.SetContext(Dev, Domain, 4);
        f.SetContext(Dev2, Domain + 1, 4, slpt: slpt);
        f.Map(slpt, 4, Iova, OldPage);
        f.Map(slpt, 4, Iova + 0x1000, OldPage + 0x1000);
        f.EnableTranslation();
        var a = f.Unit.DmaSpaceFor(Dev);
        var b = f.Unit.DmaSpaceFor(Dev2);
        Assert.Equal(4, ReadsOf(f.Unit, () => a.Write(Iova, [1])));
        Assert.Equal(4, ReadsOf(f.Unit, () => b.Write(Iova + 0x1000, [1])));   // domain A's entries are not B's
        // A domain-selective invalidation of A leaves B's cached entries alone.
        f.W64(f.Iro + 8, IotlbCommand(2, Domain));
        Assert.Equal(1, ReadsOf(f.Unit, () => b.Write(Iova, [2])));
        Assert.Equal(4, ReadsOf(f.Unit, () => a.Write(Iova + 0x1000, [2])));
    }

    [Fact]
    public void TheCacheIsBoundedAndEvictsWithoutLosingCorrectness()
    {
        var (f, slpt) = Legacy(3, new VtdOptions { PagingStructureCacheSets = 1, PagingStructureCacheWays = 2, IotlbSets = 1, IotlbWays = 1 });
        using var _f = f;
        var dma = f.Unit.DmaSpaceFor(Dev);
        // Eight pages in eight different 1 GiB regions: each walk caches a PDPE and a PDE.
        for (int i = 0; i < 8; i++)
        {
            f.Map(slpt, 3, Iova + ((ulong)i << 30), OldPage + (ulong)i * 0x1000);
        }
        for (int round = 0; round < 2; round++)
        {
            for (int i = 0; i < 8; i++)
            {
                Assert.Equal(DmaStatus.Ok, dma.Write(Iova + ((ulong)i << 30), [(byte)(0x10 * round + i + 1)]));
                Assert.Equal((byte)(0x10 * round + i + 1), f.ReadRam(OldPage + (ulong)i * 0x1000, 1)[0]);
                Assert.True(f.Unit.PagingStructureCacheCount <= 2);
            }
        }
        Assert.Equal(2, f.Unit.PagingStructureCacheCount);
        Assert.True(f.Unit.Counters.PscEvictions.Value >= 28);     // 32 fills into 2 ways
        Assert.Throws<UserErrorException>(() => new VtdOptions { PagingStructureCacheSets = 3 }.Validate());
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]     // caching mode: this model caches no not-present entry either (6.1)
    public void NotPresentEntriesAreNeverCachedSoAMappingNeedsNoInvalidation(bool cachingMode)
    {
        var (f, slpt) = Legacy(4, new VtdOptions { CachingMode = cachingMode });
        using var _f = f;
        var dma = f.Unit.DmaSpaceFor(Dev);
        Assert.Equal(DmaStatus.Ok, dma.Write(Iova, [1]));
        int cached = f.Unit.PagingStructureCacheCount;
        // A page in another 2 MiB region whose PDE is not present: the walk faults at the PDE.
        const ulong Other = Iova + 0x20_0000;
        Assert.Equal(1, ReadsOf(f.Unit, () => dma.Write(Other, [2]), DmaStatus.Blocked));   // PDPE hit, then the PDE
        Assert.Equal(cached, f.Unit.PagingStructureCacheCount);                            // nothing new cached
        // Linux without caching mode maps (not-present → present) without any invalidation.
        f.Map(slpt, 4, Other, NewPage);
        Assert.Equal(DmaStatus.Ok, dma.Write(Other, [3]));
        Assert.Equal(3, f.ReadRam(NewPage, 1)[0]);
    }

    [Fact]
    public void AWalkThatFaultsBelowCachesNothing()
    {
        using var f = new VtdFixture();
        ulong slpt = f.SetContext(Dev, Domain, 4);
        ulong leaf = f.Map(slpt, 4, Iova, OldPage);
        f.Ram.WriteU64(leaf, 0);                          // PML4E/PDPE/PDE present, PTE not
        f.EnableTranslation();
        Assert.Equal(DmaStatus.Blocked, f.Unit.DmaSpaceFor(Dev).Read(Iova, new byte[1]));
        Assert.Equal(0, f.Unit.PagingStructureCacheCount);
        f.Ram.WriteU64(leaf, NewPage | 3);
        Assert.Equal(DmaStatus.Ok, f.Unit.DmaSpaceFor(Dev).Write(Iova, [7]));
        Assert.Equal(7, f.ReadRam(NewPage, 1)[0]);
    }

    [Fact]
    public void CachedNonLeafRightsStillLimitTheWalk()
    {
        // 9.8 / 3.7.1: the rights of a translation are the AND along the walk, cached levels included.
        var (f, slpt) = Legacy();
        using var _f = f;
        f.Map(slpt, 4, Iova + 0x1000, OldPage + 0x1000);
        ulong pdpe = Slot(f.Ram, slpt, 4, Iova, 3);
        f.Ram.WriteU64(pdpe, f.Ram.ReadU64(pdpe) & ~2UL);   // the PDPE becomes read-only before any walk
        var dma = f.Unit.DmaSpaceFor(Dev);
        Assert.Equal(DmaStatus.Ok, dma.Read(Iova, new byte[1]));
        Assert.Equal(1, ReadsOf(f.Unit, () => dma.Write(Iova + 0x1000, [1]), DmaStatus.Blocked));   // the PDE hit carries W=0
        Assert.Equal((int)VtdFaultReason.WriteNotPermitted, Reason(f.FaultRecord(0).High));
    }

    [Fact]
    public void ContextInvalidationRootTableChangeAndTranslationToggleDropTheCache()
    {
        var (f, _) = Legacy();
        using var _f = f;
        var dma = f.Unit.DmaSpaceFor(Dev);
        void Fill()
        {
            f.W64(f.Iro + 8, IotlbCommand(1, 0));          // empty the IOTLB so the walk happens
            Assert.Equal(DmaStatus.Ok, dma.Write(Iova, [1]));
            Assert.NotEqual(0, f.Unit.PagingStructureCacheCount);
        }
        Fill();
        // CCMD (11.4.6) device-selective: 6.5.2.1 has software follow it with an IOTLB flush; the
        // unit drops its paging-structure caches at once.
        f.W64(Ccmd, (1UL << 63) | (3UL << 61) | ((ulong)Dev << 16) | Domain);
        Assert.Equal(0, f.Unit.PagingStructureCacheCount);
        Fill();
        f.W64(Rtaddr, RootTable);
        f.Command(Srtp);                                   // 11.4.4 SRTP
        Assert.Equal(0, f.Unit.PagingStructureCacheCount);
        Fill();
        f.Command(Te, on: false);                          // 11.4.4 TE
        Assert.Equal(0, f.Unit.PagingStructureCacheCount);
    }

    // ---- scalable mode: first level tagged by PASID (6.2.4), PASID-based invalidation (6.5.2.4) ----

    static (VtdScalableFixture S, ulong Fl1, ulong Fl2, ulong Dir) FirstLevel(bool sharedTables = false, VtdOptions? options = null)
    {
        var s = new VtdScalableFixture(options);
        s.EnableWideQueue();
        ulong dir = s.SetContext(Dev);
        ulong fl1 = s.SetFirstLevel(dir, 1, Domain);
        ulong fl2 = sharedTables ? fl1 : s.SetFirstLevel(dir, 2, Domain);
        if (sharedTables)
        {
            s.WritePasidEntry(dir, 2, (1UL << 6) | (3UL << 2) | 1, Domain, fl1);   // PGTT=001b over PASID 1's tables
        }
        s.MapFirstLevel(fl1, 4, Iova, OldPage);
        s.MapFirstLevel(fl1, 4, Iova + 0x1000, OldPage + 0x1000);
        if (!sharedTables)
        {
            s.MapFirstLevel(fl2, 4, Iova, OldPage + 0x2000);
        }
        s.EnableScalableTranslation();
        return (s, fl1, fl2, dir);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void PasidIotlbPageInvalidationHonoursTheHint(bool ih)
    {
        var (s, fl1, _, _) = FirstLevel();
        using var _s = s;
        var p1 = s.Unit.DmaSpaceFor(Dev, 1);
        Assert.Equal(DmaStatus.Ok, p1.Write(Iova, [1]));
        Assert.Equal(1, s.F.ReadRam(OldPage, 1)[0]);
        // Non-leaf change: the PDE now points at a new table that maps the page elsewhere.
        ulong newTable = s.F.AllocTable();
        s.Ram.WriteU64(newTable + ((Iova >> 12) & 511) * 8, NewPage | FlP | FlRw | FlUs);
        s.Ram.WriteU64(Slot(s.Ram, fl1, 4, Iova, 2), newTable | FlP | FlRw | FlUs);
        // 6.5.2.4 page-selective-within-PASID (G=11b) with IH in bit 70 (high quadword bit 6).
        Assert.True(s.Run(1, (PasidIotlbDesc(3, Domain, 1), Iva(Iova, ih))));
        Assert.Equal(DmaStatus.Ok, p1.Write(Iova, [2]));
        Assert.Equal(2, s.F.ReadRam(ih ? OldPage : NewPage, 1)[0]);   // IH=1: the stale table, as permitted
        // PASID-selective (G=10b) always drops them.
        Assert.True(s.Run(2, (PasidIotlbDesc(2, Domain, 1), 0)));
        Assert.Equal(DmaStatus.Ok, p1.Write(Iova, [3]));
        Assert.Equal(3, s.F.ReadRam(NewPage, 1)[0]);
    }

    [Fact]
    public void PasidsDoNotAliasAndPasidSelectiveInvalidationIsSelective()
    {
        // Two PASIDs of one domain over the same first-level tables: entries are tagged by PASID.
        var (s, _, _, _) = FirstLevel(sharedTables: true, OneSet);
        using var _s = s;
        var p1 = s.Unit.DmaSpaceFor(Dev, 1);
        var p2 = s.Unit.DmaSpaceFor(Dev, 2);
        Assert.Equal(4, ReadsOf(s.Unit, () => p1.Read(Iova, new byte[1])));
        Assert.Equal(4, ReadsOf(s.Unit, () => p2.Read(Iova + 0x1000, new byte[1])));   // PASID 1's entries are not PASID 2's
        Assert.True(s.Run(1, (PasidIotlbDesc(2, Domain, 1), 0)));                      // PASID 1 only
        Assert.Equal(1, ReadsOf(s.Unit, () => p2.Read(Iova, new byte[1])));
        Assert.Equal(4, ReadsOf(s.Unit, () => p1.Read(Iova + 0x1000, new byte[1])));
        // A domain-selective IOTLB descriptor (6.5.2.3) drops every PASID of the domain.
        Assert.True(s.Run(2, (IotlbDesc(2, Domain), 0)));
        Assert.Equal(0, s.Unit.PagingStructureCacheCount);
    }

    [Theory]
    [InlineData(0)]     // domain-selective PASID-cache invalidation (6.5.2.2)
    [InlineData(1)]     // PASID-selective
    [InlineData(3)]     // global
    public void PasidCacheInvalidationDropsThePasidsCachedTables(int granularity)
    {
        var (s, _, _, _) = FirstLevel();
        using var _s = s;
        Assert.Equal(DmaStatus.Ok, s.Unit.DmaSpaceFor(Dev, 1).Read(Iova, new byte[1]));
        Assert.Equal(3, s.Unit.PagingStructureCacheCount);
        if (granularity != 3)
        {
            Assert.True(s.Run(1, (PasidCacheDesc(granularity, Domain + 1, 1), 0)));   // another domain: kept
            Assert.Equal(3, s.Unit.PagingStructureCacheCount);
        }
        Assert.True(s.Run(2, (PasidCacheDesc(granularity, Domain, 1), 0)));
        Assert.Equal(0, s.Unit.PagingStructureCacheCount);
    }

    [Fact]
    public void FirstLevelWalkFromTheCacheStillSetsTheLeafFlagsAndHonoursUserRights()
    {
        var (s, fl1, _, _) = FirstLevel();
        using var _s = s;
        var p1 = s.Unit.DmaSpaceFor(Dev, 1);
        Assert.Equal(DmaStatus.Ok, p1.Read(Iova, new byte[1]));
        var slots = s.FirstLevelSlots(fl1, 4, Iova + 0x1000);
        Assert.Equal(0UL, s.Ram.ReadU64(slots[^1]) & FlA);
        // 3.6.2: the walk that starts at the cached PDE sets A, and for a write D, in the leaf.
        Assert.Equal(1, ReadsOf(s.Unit, () => p1.Write(Iova + 0x1000, [5])));
        Assert.Equal(FlA | FlD, s.Ram.ReadU64(slots[^1]) & (FlA | FlD));
        // U/S=0 in a cached upper entry denies user requests below it (9.7: ANDed along the walk).
        // The PDPE becomes supervisor-only, invalidated with IH=0 over both pages.
        ulong pdpe = Slot(s.Ram, fl1, 4, Iova, 3);
        s.Ram.WriteU64(pdpe, s.Ram.ReadU64(pdpe) & ~FlUs);
        Assert.True(s.Run(1, (PasidIotlbDesc(3, Domain, 1), Iva(Iova, ih: false, am: 1))));
        Assert.Equal(4, ReadsOf(s.Unit, () => p1.Read(Iova, new byte[1]), DmaStatus.Blocked));   // the walk succeeds, the access does not
        Assert.Equal(1, ReadsOf(s.Unit, () => p1.Read(Iova + 0x1000, new byte[1]), DmaStatus.Blocked));   // from the cached PDE, U/S=0 carried
        Assert.Equal((int)VtdFaultReason.SmPrivilegeViolation, Reason(s.F.FaultRecord(0).High));
        Assert.Equal((int)VtdFaultReason.SmPrivilegeViolation, Reason(s.F.FaultRecord(1).High));
    }
}
