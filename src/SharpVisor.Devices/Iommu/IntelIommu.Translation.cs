using System.Buffers;
using System.Runtime.InteropServices;
using SharpVisor.Core;

namespace SharpVisor.Devices.Iommu;

/// <summary>Legacy-mode DMA remapping (VT-d spec 3.4, 3.6, 3.7; structures 9.1 root, 9.3 context, 9.8 second-level).</summary>
public sealed partial class IntelIommu
{
    const ulong PteRead = 1UL << 0;     // 9.8: R
    const ulong PteWrite = 1UL << 1;    // 9.8: W
    const ulong PtePageSize = 1UL << 7; // 9.8: PS in SL-PDPE / SL-PDE
    const ulong PteSnoop = 1UL << 11;   // 9.8: SNP (reserved unless ECAP.SC)

    /// <summary>How one page of a DMA request was resolved.</summary>
    struct PageTranslation
    {
        public ulong Output;        // output address of the request's first byte in this page
        public ulong BytesInPage;   // bytes from the request address to the end of the translated page
        public bool Untranslated;   // TE=0 or pass-through (protected memory regions apply)
        public int PageShift;       // log2 of the translated page (12 when untranslated)
        public int Rights;          // VtdTranslationSnapshot.Read/Write: what this request's attributes may do on the page
        public Counter? Hits;       // the counter a repeated hit on this page increments
    }

    /// <summary>
    /// Translates one address (under the lock). On a fault the fault is recorded and the reason
    /// returned. Legacy mode: root → context → second level (3.4.2). Scalable mode: root →
    /// context → PASID directory → PASID entry → first level, second level or pass-through (3.4.3).
    /// </summary>
    /// <param name="withRights">Also work out <see cref="PageTranslation.Rights"/> (for the snapshot; only the first page of a request needs it).</param>
    VtdFaultReason TranslateLocked(in VtdRequest request, ulong address, out PageTranslation result, bool withRights = false)
    {
        result = default;
        if (!TranslationEnabled)
        {
            Counters.UntranslatedDma.Increment();
            result.Output = address;
            result.BytesInPage = 4096 - (address & 0xFFF);
            result.Untranslated = true;
            result.PageShift = 12;
            result.Rights = VtdTranslationSnapshot.Read | VtdTranslationSnapshot.Write;
            result.Hits = Counters.UntranslatedDma;
            return VtdFaultReason.None;
        }
        Counters.Translations.Increment();
        var reason = ResolveLocked(in request, address, out var hit, out var kind, out bool fpd, out bool writeProtect);
        if (reason == VtdFaultReason.None)
        {
            if (kind == ResolvedKind.PassThrough)
            {
                // Legacy TT=10b (9.3) or scalable PGTT=100b (9.6): output = input (ECAP.PT).
                Counters.PassThroughDma.Increment();
                result.Output = address;
                result.BytesInPage = 4096 - (address & 0xFFF);
                result.Untranslated = true;
                result.PageShift = 12;
                result.Rights = VtdTranslationSnapshot.Read | VtdTranslationSnapshot.Write;
                result.Hits = Counters.PassThroughDma;
                return VtdFaultReason.None;
            }
            reason = CheckAccess(in request, in hit, kind, writeProtect);
            if (reason == VtdFaultReason.None)
            {
                ulong offset = address & ((1UL << hit.PageShift) - 1);
                result.Output = hit.OutputBase + offset;
                result.BytesInPage = (1UL << hit.PageShift) - offset;
                result.PageShift = hit.PageShift;
                if (!withRights)
                {
                    return VtdFaultReason.None;
                }
                result.Hits = Counters.IotlbHitsFor(hit.PageShift);
                // The other direction too, so the snapshot answers both; a first-level write needs
                // the leaf's D flag already set (else it must walk again to set it, 3.6.2).
                var other = request;
                other.Write = !request.Write;
                bool otherAllowed = CheckAccess(in other, in hit, kind, writeProtect) == VtdFaultReason.None
                    && (!other.Write || kind != ResolvedKind.FirstLevel || (hit.Flags & VtdIotlbEntry.FlagDirty) != 0);
                result.Rights = (request.Write ? VtdTranslationSnapshot.Write : VtdTranslationSnapshot.Read)
                    | (otherAllowed ? (other.Write ? VtdTranslationSnapshot.Write : VtdTranslationSnapshot.Read) : 0);
            }
        }
        if (reason != VtdFaultReason.None)
        {
            Counters.DmaBlocked.Increment();
            RecordFault(request.SourceId, address, reason, !request.Write, fpd, ActivePasidForRecord(in request));
        }
        return reason;
    }

