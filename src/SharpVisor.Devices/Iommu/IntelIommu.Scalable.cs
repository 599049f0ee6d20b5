using System.Runtime.InteropServices;
using SharpVisor.Core;

namespace SharpVisor.Devices.Iommu;

/// <summary>
/// Scalable-mode DMA remapping (VT-d spec 3.4.3, 3.6, 3.7, 3.8): scalable-mode root entries (9.2),
/// 256-bit context entries (9.4), the PASID directory (9.5) and 512-bit PASID entries (9.6), and
/// first-level translation in the IA-32e paging format (9.7).
/// </summary>
public sealed partial class IntelIommu
{
    // First-level paging entry bits (9.7, the IA-32e format).
    const ulong FlPresent = 1UL << 0;
    const ulong FlWrite = 1UL << 1;           // R/W
    const ulong FlUser = 1UL << 2;            // U/S
    const ulong FlAccessed = 1UL << 5;
    const ulong FlDirty = 1UL << 6;
    const ulong FlPageSize = 1UL << 7;
    const ulong FlExtendedAccessed = 1UL << 10; // EA, set when the PASID entry's EAFE is 1
    const ulong FlExecuteDisable = 1UL << 63;

    // PASID entry translation types (9.6, PGTT bits 8:6).
    const int PgttFirstLevel = 1, PgttSecondLevel = 2, PgttNested = 3, PgttPassThrough = 4;

    enum ResolvedKind : byte { Legacy, SecondLevel, FirstLevel, PassThrough }

    /// <summary>
    /// Resolves the page holding <paramref name="address"/> for a request (under the lock) without
    /// checking the request's access rights: the context (and PASID) entry, then the IOTLB or a
    /// walk. Shared by DMA and ATS translation requests.
    /// </summary>
    VtdFaultReason ResolveLocked(in VtdRequest request, ulong address, out VtdIotlbEntry hit, out ResolvedKind kind, out bool fpd, out bool writeProtect)
    {
        hit = default;
        kind = ResolvedKind.Legacy;
        writeProtect = false;
        var reason = LookupContext(request.SourceId, out var context, out fpd);
        if (reason != VtdFaultReason.None)
        {
            return reason;
        }
        if (!context.Scalable)
        {
            // Legacy mode knows no PASIDs: the PASID prefix is ignored (3.4.2).
            if (context.TranslationType == 2)
            {
                kind = ResolvedKind.PassThrough;
                return VtdFaultReason.None;
            }
            return LookupSecondLevel(in context, address, request.Write, scalable: false, out hit);
        }

        // 3.4.3: requests-without-PASID use the context entry's RID_PASID.
        if (request.HasPasid && !context.PasidEnabled)
        {
            return VtdFaultReason.SmPasidDisabled;
        }
        uint pasid = request.HasPasid ? request.Pasid : context.RidPasid;
        reason = LookupPasidEntry(in context, request.SourceId, pasid, out var entry, ref fpd);
        if (reason != VtdFaultReason.None)
        {
            return reason;
        }
        if (request.Privileged && !entry.SupervisorRequests)
        {
            return VtdFaultReason.PasidSupervisorDisabled;   // SPT.5
        }
        if (request.Execute && !entry.ExecuteRequests)
        {
            return VtdFaultReason.PasidExecuteDisabled;      // SPT.6
        }
        writeProtect = entry.WriteProtect;
        switch (entry.Pgtt)
        {
            case PgttPassThrough:
                kind = ResolvedKind.PassThrough;
                return VtdFaultReason.None;
            case PgttSecondLevel:
                {
                    kind = ResolvedKind.SecondLevel;
                    var sl = new VtdContext { DomainId = entry.DomainId, Levels = entry.SecondLevelLevels, SlptPointer = entry.SlptPointer };
                    return LookupSecondLevel(in sl, address, request.Write, scalable: true, out hit);
                }
            default:
                kind = ResolvedKind.FirstLevel;
                return LookupFirstLevel(in entry, pasid, in request, address, out hit);
        }
    }

