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
    public readonly Counter GuestRegisterErrors;
    // Scalable mode and ATS.
    public readonly Counter PasidCacheHits, PasidCacheMisses, PasidCacheEvictions;
    public readonly Counter PasidTableReads;        // PASID directory / table entry reads from guest RAM
    public readonly Counter FirstLevelWalks, SecondLevelWalks;
    public readonly Counter AccessedDirtyUpdates;   // first-level A/D/EA flags set by the unit
    public readonly Counter PasidCacheInvGlobal, PasidCacheInvDomain, PasidCacheInvPasid;
    public readonly Counter PasidIotlbInvPasid, PasidIotlbInvPage;
    public readonly Counter DeviceTlbInvPasid, DeviceTlbInvForwarded, DeviceTlbInvNoEndpoint;
    public readonly Counter DeviceTlbCompletions, DeviceTlbLateCompletions, DeviceTlbTimeouts, QueueStalls;
    public readonly Counter AtsTranslationRequests, AtsTranslationDenied, AtsUnsupportedRequests;
    public readonly Counter TranslatedRequests, TranslatedRequestsBlocked;    // bad sizes/offsets, reserved granularities, register invalidation while QI is on...
    // Paging-structure caches (6.2.4): walks that started below a cached PDE/PDPE/PML4E/PML5E, walks that found none.
    public readonly Counter PscHitsPde, PscHitsPdpe, PscHitsPml4e, PscHitsPml5e, PscMisses;
    public readonly Counter PscFills, PscEvictions;
    public readonly Counter PscEntriesInvalidated;  // entries dropped by invalidations
    public readonly Counter PscKeptByHint;          // page-selective invalidations with IH=1 that left the PSC alone

    readonly Counter[] _faultsByReason = new Counter[0x100];

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
        PasidCacheHits = C("pasid_cache.hits");
        PasidCacheMisses = C("pasid_cache.misses");
        PasidCacheEvictions = C("pasid_cache.evictions");
        PasidTableReads = C("pasid_walks.memory_reads");
        FirstLevelWalks = C("page_walks.first_level");
        SecondLevelWalks = C("page_walks.second_level");
        AccessedDirtyUpdates = C("page_walks.ad_updates");
        PasidCacheInvGlobal = C("inv.pasid_cache.global");
        PasidCacheInvDomain = C("inv.pasid_cache.domain");
        PasidCacheInvPasid = C("inv.pasid_cache.pasid");
        PasidIotlbInvPasid = C("inv.p_iotlb.pasid");
        PasidIotlbInvPage = C("inv.p_iotlb.page");
        DeviceTlbInvPasid = C("inv.device_tlb_pasid");
        DeviceTlbInvForwarded = C("ats.invalidations_forwarded");
        DeviceTlbInvNoEndpoint = C("ats.invalidations_no_endpoint");
        DeviceTlbCompletions = C("ats.invalidation_completions");
        DeviceTlbLateCompletions = C("ats.invalidation_completions_late");
        DeviceTlbTimeouts = C("ats.invalidation_timeouts");
        QueueStalls = C("qi.stalls");
        AtsTranslationRequests = C("ats.translation_requests");
        AtsTranslationDenied = C("ats.translation_denied");
        AtsUnsupportedRequests = C("ats.unsupported_requests");
        TranslatedRequests = C("ats.translated_requests");
        TranslatedRequestsBlocked = C("ats.translated_requests_blocked");
        PscHitsPde = C("psc.hits.pde");
        PscHitsPdpe = C("psc.hits.pdpe");
        PscHitsPml4e = C("psc.hits.pml4e");
        PscHitsPml5e = C("psc.hits.pml5e");
        PscMisses = C("psc.misses");
        PscFills = C("psc.fills");
        PscEvictions = C("psc.evictions");
        PscEntriesInvalidated = C("psc.invalidated_entries");
        PscKeptByHint = C("psc.kept_by_hint");
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

    /// <summary>The hit counter of the paging-structure cache of <paramref name="level"/> (2 PDE .. 5 PML5E).</summary>
    internal Counter PscHitsFor(int level) => level switch { 2 => PscHitsPde, 3 => PscHitsPdpe, 4 => PscHitsPml4e, _ => PscHitsPml5e };

    internal Counter IotlbHitsFor(byte pageShift) => pageShift == 12 ? IotlbHits4K : pageShift == 21 ? IotlbHits2M : IotlbHits1G;
}