    /// <summary>The PASID a fault record names (11.4.9.7 PP/PV): only requests-with-PASID carry one.</summary>
    static uint ActivePasidForRecord(in VtdRequest request) => request.HasPasid ? request.Pasid : VtdIotlbEntry.NoPasid;

    /// <summary>Finds the context entry of a source-id: context cache, else root table → context table (3.4.2).</summary>
    VtdFaultReason LookupContext(ushort sid, out VtdContext context, out bool fpd)
    {
        fpd = false;
        if (_activeTableMode > 1)
        {
            // RTADDR.TTM 10b is reserved and 11b (abort-DMA mode) is not advertised (11.4.5).
            context = default;
            return VtdFaultReason.SmRootTableTypeInvalid;
        }
        bool scalable = _activeTableMode == 1;
        if (_contextCache.TryGet(sid, out context) && context.Scalable == scalable)
        {
            Counters.ContextCacheHits.Increment();
            fpd = context.FaultProcessingDisable;
            return VtdFaultReason.None;
        }
        Counters.ContextCacheMisses.Increment();
        if (scalable)
        {
            return LookupScalableContext(sid, out context, out fpd);
        }

        // Root entry (9.1): bit 0 P, bits 11:1 reserved, 63:12 CTP; bits 127:64 reserved in legacy mode.
        Span<ulong> entry = stackalloc ulong[2];
        Counters.RootContextReads.Increment();
        if (!_ram.TryRead(_activeRootTable + (ulong)(sid >> 8) * 16, MemoryMarshal.AsBytes(entry)))
        {
            return VtdFaultReason.RootTableAccessError;
        }
        if ((entry[0] & 1) == 0)
        {
            return VtdFaultReason.RootEntryNotPresent;
        }
        if ((entry[0] & (0xFFEUL | _beyondHaw | ~((1UL << 52) - 1))) != 0 || entry[1] != 0)
        {
            return VtdFaultReason.RootEntryReserved;
        }
        ulong contextTable = entry[0] & _hawPageMask;

        // Context entry (9.3): lo bit 0 P, 1 FPD, 3:2 TT, 11:4 reserved, 63:12 SLPTPTR;
        // hi 2:0 AW, 6:3 ignored, 7 reserved, 23:8 DID, 63:24 reserved.
        Counters.RootContextReads.Increment();
        if (!_ram.TryRead(contextTable + (ulong)(sid & 0xFF) * 16, MemoryMarshal.AsBytes(entry)))
        {
            return VtdFaultReason.ContextTableAccessError;
        }
        ulong lo = entry[0], hi = entry[1];
        fpd = (lo & 2) != 0;
        if ((lo & 1) == 0)
        {
            return VtdFaultReason.ContextEntryNotPresent;
        }
        if ((lo & (0xFF0UL | _beyondHaw | ~((1UL << 52) - 1))) != 0 || (hi & ~0xFF_FF7FUL) != 0)
        {
            return VtdFaultReason.ContextEntryReserved;
        }
        int tt = (int)(lo >> 2) & 3;
        // TT=01b (translation and translated requests allowed) needs ECAP.DT; TT=10b needs ECAP.PT.
        bool ttOk = tt == 0 || (tt == 1 && _options.DeviceTlb) || (tt == 2 && _options.PassThrough);
        int aw = (int)(hi & 7);
        // AW (9.3): 001b 39-bit/3-level, 010b 48-bit/4-level, 011b 57-bit/5-level; must be in SAGAW.
        bool awOk = aw is >= 1 and <= 3 && ((int)_options.SupportedAgaw & (1 << aw)) != 0;
        if (!ttOk || (tt != 2 && !awOk))
        {
            return VtdFaultReason.ContextEntryInvalid;
        }
        context = new VtdContext
        {
            SourceId = sid,
            DomainId = (ushort)(hi >> 8),
            TranslationType = (byte)tt,
            DeviceTlbEnabled = tt == 1,
            Levels = (byte)(aw + 2),
            FaultProcessingDisable = fpd,
            SlptPointer = lo & _hawPageMask,
        };
        // Only present, valid entries are cached (in caching mode this is required, 6.1).
        if (_contextCache.Insert(in context))
        {
            Counters.ContextCacheEvictions.Increment();
        }
        return VtdFaultReason.None;
    }