    /// <summary>Checks a request's rights against a resolved page (3.6.1 first-level, 3.7.1 second-level access rights).</summary>
    static VtdFaultReason CheckAccess(in VtdRequest request, in VtdIotlbEntry hit, ResolvedKind kind, bool writeProtect)
    {
        bool readable = (hit.Permissions & 1) != 0, writable = (hit.Permissions & 2) != 0;
        if (kind != ResolvedKind.FirstLevel)
        {
            bool scalable = kind == ResolvedKind.SecondLevel;
            if (request.Write && !writable)
            {
                return scalable ? VtdFaultReason.SmWriteNotPermitted : VtdFaultReason.WriteNotPermitted;
            }
            if (!request.Write && !readable)
            {
                return scalable ? VtdFaultReason.SmReadNotPermitted : VtdFaultReason.ReadNotPermitted;
            }
            return VtdFaultReason.None;
        }
        // First level: every present page is readable. Requests without the privileged attribute
        // are user requests and need U/S=1 along the walk (QEMU and Linux rely on this: Linux sets
        // U/S in every first-level entry it builds for DMA, DMA_FL_PTE_US).
        if (!request.Privileged && (hit.Flags & VtdIotlbEntry.FlagUser) == 0)
        {
            return VtdFaultReason.SmPrivilegeViolation;
        }
        // A supervisor write to a read-only page is allowed unless WPE is set (like CR0.WP=0).
        if (request.Write && !writable && (!request.Privileged || writeProtect))
        {
            return VtdFaultReason.SmWriteNotPermitted;
        }
        if (request.Execute && (hit.Flags & VtdIotlbEntry.FlagExecute) == 0)
        {
            return VtdFaultReason.SmExecuteViolation;
        }
        return VtdFaultReason.None;
    }

    /// <summary>Reads and checks a scalable-mode root entry (9.2) and context entry (9.4), then caches the context.</summary>
    VtdFaultReason LookupScalableContext(ushort sid, out VtdContext context, out bool fpd)
    {
        context = default;
        fpd = false;
        // Root entry (9.2): bit 0 LP, 63:12 LCTP (devfn 0-127); bit 64 UP, 127:76 UCTP (devfn 128-255);
        // bits 11:1 and 75:65 reserved.
        Span<ulong> root = stackalloc ulong[2];
        Counters.RootContextReads.Increment();
        if (!_ram.TryRead(_activeRootTable + (ulong)(sid >> 8) * 16, MemoryMarshal.AsBytes(root)))
        {
            return VtdFaultReason.SmRootTableAccessError;
        }
        ulong reservedMask = 0xFFEUL | _beyondHaw | ~((1UL << 52) - 1);
        if ((root[0] & 1) != 0 && (root[0] & reservedMask) != 0)
        {
            return VtdFaultReason.SmRootEntryLowerReserved;
        }
        if ((root[1] & 1) != 0 && (root[1] & reservedMask) != 0)
        {
            return VtdFaultReason.SmRootEntryUpperReserved;
        }
        bool upper = (sid & 0x80) != 0;
        ulong half = upper ? root[1] : root[0];
        if ((half & 1) == 0)
        {
            return VtdFaultReason.SmRootEntryNotPresent;
        }

        // Scalable-mode context entry (9.4), 256 bits at (devfn & 0x7F) * 32:
        // q0: 0 P, 1 FPD, 2 DTE, 3 PASIDE, 4 PRE, 8:5 reserved, 11:9 PDTS, 63:12 PASIDDIRPTR;
        // q1: 19:0 RID_PASID, 20 RID_PRIV, 63:21 reserved; q2, q3 reserved.
        Span<ulong> entry = stackalloc ulong[4];
        Counters.RootContextReads.Increment();
        if (!_ram.TryRead((half & _hawPageMask) + (ulong)(sid & 0x7F) * 32, MemoryMarshal.AsBytes(entry)))
        {
            return VtdFaultReason.SmContextTableAccessError;
        }
        ulong lo = entry[0];
        fpd = (lo & 2) != 0;
        if ((lo & 1) == 0)
        {
            return VtdFaultReason.SmContextEntryNotPresent;
        }
        ulong reservedLo = 0x1E0UL | _beyondHaw | ~((1UL << 52) - 1);
        if (!_options.DeviceTlb) reservedLo |= 1UL << 2;      // DTE is reserved without ECAP.DT
        reservedLo |= 1UL << 4;                               // PRE is reserved: ECAP.PRS is not advertised
        if ((lo & reservedLo) != 0 || (entry[1] & ~0x1F_FFFFUL) != 0 || entry[2] != 0 || entry[3] != 0)
        {
            return VtdFaultReason.SmContextEntryReserved;
        }
        uint ridPasid = (uint)entry[1] & 0xF_FFFF;
        if ((ridPasid >> _options.PasidBits) != 0 || (entry[1] & (1UL << 20)) != 0)
        {
            // RID_PASID beyond the PASID width (ECAP.PSS), or RID_PRIV (supervisor requests
            // without PASID) which this unit does not support (ECAP.RPRIVS=0): invalid programming.
            return VtdFaultReason.SmContextEntryInvalid;
        }
        context = new VtdContext
        {
            Scalable = true,
            SourceId = sid,
            FaultProcessingDisable = fpd,
            DeviceTlbEnabled = (lo & 4) != 0,
            PasidEnabled = (lo & 8) != 0,
            PasidDirectoryEntries = 1 << ((int)((lo >> 9) & 7) + 7),
            RidPasid = ridPasid,
            PasidDirectory = lo & _hawPageMask,
        };
        if (_contextCache.Insert(in context))
        {
            Counters.ContextCacheEvictions.Increment();
        }
        return VtdFaultReason.None;
    }

