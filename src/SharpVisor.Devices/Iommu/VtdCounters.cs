using SharpVisor.Core;

namespace SharpVisor.Devices.Iommu;

/// <summary>
/// Event counters of one remapping unit: what the caches buy, what walks cost, what faults occur.
/// Names start with the unit name ("dmar0.iotlb.hits.4k", ...).
/// </summary>
public sealed class VtdCounters
{
    public readonly Counter Translations;
    public readonly Counter UntranslatedDma;        // TE=0: identity
    public readonly Counter PassThroughDma;         // context TT=10b
    public readonly Counter IotlbHits4K, IotlbHits2M, IotlbHits1G;
    public readonly Counter IotlbMisses;
    public readonly Counter IotlbFills4K, IotlbFills2M, IotlbFills1G;   // misses by the page size the walk found
    public readonly Counter IotlbEvictions;
    public readonly Counter ContextCacheHits, ContextCacheMisses, ContextCacheEvictions;
    public readonly Counter PageWalks;
    public readonly Counter PageWalkReads;          // 8-byte paging-entry reads from guest RAM
    public readonly Counter RootContextReads;       // root/context entry reads from guest RAM
    public readonly Counter ContextInvGlobal, ContextInvDomain, ContextInvDevice;
    public readonly Counter IotlbInvGlobal, IotlbInvDomain, IotlbInvPage, IotlbInvPageHint;
    public readonly Counter DeviceTlbInv, InterruptEntryCacheInvGlobal, InterruptEntryCacheInvIndex;
    public readonly Counter InvalidationWaits, WriteBufferFlushes;
    public readonly Counter QueueDescriptors, QueueErrors;
    public readonly Counter FaultsRecorded, FaultsCompressed, FaultsOverflowed, FaultsSuppressedByFpd;
    public readonly Counter FaultEvents, InvalidationEvents;
    public readonly Counter InterruptRequests, InterruptsRemapped, InterruptsPassedThrough, InterruptsBlocked;
    public readonly Counter DmaBlocked, DmaNotRam, DmaToInterruptRange, ProtectedRegionBlocked;
    public readonly Counter GuestRegisterErrors;    // bad sizes/offsets, reserved granularities, register invalidation while QI is on...

    readonly Counter[] _faultsByReason = new Counter[0x27];

    internal VtdCounters(string unit, CounterRegistry? registry)
    {
        Counter C(string name)
        {
            var c = new Counter($"{unit}.{name}");
            registry?.Add(c);
            return c;
        }
        Translations = C("translations");
        UntranslatedDma = C("dma.untranslated");
        PassThroughDma = C("dma.pass_through");
        IotlbHits4K = C("iotlb.hits.4k");
        IotlbHits2M = C("iotlb.hits.2m");
        IotlbHits1G = C("iotlb.hits.1g");
        IotlbMisses = C("iotlb.misses");
        IotlbFills4K = C("iotlb.fills.4k");
        IotlbFills2M = C("iotlb.fills.2m");
        IotlbFills1G = C("iotlb.fills.1g");
        IotlbEvictions = C("iotlb.evictions");
        ContextCacheHits = C("context_cache.hits");
        ContextCacheMisses = C("context_cache.misses");
        ContextCacheEvictions = C("context_cache.evictions");
        PageWalks = C("page_walks");
        PageWalkReads = C("page_walks.memory_reads");
        RootContextReads = C("context_walks.memory_reads");
        ContextInvGlobal = C("inv.context.global");
        ContextInvDomain = C("inv.context.domain");
        ContextInvDevice = C("inv.context.device");
        IotlbInvGlobal = C("inv.iotlb.global");
        IotlbInvDomain = C("inv.iotlb.domain");
        IotlbInvPage = C("inv.iotlb.page");
        IotlbInvPageHint = C("inv.iotlb.page_leaf_hint");
        DeviceTlbInv = C("inv.device_tlb");
        InterruptEntryCacheInvGlobal = C("inv.iec.global");
        InterruptEntryCacheInvIndex = C("inv.iec.index");
        InvalidationWaits = C("inv.wait");
        WriteBufferFlushes = C("write_buffer_flushes");
        QueueDescriptors = C("qi.descriptors");
        QueueErrors = C("qi.errors");
        FaultsRecorded = C("faults.recorded");
        FaultsCompressed = C("faults.compressed");
        FaultsOverflowed = C("faults.overflowed");
        FaultsSuppressedByFpd = C("faults.suppressed_fpd");
        FaultEvents = C("fault_events");
        InvalidationEvents = C("invalidation_events");
        InterruptRequests = C("ir.requests");
        InterruptsRemapped = C("ir.remapped");
        InterruptsPassedThrough = C("ir.passed_through");
        InterruptsBlocked = C("ir.blocked");
        DmaBlocked = C("dma.blocked");
        DmaNotRam = C("dma.not_ram");
        DmaToInterruptRange = C("dma.interrupt_range");
        ProtectedRegionBlocked = C("dma.protected_region_blocked");
        GuestRegisterErrors = C("guest_register_errors");
        foreach (VtdFaultReason r in Enum.GetValues<VtdFaultReason>())
        {
            if (r != VtdFaultReason.None)
            {
                _faultsByReason[(int)r] = C($"faults.reason_{(int)r:x2}");
            }
        }
    }

    /// <summary>Faults detected with <paramref name="reason"/> (recorded, compressed, overflowed or suppressed).</summary>
    public Counter FaultsByReason(VtdFaultReason reason) => _faultsByReason[(int)reason];

    internal Counter IotlbFillsFor(byte pageShift) => pageShift == 12 ? IotlbFills4K : pageShift == 21 ? IotlbFills2M : IotlbFills1G;

    internal Counter IotlbHitsFor(byte pageShift) => pageShift == 12 ? IotlbHits4K : pageShift == 21 ? IotlbHits2M : IotlbHits1G;
}