    /// <summary>
    /// Second-level translation of one address through the IOTLB (legacy mode, and scalable mode
    /// with PGTT=010b): the address-width check (3.6), then the IOTLB, else a walk that fills it.
    /// </summary>
    VtdFaultReason LookupSecondLevel(in VtdContext context, ulong address, bool isWrite, bool scalable, out VtdIotlbEntry hit)
    {
        // 3.6: the input address must fit min(AGAW of the domain, MGAW).
        int inputBits = Math.Min(12 + 9 * context.Levels, _options.MaxGuestAddressWidth); // 3 levels: 39 bits
        if (inputBits < 64 && (address >> inputBits) != 0)
        {
            hit = default;
            return scalable ? VtdFaultReason.SmAddressBeyondWidth : VtdFaultReason.AddressBeyondAgaw;
        }
        if (_iotlb.TryGet(context.DomainId, VtdIotlbEntry.NoPasid, address, out hit))
        {
            Counters.IotlbHitsFor(hit.PageShift).Increment();
            return VtdFaultReason.None;
        }
        Counters.IotlbMisses.Increment();
        Counters.SecondLevelWalks.Increment();
        var reason = WalkSecondLevel(in context, address, isWrite, out hit);
        if (reason != VtdFaultReason.None)
        {
            return scalable ? ScalableSecondLevelReason(reason) : reason;
        }
        Counters.IotlbFillsFor(hit.PageShift).Increment();
        if (_iotlb.Insert(in hit))
        {
            Counters.IotlbEvictions.Increment();
        }
        return VtdFaultReason.None;
    }

    /// <summary>The scalable-mode fault reasons (7.1.3, SSS/SGN rows) for the legacy second-level ones.</summary>
    static VtdFaultReason ScalableSecondLevelReason(VtdFaultReason legacy) => legacy switch
    {
        VtdFaultReason.PagingEntryAccessError => VtdFaultReason.SmSecondLevelAccessError,
        VtdFaultReason.PagingEntryReserved => VtdFaultReason.SmSecondLevelReserved,
        VtdFaultReason.ReadNotPermitted => VtdFaultReason.SmReadNotPermitted,
        VtdFaultReason.WriteNotPermitted => VtdFaultReason.SmWriteNotPermitted,
        _ => legacy,
    };