    /// <summary>Finds the PASID entry of (source-id, PASID): the PASID cache, else the PASID directory (9.5) and table (9.6).</summary>
    VtdFaultReason LookupPasidEntry(in VtdContext context, ushort sid, uint pasid, out VtdPasidEntry entry, ref bool fpd)
    {
        if ((pasid >> _options.PasidBits) != 0 || (pasid >> 6) >= (uint)context.PasidDirectoryEntries)
        {
            entry = default;
            return VtdFaultReason.SmPasidBeyondDirectory;     // SCT.7
        }
        if (_pasidCache.TryGet(sid, pasid, out entry))
        {
            Counters.PasidCacheHits.Increment();
            fpd |= entry.FaultProcessingDisable;
            return VtdFaultReason.None;
        }
        Counters.PasidCacheMisses.Increment();

        // PASID directory entry (9.5): 0 P, 1 FPD, 11:2 reserved, 63:12 SMPTBLPTR. PASID 19:6 indexes it.
        ulong dirEntry = 0;
        Counters.PasidTableReads.Increment();
        if (!_ram.TryRead(context.PasidDirectory + (pasid >> 6) * 8, MemoryMarshal.AsBytes(new Span<ulong>(ref dirEntry))))
        {
            return VtdFaultReason.PasidDirectoryAccessError;
        }
        fpd |= (dirEntry & 2) != 0;
        if ((dirEntry & 1) == 0)
        {
            return VtdFaultReason.PasidDirectoryEntryNotPresent;
        }
        if ((dirEntry & (0xFFCUL | _beyondHaw | ~((1UL << 52) - 1))) != 0)
        {
            return VtdFaultReason.PasidDirectoryEntryReserved;
        }

        // PASID table entry (9.6), 512 bits; PASID 5:0 indexes the 64-entry table.
        Span<ulong> pe = stackalloc ulong[8];
        Counters.PasidTableReads.Increment();
        if (!_ram.TryRead((dirEntry & _hawPageMask) + (pasid & 63) * 64, MemoryMarshal.AsBytes(pe)))
        {
            return VtdFaultReason.PasidTableAccessError;
        }
        fpd |= (pe[0] & 2) != 0;
        if ((pe[0] & 1) == 0)
        {
            return VtdFaultReason.PasidEntryNotPresent;
        }
        return DecodePasidEntry(pe, sid, pasid, fpd, out entry);
    }