    /// <summary>Walks the second-level tables (3.6, 9.8) for a present translation of <paramref name="address"/>.</summary>
    VtdFaultReason WalkSecondLevel(in VtdContext context, ulong address, bool isWrite, out VtdIotlbEntry entry)
    {
        entry = default;
        Counters.PageWalks.Increment();
        ulong table = context.SlptPointer;
        ulong permissions = PteRead | PteWrite;
        int top = context.Levels;
        if (TryPagingStructureCache(context.DomainId, VtdIotlbEntry.NoPasid, context.SlptPointer, context.Levels, address, out var cached))
        {
            // 6.2.5: start below the deepest cached non-leaf entry, with the rights it accumulated.
            top = cached.Level - 1;
            table = cached.NextTable;
            permissions = cached.Permissions;
        }
        ulong startPermissions = permissions;
        Span<ulong> nonLeaf = stackalloc ulong[5];
        int walked = 0;
        for (int level = top; level >= 1; level--)
        {
            int shift = 12 + 9 * (level - 1);
            ulong pte = 0;
            Counters.PageWalkReads.Increment();
            if (!_ram.TryRead(table + ((address >> shift) & 511) * 8, MemoryMarshal.AsBytes(new Span<ulong>(ref pte))))
            {
                return VtdFaultReason.PagingEntryAccessError;
            }
            // An entry with R=W=0 is not present (9.8); the fault names the access that was refused.
            if ((pte & (PteRead | PteWrite)) == 0)
            {
                return isWrite ? VtdFaultReason.WriteNotPermitted : VtdFaultReason.ReadNotPermitted;
            }
            bool leaf = level == 1 || (pte & PtePageSize) != 0;
            ulong reserved = _beyondHaw;
            if (level > 1 && (pte & PtePageSize) != 0)
            {
                bool supported = (level == 2 && _options.Superpages2M) || (level == 3 && _options.Superpages1G);
                if (!supported)
                {
                    // PS in a PML5E/PML4E, or a superpage size CAP.SLLPS does not list: reserved.
                    return VtdFaultReason.PagingEntryReserved;
                }
                reserved |= ((1UL << shift) - 1) & PageMask4K; // address bits below the superpage size
            }
            if (leaf && !_options.SnoopControl)
            {
                reserved |= PteSnoop;
            }
            if ((pte & reserved) != 0)
            {
                return VtdFaultReason.PagingEntryReserved;
            }
            permissions &= pte;
            if (leaf)
            {
                entry = new VtdIotlbEntry
                {
                    DomainId = context.DomainId,
                    PasidTag = VtdIotlbEntry.NoPasid,
                    PageShift = (byte)shift,
                    Permissions = (byte)(permissions & 3),
                    PageNumber = address >> shift,
                    OutputBase = pte & _hawPageMask & ~((1UL << shift) - 1),
                };
                FillPagingStructureCache(context.DomainId, VtdIotlbEntry.NoPasid, context.SlptPointer, context.Levels, address, top,
                    nonLeaf[..walked], (byte)(startPermissions & 3), 0, firstLevel: false);
                return VtdFaultReason.None;
            }
            nonLeaf[walked++] = pte;
            table = pte & _hawPageMask;
        }
        return VtdFaultReason.PagingEntryAccessError; // unreachable: level 1 is always a leaf
    }

    /// <summary>
    /// Finds the deepest cached non-leaf entry (PDE first, then PDPE, PML4E, PML5E: 6.2.5) on the
    /// way to <paramref name="address"/> in the tables rooted at <paramref name="tableRoot"/>.
    /// </summary>
    bool TryPagingStructureCache(ushort domainId, uint pasidTag, ulong tableRoot, int levels, ulong address, out VtdPscEntry cached)
    {
        if (_psc is not null)
        {
            for (int level = 2; level <= levels; level++)
            {
                if (_psc.TryGet(domainId, pasidTag, tableRoot, (byte)levels, (byte)level, address, out cached))
                {
                    Counters.PscHitsFor(level).Increment();
                    return true;
                }
            }
            Counters.PscMisses.Increment();
        }
        cached = default;
        return false;
    }

    /// <summary>
    /// Caches the non-leaf entries a successful walk read (<paramref name="nonLeaf"/>, from level
    /// <paramref name="topLevel"/> down), each with the rights accumulated down to it. Only present,
    /// valid entries of a walk that reached its leaf get here (6.2.4; a not-present or faulting
    /// entry is never cached, in caching mode or not).
    /// </summary>
    void FillPagingStructureCache(ushort domainId, uint pasidTag, ulong tableRoot, int levels, ulong address, int topLevel,
        ReadOnlySpan<ulong> nonLeaf, byte permissions, byte flags, bool firstLevel)
    {
        if (_psc is null)
        {
            return;
        }
        for (int i = 0; i < nonLeaf.Length; i++)
        {
            ulong pte = nonLeaf[i];
            int level = topLevel - i;
            if (firstLevel)
            {
                // 9.7: R/W and U/S ANDed, XD ORed along the walk; every present entry is readable.
                permissions &= (byte)(1 | (pte & FlWrite));
                if ((pte & FlUser) == 0) flags &= unchecked((byte)~VtdIotlbEntry.FlagUser);
                if ((pte & FlExecuteDisable) != 0) flags &= unchecked((byte)~VtdIotlbEntry.FlagExecute);
            }
            else
            {
                permissions &= (byte)(pte & (PteRead | PteWrite));
            }
            var entry = new VtdPscEntry
            {
                DomainId = domainId,
                PasidTag = pasidTag,
                Level = (byte)level,
                Levels = (byte)levels,
                Permissions = permissions,
                Flags = flags,
                Prefix = address >> (12 + 9 * (level - 1)),
                TableRoot = tableRoot,
                NextTable = pte & _hawPageMask,
            };
            Counters.PscFills.Increment();
            if (_psc.Insert(in entry))
            {
                Counters.PscEvictions.Increment();
            }
        }
    }

    // ================= DMA =================

    const int StackChunks = 16;

    internal DmaStatus DmaRead(VtdDmaSpace space, ulong address, Span<byte> destination)
    {
        if (destination.Length == 0)
        {
            return DmaStatus.Ok;
        }
        if (space.Snapshot.TryTranslate(address, (ulong)destination.Length, VtdTranslationSnapshot.Read, Volatile.Read(ref _translationGeneration), out ulong output))
        {
            return _ram.TryRead(output, destination) ? DmaStatus.Ok : NotRamOnFastPath();
        }
        var request = space.Request;
        if (TouchesInterruptRange(address, destination.Length))
        {
            // 3.14: reads of the interrupt address range are not DMA. With translation on they are
            // blocked and, as QEMU does, reported as a read fault; without it there is simply no
            // memory there.
            bool translating;
            lock (_lock)
            {
                Counters.DmaToInterruptRange.Increment();
                translating = TranslationEnabled;
                if (translating)
                {
                    Counters.DmaBlocked.Increment();
                    RecordFault(request.SourceId, address, _activeTableMode == 1 ? VtdFaultReason.SmReadNotPermitted : VtdFaultReason.ReadNotPermitted,
                        isRead: true, faultProcessingDisabled: false, ActivePasidForRecord(in request));
                }
            }
            DrainOutbox();
            return translating ? DmaStatus.Blocked : DmaStatus.NotRam;
        }
        int pages = PageCount(address, destination.Length);
        ulong[]? rented = pages > StackChunks && pages != int.MaxValue ? ArrayPool<ulong>.Shared.Rent(pages * 2) : null;
        Span<ulong> chunks = rented ?? stackalloc ulong[StackChunks * 2];
        try
        {
            request.Write = false;
            var status = TranslateRange(in request, address, (ulong)destination.Length, chunks, out int count, space.Snapshot);
            if (status != DmaStatus.Ok)
            {
                return status;
            }
            int done = 0;
            for (int i = 0; i < count; i++)
            {
                int len = (int)chunks[2 * i + 1];
                _ram.TryRead(chunks[2 * i], destination.Slice(done, len));
                done += len;
            }
            return DmaStatus.Ok;
        }
        finally
        {
            if (rented != null)
            {
                ArrayPool<ulong>.Shared.Return(rented);
            }
        }
    }