    /// <summary>Checks the reserved fields and the programming of a present PASID entry (9.6) and caches it.</summary>
    VtdFaultReason DecodePasidEntry(ReadOnlySpan<ulong> pe, ushort sid, uint pasid, bool fpd, out VtdPasidEntry entry)
    {
        entry = default;
        ulong beyond = _beyondHaw | ~((1UL << 52) - 1);
        // q0: 0 P, 1 FPD, 4:2 AW, 5 SLEE, 8:6 PGTT, 9 SLADE (reserved: ECAP.SLADS=0), 11:10 reserved, 63:12 SLPTPTR.
        // q1: 15:0 DID, 22:16 reserved, 23 PWSNP, 24 PGSNP, 31:25 memory type controls (accepted, ignored), 63:32 PAT.
        // q2: 0 SRE, 1 ERE, 3:2 FLPM, 4 WPE, 5 NXE, 6 SMEP, 7 EAFE, 11:8 reserved, 63:12 FLPTR. q3..q7 reserved.
        if ((pe[0] & ((1UL << 9) | 0xC00UL | beyond)) != 0 || (pe[1] & 0x7F_0000UL) != 0 || (pe[2] & (0xF00UL | beyond)) != 0
            || pe[3] != 0 || pe[4] != 0 || pe[5] != 0 || pe[6] != 0 || pe[7] != 0)
        {
            return VtdFaultReason.PasidEntryReserved;
        }
        int pgtt = (int)(pe[0] >> 6) & 7;
        int aw = (int)(pe[0] >> 2) & 7;
        int flpm = (int)(pe[2] >> 2) & 3;
        bool ok = pgtt switch
        {
            PgttFirstLevel => _options.FirstLevelTranslation && (flpm == 0 || (flpm == 1 && _options.FirstLevel5Level)),
            PgttSecondLevel => _options.SecondLevelTranslation && aw is >= 1 and <= 3 && ((int)_options.SupportedAgaw & (1 << aw)) != 0,
            PgttPassThrough => _options.PassThrough,
            // 011b nested needs ECAP.NEST, which this unit does not advertise; 000b, 101b-111b are reserved.
            _ => false,
        };
        if (!ok)
        {
            if (pgtt == PgttNested)
            {
                Log.Once($"{Name}.nested", Name, $"PASID entry {pasid:x} of {sid:x4} asks for nested translation (PGTT=011b), not supported (ECAP.NEST=0)");
            }
            return VtdFaultReason.PasidEntryInvalid;
        }
        entry = new VtdPasidEntry
        {
            SourceId = sid,
            Pasid = pasid,
            DomainId = (ushort)pe[1],
            Pgtt = (byte)pgtt,
            SecondLevelLevels = (byte)(aw + 2),
            FirstLevelLevels = (byte)(flpm == 1 ? 5 : 4),
            FaultProcessingDisable = fpd,
            SupervisorRequests = (pe[2] & 1) != 0,
            ExecuteRequests = (pe[2] & 2) != 0,
            WriteProtect = (pe[2] & 0x10) != 0,
            ExtendedAccessed = (pe[2] & 0x80) != 0,
            SlptPointer = pe[0] & _hawPageMask,
            FlptPointer = pe[2] & _hawPageMask,
        };
        if (_pasidCache.Insert(in entry))
        {
            Counters.PasidCacheEvictions.Increment();
        }
        return VtdFaultReason.None;
    }