    internal DmaStatus DmaWrite(VtdDmaSpace space, ulong address, ReadOnlySpan<byte> source)
    {
        if (source.Length == 0)
        {
            return DmaStatus.Ok;
        }
        if (space.Snapshot.TryTranslate(address, (ulong)source.Length, VtdTranslationSnapshot.Write, Volatile.Read(ref _translationGeneration), out ulong output))
        {
            return _ram.TryWrite(output, source) ? DmaStatus.Ok : NotRamOnFastPath();
        }
        var request = space.Request;
        if (TouchesInterruptRange(address, source.Length))
        {
            return InterruptRangeWrite(request.SourceId, address, source);
        }
        int pages = PageCount(address, source.Length);
        ulong[]? rented = pages > StackChunks && pages != int.MaxValue ? ArrayPool<ulong>.Shared.Rent(pages * 2) : null;
        Span<ulong> chunks = rented ?? stackalloc ulong[StackChunks * 2];
        try
        {
            request.Write = true;
            var status = TranslateRange(in request, address, (ulong)source.Length, chunks, out int count, space.Snapshot);
            if (status != DmaStatus.Ok)
            {
                return status;
            }
            int done = 0;
            for (int i = 0; i < count; i++)
            {
                int len = (int)chunks[2 * i + 1];
                _ram.TryWrite(chunks[2 * i], source.Slice(done, len));
                done += len;
            }
            return DmaStatus.Ok;
        }
        finally
        {
            if (rented != null)
            {
                ArrayPool<ulong>.Shared.Return(rented);
            }
        }
    }

    /// <summary>
    /// 3.14: a DWORD write to 0xFEEx_xxxx is an interrupt request, never DMA; it goes to interrupt
    /// remapping. Anything else aimed at the range is blocked and counted.
    /// </summary>
    DmaStatus InterruptRangeWrite(ushort sid, ulong address, ReadOnlySpan<byte> source)
    {
        Counters.DmaToInterruptRange.Increment();
        if (source.Length == 4 && (address & 3) == 0 && MsiMessage.IsInterruptAddress(address))
        {
            InterruptRemapper.SendMsi(address, BitConverter.ToUInt32(source), sid);
            return DmaStatus.Ok;
        }
        Counters.DmaBlocked.Increment();
        Log.Once($"{Name}.irange_write", Name, $"non-DWORD DMA write of {source.Length} bytes to interrupt address 0x{address:x} from {sid:x4} blocked");
        return DmaStatus.Blocked;
    }

    /// <summary>Remembers the first page of a request for the fast path (under the lock).</summary>
    void FillSnapshot(VtdTranslationSnapshot snapshot, ulong address, in PageTranslation page)
    {
        ulong pageMask = (1UL << page.PageShift) - 1;
        ulong inputBase = address & ~pageMask;
        ulong outputBase = page.Output - (address & pageMask);
        // Never hold a page a later request could not use without the slow path's checks: one in
        // the interrupt address range, or an untranslated one touching a protected region.
        if (page.Hits is null || TouchesInterruptRange(inputBase, (int)Math.Min(pageMask + 1, int.MaxValue))
            || (page.Untranslated && HitsProtectedRegion(outputBase, pageMask + 1)))
        {
            snapshot.Clear();
            return;
        }
        snapshot.Fill(_translationGeneration, inputBase, page.PageShift, outputBase, page.Rights, page.Hits,
            page.Untranslated && !TranslationEnabled ? null : Counters.Translations);
    }

    static bool TouchesInterruptRange(ulong address, int length)
    {
        ulong last = address + (ulong)length - 1;
        return last >= address && address <= (MsiMessage.AddressBase | 0xF_FFFF) && last >= MsiMessage.AddressBase;
    }

    static int PageCount(ulong address, int length)
    {
        ulong last = address + (ulong)length - 1;
        return last < address ? int.MaxValue : (int)((last >> 12) - (address >> 12) + 1);
    }