    /// <summary>First-level translation through the IOTLB (tagged by DID and PASID, 6.2.3).</summary>
    VtdFaultReason LookupFirstLevel(in VtdPasidEntry entry, uint pasid, in VtdRequest request, ulong address, out VtdIotlbEntry hit)
    {
        // 3.6: first-level input addresses must be canonical for the paging depth (bit 47 or 56 sign-extended).
        int bits = 12 + 9 * entry.FirstLevelLevels;
        long signed = (long)address << (64 - bits) >> (64 - bits);
        if ((ulong)signed != address)
        {
            hit = default;
            return VtdFaultReason.SmNonCanonical;
        }
        if (_iotlb.TryGet(entry.DomainId, pasid, address, out hit))
        {
            // A write through a cached translation whose leaf D flag is still clear must walk
            // again to set it (3.6.2): the cached copy cannot stand for the dirty update.
            if (!request.Write || (hit.Flags & VtdIotlbEntry.FlagDirty) != 0)
            {
                Counters.IotlbHitsFor(hit.PageShift).Increment();
                return VtdFaultReason.None;
            }
        }
        Counters.IotlbMisses.Increment();
        Counters.FirstLevelWalks.Increment();
        var reason = WalkFirstLevel(in entry, pasid, in request, address, out hit);
        if (reason != VtdFaultReason.None)
        {
            return reason;
        }
        Counters.IotlbFillsFor(hit.PageShift).Increment();
        if (_iotlb.Insert(in hit))
        {
            Counters.IotlbEvictions.Increment();
        }
        return VtdFaultReason.None;
    }

    /// <summary>
    /// Walks first-level tables (IA-32e format, 9.7; 3.6): 4 or 5 levels, 2 MiB pages, 1 GiB pages
    /// with CAP.FL1GP. R/W and U/S are ANDed and XD ORed along the walk (XD is always honoured: the
    /// first level behaves as IA-32e paging with EFER.NXE=1). The Accessed flag (and EA with EAFE)
    /// is set in every entry used, and Dirty in the leaf of a write the page permits (3.6.2), each
    /// with an atomic OR as a CPU would.
    /// </summary>
    VtdFaultReason WalkFirstLevel(in VtdPasidEntry pasidEntry, uint pasid, in VtdRequest request, ulong address, out VtdIotlbEntry entry)
    {
        entry = default;
        Counters.PageWalks.Increment();
        Span<ulong> slots = stackalloc ulong[5];
        Span<ulong> values = stackalloc ulong[5];
        int used = 0;
        ulong table = pasidEntry.FlptPointer;
        bool writable = true, user = true, executable = true;
        int top = pasidEntry.FirstLevelLevels;
        if (TryPagingStructureCache(pasidEntry.DomainId, pasid, pasidEntry.FlptPointer, pasidEntry.FirstLevelLevels, address, out var cached))
        {
            // 6.2.5: start below the deepest cached entry. Its Accessed flag (and those above it)
            // were set by the walk that cached it, so the unit need not set them again (as a CPU).
            top = cached.Level - 1;
            table = cached.NextTable;
            writable = (cached.Permissions & 2) != 0;
            user = (cached.Flags & VtdIotlbEntry.FlagUser) != 0;
            executable = (cached.Flags & VtdIotlbEntry.FlagExecute) != 0;
        }
        byte startPermissions = (byte)(1 | (writable ? 2 : 0));
        byte startFlags = (byte)((user ? VtdIotlbEntry.FlagUser : 0) | (executable ? VtdIotlbEntry.FlagExecute : 0));
        for (int level = top; level >= 1; level--)
        {
            int shift = 12 + 9 * (level - 1);
            ulong slot = table + ((address >> shift) & 511) * 8;
            ulong pte = 0;
            Counters.PageWalkReads.Increment();
            if (!_ram.TryRead(slot, MemoryMarshal.AsBytes(new Span<ulong>(ref pte))))
            {
                return level == pasidEntry.FirstLevelLevels ? VtdFaultReason.FirstLevelPointerInvalid : VtdFaultReason.FirstLevelAccessError;
            }
            if ((pte & FlPresent) == 0)
            {
                return VtdFaultReason.FirstLevelNotPresent;
            }
            bool large = level > 1 && (pte & FlPageSize) != 0;
            // Bits 51:HAW of the address field are reserved; 62:52 are ignored (no protection keys).
            ulong reserved = _beyondHaw;
            if (large)
            {
                bool supported = level == 2 || (level == 3 && _options.FirstLevel1G);
                if (!supported)
                {
                    return VtdFaultReason.FirstLevelReserved;   // PS in a PML5E/PML4E, or 1 GiB without FL1GP
                }
                reserved |= ((1UL << shift) - 1) & ~0x1FFFUL;    // address bits below the page size (bit 12 is PAT)
            }
            if ((pte & reserved) != 0)
            {
                return VtdFaultReason.FirstLevelReserved;
            }
            writable &= (pte & FlWrite) != 0;
            user &= (pte & FlUser) != 0;
            executable &= (pte & FlExecuteDisable) == 0;
            slots[used] = slot;
            values[used++] = pte;
            if (level == 1 || large)
            {
                ulong pageMask = (1UL << shift) - 1;
                ulong outputBase = pte & _hawPageMask & ~pageMask;
                // The dirty update happens only for a write the page allows this request.
                bool writeAllowed = writable || (request.Privileged && !pasidEntry.WriteProtect);
                bool userOk = user || request.Privileged;
                bool setDirty = request.Write && writeAllowed && userOk;
                ulong accessed = FlAccessed | (pasidEntry.ExtendedAccessed ? FlExtendedAccessed : 0);
                for (int i = 0; i < used; i++)
                {
                    ulong want = accessed | (i == used - 1 && setDirty ? FlDirty : 0);
                    if ((values[i] & want) != want && !SetPagingEntryBits(slots[i], want))
                    {
                        return VtdFaultReason.FirstLevelBitUpdateFailed;
                    }
                }
                byte flags = 0;
                if (user) flags |= VtdIotlbEntry.FlagUser;
                if (executable) flags |= VtdIotlbEntry.FlagExecute;
                if (setDirty || (pte & FlDirty) != 0) flags |= VtdIotlbEntry.FlagDirty;
                entry = new VtdIotlbEntry
                {
                    DomainId = pasidEntry.DomainId,
                    PasidTag = pasid,
                    Flags = flags,
                    PageShift = (byte)shift,
                    Permissions = (byte)(1 | (writable ? 2 : 0)),
                    PageNumber = address >> shift,
                    OutputBase = outputBase,
                };
                FillPagingStructureCache(pasidEntry.DomainId, pasid, pasidEntry.FlptPointer, pasidEntry.FirstLevelLevels, address, top,
                    values[..(used - 1)], startPermissions, startFlags, firstLevel: true);
                return VtdFaultReason.None;
            }
            table = pte & _hawPageMask;
        }
        return VtdFaultReason.FirstLevelAccessError; // unreachable: level 1 is always a leaf
    }

    /// <summary>Atomically ORs <paramref name="bits"/> into the 8-byte paging entry at <paramref name="gpa"/> (a locked RMW, 3.6.2).</summary>
    bool SetPagingEntryBits(ulong gpa, ulong bits)
    {
        long offset = _ram.HostOffset(gpa);
        if (offset < 0 || (gpa & 7) != 0)
        {
            return false;
        }
        ref long cell = ref MemoryMarshal.Cast<byte, long>(_ram.GetSpan(gpa, 8))[0];
        Interlocked.Or(ref cell, (long)bits);
        _ram.NoteWrite((ulong)offset, 8);
        Counters.AccessedDirtyUpdates.Increment();
        return true;
    }
}