    /// <summary>
    /// Translates every page of a request before any byte moves, so a fault anywhere leaves memory
    /// untouched. <paramref name="chunks"/> receives (output address, length) pairs.
    /// </summary>
    /// <summary>
    /// A snapshot hit whose output is not RAM: as the slow path, counted and "not RAM". (The
    /// interrupt address range never gets here: requests touching it are checked before the
    /// snapshot, and the snapshot never holds it.)
    /// </summary>
    DmaStatus NotRamOnFastPath()
    {
        Counters.DmaNotRam.Increment();
        return DmaStatus.NotRam;
    }

    /// <summary>
    /// Bumped (under the lock) by everything that can change what a translation resolves to or
    /// whether it may be cached: every register write (GCMD.TE/SRTP, RTADDR, PMEN/PLMx/PHMx,
    /// CCMD/IOTLB register invalidations) and every run of the invalidation queue. Each
    /// <see cref="VtdTranslationSnapshot"/> is valid only for the generation it was filled in, so
    /// an invalidation takes effect for the lock-free fast path before its completion (register
    /// bit clearing or wait-descriptor status) becomes visible.
    /// </summary>
    long _translationGeneration;

    void InvalidateSnapshots() => Volatile.Write(ref _translationGeneration, _translationGeneration + 1);

    DmaStatus TranslateRange(in VtdRequest request, ulong address, ulong length, Span<ulong> chunks, out int count, VtdTranslationSnapshot? snapshot = null)
    {
        count = 0;
        var status = DmaStatus.Ok;
        lock (_lock)
        {
            if (address + length - 1 < address)
            {
                // The request wraps the 64-bit space: beyond any address width.
                Counters.DmaBlocked.Increment();
                if (TranslationEnabled)
                {
                    RecordFault(request.SourceId, address, _activeTableMode == 1 ? VtdFaultReason.SmAddressBeyondWidth : VtdFaultReason.AddressBeyondAgaw, !request.Write, false, ActivePasidForRecord(in request));
                }
                status = DmaStatus.Blocked;
            }
            else
            {
                ulong at = address, remaining = length;
                while (remaining > 0)
                {
                    if (TranslateLocked(in request, at, out var page, withRights: at == address && snapshot is not null) != VtdFaultReason.None)
                    {
                        status = DmaStatus.Blocked;
                        break;
                    }
                    ulong len = Math.Min(remaining, page.BytesInPage);
                    if (page.Untranslated && HitsProtectedRegion(page.Output, len))
                    {
                        Counters.ProtectedRegionBlocked.Increment();
                        Counters.DmaBlocked.Increment();
                        status = DmaStatus.Blocked;
                        break;
                    }
                    if (at == address && snapshot is not null)
                    {
                        FillSnapshot(snapshot, address, in page);
                    }
                    if (!_ram.IsRamRange(page.Output, len))
                    {
                        Counters.DmaNotRam.Increment();
                        status = DmaStatus.NotRam;
                        break;
                    }
                    if (count > 0 && chunks[2 * count - 2] + chunks[2 * count - 1] == page.Output)
                    {
                        chunks[2 * count - 1] += len; // physically contiguous with the previous chunk
                    }
                    else
                    {
                        chunks[2 * count] = page.Output;
                        chunks[2 * count + 1] = len;
                        count++;
                    }
                    at += len;
                    remaining -= len;
                }
            }
        }
        DrainOutbox();
        return status;
    }
}

/// <summary>
/// The DMA address space of one requester behind a VT-d unit: untranslated requests, without a
/// PASID or (scalable mode) with one, optionally with the privileged-mode attribute.
/// </summary>
internal sealed class VtdDmaSpace(IntelIommu unit, VtdRequest request) : IDmaSpace
{
    public ushort RequesterId => request.SourceId;
    public VtdRequest Request => request;
    /// <summary>The last page this requester translated: the lock-free fast path.</summary>
    public readonly VtdTranslationSnapshot Snapshot = new();
    public DmaStatus Read(ulong address, Span<byte> destination) => unit.DmaRead(this, address, destination);
    public DmaStatus Write(ulong address, ReadOnlySpan<byte> source) => unit.DmaWrite(this, address, source);
}

/// <summary>
/// One requester's last successful page translation, read without the unit's lock: a DMA that
/// falls wholly inside that page with a right the snapshot holds needs neither the lock, the
/// context cache nor the IOTLB. It is another translation cache, so it lives by the same rule as
/// the IOTLB: valid until an invalidation — here any change of the unit's
/// translation generation, which every register write and queue run bumps before its effects
/// (and completions) are visible. Filled only under the unit's lock (one writer at a time);
/// readers use a sequence count (odd while a fill is under way) so they never see a torn entry.
/// </summary>
internal sealed class VtdTranslationSnapshot
{
    public const int Read = 1, Write = 2;

    int _sequence;
    long _generation = -1;
    ulong _inputBase;
    int _pageShift;
    ulong _outputBase;
    int _rights;
    Counter? _hits;
    Counter? _translations;

    public bool TryTranslate(ulong address, ulong length, int right, long generation, out ulong output)
    {
        output = 0;
        int sequence = Volatile.Read(ref _sequence);
        long filledIn = Volatile.Read(ref _generation);
        ulong inputBase = Volatile.Read(ref _inputBase);
        int shift = Volatile.Read(ref _pageShift);
        ulong outputBase = Volatile.Read(ref _outputBase);
        int rights = Volatile.Read(ref _rights);
        var hits = Volatile.Read(ref _hits);
        var translations = Volatile.Read(ref _translations);
        if ((sequence & 1) != 0 || Volatile.Read(ref _sequence) != sequence || filledIn != generation || (rights & right) == 0 || hits is null)
        {
            return false;
        }
        ulong last = address + length - 1;
        if (last < address || (address >> shift) != (inputBase >> shift) || (last >> shift) != (inputBase >> shift))
        {
            return false;
        }
        output = outputBase + (address - inputBase);
        translations?.Increment();
        hits.Increment();
        return true;
    }

    public void Fill(long generation, ulong inputBase, int pageShift, ulong outputBase, int rights, Counter hits, Counter? translations)
    {
        // Odd: readers fall back to the slow path. Every store below is a release, so none can
        // become visible before this one; the final even store publishes the whole entry.
        Volatile.Write(ref _sequence, _sequence + 1);
        Volatile.Write(ref _generation, generation);
        Volatile.Write(ref _inputBase, inputBase);
        Volatile.Write(ref _pageShift, pageShift);
        Volatile.Write(ref _outputBase, outputBase);
        Volatile.Write(ref _rights, rights);
        Volatile.Write(ref _hits, hits);
        Volatile.Write(ref _translations, translations);
        Volatile.Write(ref _sequence, _sequence + 1);
    }

    public void Clear()
    {
        Volatile.Write(ref _sequence, _sequence + 1);
        Volatile.Write(ref _rights, 0);
        Volatile.Write(ref _sequence, _sequence + 1);
    }
}

/// <summary>The attributes of one DMA request that translation depends on (PCIe TLP requester id and PASID prefix).</summary>
internal struct VtdRequest
{
    public ushort SourceId;
    public bool HasPasid;
    /// <summary>The PASID of a request-with-PASID (20 bits).</summary>
    public uint Pasid;
    public bool Write;
    /// <summary>PASID prefix PMR (privileged-mode requested): a supervisor request.</summary>
    public bool Privileged;
    /// <summary>PASID prefix ER (execute requested).</summary>
    public bool Execute;

    public static VtdRequest WithoutPasid(ushort sid) => new() { SourceId = sid, Pasid = VtdIotlbEntry.NoPasid };
}
