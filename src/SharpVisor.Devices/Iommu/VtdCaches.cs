namespace SharpVisor.Devices.Iommu;

/// <summary>
/// A decoded, present context entry as the context cache keeps it: legacy mode (VT-d spec 9.3)
/// or scalable mode (9.4, <see cref="Scalable"/> set).
/// </summary>
internal struct VtdContext
{
    /// <summary>Decoded from a 256-bit scalable-mode context entry (9.4); then DomainId, Levels and SlptPointer are unused.</summary>
    public bool Scalable;
    /// <summary>9.4 bit 2 DTE, or legacy TT=01b (9.3): translation requests and translated requests are allowed.</summary>
    public bool DeviceTlbEnabled;
    /// <summary>9.4 bit 3 PASIDE: requests-with-PASID are allowed.</summary>
    public bool PasidEnabled;
    /// <summary>9.4 bits 11:9 PDTS: the PASID directory holds 2^(PDTS+7) entries.</summary>
    public int PasidDirectoryEntries;
    /// <summary>9.4 bits 83:64 RID_PASID: the PASID used for requests-without-PASID.</summary>
    public uint RidPasid;
    /// <summary>9.4 bits 63:12 PASIDDIRPTR.</summary>
    public ulong PasidDirectory;
    public ushort SourceId;
    public ushort DomainId;
    /// <summary>Translation Type, 9.3 bits 3:2: 00 untranslated via tables, 01 + device-TLB, 10 pass-through.</summary>
    public byte TranslationType;
    /// <summary>Second-level page-table depth: 3, 4 or 5 (from AW, 9.3 bits 66:64).</summary>
    public byte Levels;
    /// <summary>Fault Processing Disable, 9.3 bit 1.</summary>
    public bool FaultProcessingDisable;
    /// <summary>Second-level page-table pointer, 9.3 bits 63:12.</summary>
    public ulong SlptPointer;
}

/// <summary>
/// The context cache (VT-d spec 6.2.1): present context entries tagged by source-id, set-associative
/// with LRU replacement. Not thread-safe: the unit's lock guards it.
/// </summary>
internal sealed class VtdContextCache
{
    readonly VtdContext[] _entries;
    readonly bool[] _valid;
    readonly ulong[] _lastUse;
    readonly int _ways;
    readonly int _setMask;
    ulong _clock;

    public VtdContextCache(int sets, int ways)
    {
        _ways = ways;
        _setMask = sets - 1;
        _entries = new VtdContext[sets * ways];
        _valid = new bool[sets * ways];
        _lastUse = new ulong[sets * ways];
    }

    public int Capacity => _entries.Length;

    public int Count
    {
        get
        {
            int n = 0;
            foreach (bool v in _valid) if (v) n++;
            return n;
        }
    }

    int SetOf(ushort sid) => ((sid ^ (sid >> 8)) & _setMask) * _ways;

    public bool TryGet(ushort sid, out VtdContext context)
    {
        int first = SetOf(sid);
        for (int i = first; i < first + _ways; i++)
        {
            if (_valid[i] && _entries[i].SourceId == sid)
            {
                _lastUse[i] = ++_clock;
                context = _entries[i];
                return true;
            }
        }
        context = default;
        return false;
    }

    /// <summary>Inserts an entry; returns true when a valid entry had to be evicted.</summary>
    public bool Insert(in VtdContext context)
    {
        int first = SetOf(context.SourceId);
        int victim = first;
        for (int i = first; i < first + _ways; i++)
        {
            if (!_valid[i] || _entries[i].SourceId == context.SourceId)
            {
                victim = i;
                break;
            }
            if (_lastUse[i] < _lastUse[victim])
            {
                victim = i;
            }
        }
        bool evicted = _valid[victim] && _entries[victim].SourceId != context.SourceId;
        _entries[victim] = context;
        _valid[victim] = true;
        _lastUse[victim] = ++_clock;
        return evicted;
    }

    public void InvalidateAll() => Array.Clear(_valid);

    public void InvalidateDomain(ushort domainId)
    {
        for (int i = 0; i < _entries.Length; i++)
        {
            // A scalable-mode context entry carries no domain id (its PASID entries do), so a
            // domain-selective invalidation must drop every scalable-mode entry.
            if (_valid[i] && (_entries[i].DomainId == domainId || _entries[i].Scalable)) _valid[i] = false;
        }
    }

    /// <summary>Device-selective invalidation: <paramref name="functionMask"/> is CCMD.FM (11.4.6): 0..3 low function bits ignored.</summary>
    public void InvalidateDevice(ushort sid, int functionMask)
    {
        // FM=01 masks bit 2 of the function number, 10 bits 2:1, 11 bits 2:0.
        ushort ignore = functionMask switch { 1 => 0b100, 2 => 0b110, 3 => 0b111, _ => 0 };
        for (int i = 0; i < _entries.Length; i++)
        {
            if (_valid[i] && (_entries[i].SourceId & ~ignore) == (sid & ~ignore)) _valid[i] = false;
        }
    }
}

/// <summary>One IOTLB entry: a translated page of size 2^<see cref="PageShift"/>.</summary>
internal struct VtdIotlbEntry
{
    /// <summary>PASID tag of first-level translations (6.2.3: tagged by DID and PASID); <see cref="NoPasid"/> for second-level / legacy ones.</summary>
    public const uint NoPasid = uint.MaxValue;

    /// <summary>First-level attributes kept with the translation (the AND along the walk, 3.6.1).</summary>
    public const byte FlagUser = 1, FlagExecute = 2, FlagDirty = 4;

    public ushort DomainId;
    public uint PasidTag;
    public byte Flags;
    public byte PageShift;       // 12, 21 or 30
    public byte Permissions;     // bit 0 read, bit 1 write (the AND along the walk)
    public ulong PageNumber;     // input address >> PageShift
    public ulong OutputBase;     // output address of the page
}

/// <summary>
/// The IOTLB (VT-d spec 6.2.3): translations tagged by domain id, input page number and page size,
/// set-associative with LRU replacement. A lookup probes each page size that currently has entries.
/// Not thread-safe: the unit's lock guards it.
/// </summary>
internal sealed class VtdIotlb
{
    public static readonly byte[] PageShifts = [12, 21, 30];

    readonly VtdIotlbEntry[] _entries;
    readonly bool[] _valid;
    readonly ulong[] _lastUse;
    readonly int _ways;
    readonly int _setMask;
    readonly int[] _countBySize = new int[3];
    ulong _clock;

    public VtdIotlb(int sets, int ways)
    {
        _ways = ways;
        _setMask = sets - 1;
        _entries = new VtdIotlbEntry[sets * ways];
        _valid = new bool[sets * ways];
        _lastUse = new ulong[sets * ways];
    }

    public int Capacity => _entries.Length;

    public int Count => _countBySize[0] + _countBySize[1] + _countBySize[2];

    static int SizeIndex(byte shift) => shift == 12 ? 0 : shift == 21 ? 1 : 2;

    int SetOf(ushort domainId, ulong pageNumber, byte shift)
    {
        ulong h = (pageNumber ^ ((ulong)domainId << 7) ^ shift) * 0x9E37_79B9_7F4A_7C15UL;
        return (int)(h >> 40) & _setMask;
    }

    /// <summary>Looks up the translation of <paramref name="address"/> in domain <paramref name="domainId"/>.</summary>
    public bool TryGet(ushort domainId, ulong address, out VtdIotlbEntry entry) => TryGet(domainId, VtdIotlbEntry.NoPasid, address, out entry);

    public bool TryGet(ushort domainId, uint pasidTag, ulong address, out VtdIotlbEntry entry)
    {
        for (int s = 0; s < 3; s++)
        {
            if (_countBySize[s] == 0) continue;
            byte shift = PageShifts[s];
            ulong page = address >> shift;
            int first = SetOf(domainId, page, shift) * _ways;
            for (int i = first; i < first + _ways; i++)
            {
                ref var e = ref _entries[i];
                if (_valid[i] && e.PageNumber == page && e.PageShift == shift && e.DomainId == domainId && e.PasidTag == pasidTag)
                {
                    _lastUse[i] = ++_clock;
                    entry = e;
                    return true;
                }
            }
        }
        entry = default;
        return false;
    }

    /// <summary>Inserts a translation; returns true when a valid entry was evicted to make room.</summary>
    public bool Insert(in VtdIotlbEntry entry)
    {
        int first = SetOf(entry.DomainId, entry.PageNumber, entry.PageShift) * _ways;
        int victim = first;
        for (int i = first; i < first + _ways; i++)
        {
            ref var e = ref _entries[i];
            if (!_valid[i] || Same(in e, in entry))
            {
                victim = i;
                break;
            }
            if (_lastUse[i] < _lastUse[victim]) victim = i;
        }
        bool evicted = false;
        if (_valid[victim])
        {
            var old = _entries[victim];
            evicted = !Same(in old, in entry);
            _countBySize[SizeIndex(old.PageShift)]--;
        }
        _entries[victim] = entry;
        _valid[victim] = true;
        _lastUse[victim] = ++_clock;
        _countBySize[SizeIndex(entry.PageShift)]++;
        return evicted;
    }

    static bool Same(in VtdIotlbEntry a, in VtdIotlbEntry b) =>
        a.PageNumber == b.PageNumber && a.PageShift == b.PageShift && a.DomainId == b.DomainId && a.PasidTag == b.PasidTag;

    void Drop(int i)
    {
        _valid[i] = false;
        _countBySize[SizeIndex(_entries[i].PageShift)]--;
    }

    public void InvalidateAll()
    {
        Array.Clear(_valid);
        Array.Clear(_countBySize);
    }

    public void InvalidateDomain(ushort domainId)
    {
        for (int i = 0; i < _entries.Length; i++)
        {
            if (_valid[i] && _entries[i].DomainId == domainId) Drop(i);
        }
    }

    /// <summary>
    /// Page-selective invalidation (11.4.8.2): drops every entry of the domain that overlaps the
    /// 2^(12+AM)-byte naturally aligned region holding <paramref name="address"/>.
    /// </summary>
    public void InvalidatePages(ushort domainId, ulong address, int addressMask) => InvalidatePages(domainId, null, address, addressMask);

    /// <summary>PASID-based invalidation (6.5.2.4): every first-level entry of (DID, PASID).</summary>
    public void InvalidatePasid(ushort domainId, uint pasid)
    {
        for (int i = 0; i < _entries.Length; i++)
        {
            if (_valid[i] && _entries[i].DomainId == domainId && _entries[i].PasidTag == pasid) Drop(i);
        }
    }

    /// <summary>Page-selective invalidation of one domain, limited to one PASID tag when <paramref name="pasid"/> is given.</summary>
    public void InvalidatePages(ushort domainId, uint? pasid, ulong address, int addressMask)
    {
        int regionShift = 12 + addressMask;
        ulong regionBase = regionShift >= 64 ? 0 : address & ~((1UL << regionShift) - 1);
        ulong regionLast = regionShift >= 64 ? ulong.MaxValue : regionBase + ((1UL << regionShift) - 1);
        for (int i = 0; i < _entries.Length; i++)
        {
            if (!_valid[i]) continue;
            ref var e = ref _entries[i];
            if (e.DomainId != domainId || (pasid is uint p && e.PasidTag != p)) continue;
            ulong start = e.PageNumber << e.PageShift;
            ulong last = start + ((1UL << e.PageShift) - 1);
            if (start <= regionLast && regionBase <= last) Drop(i);
        }
    }
}

/// <summary>A decoded, present and valid PASID table entry (VT-d spec 9.6) as the PASID cache keeps it.</summary>
internal struct VtdPasidEntry
{
    public ushort SourceId;
    public uint Pasid;
    /// <summary>9.6 bits 79:64 DID.</summary>
    public ushort DomainId;
    /// <summary>9.6 bits 8:6 PGTT: 001b first-level, 010b second-level, 011b nested, 100b pass-through.</summary>
    public byte Pgtt;
    /// <summary>Second-level depth from AW (9.6 bits 4:2), 3..5.</summary>
    public byte SecondLevelLevels;
    /// <summary>First-level depth from FLPM (9.6 bits 131:130): 00b 4-level, 01b 5-level.</summary>
    public byte FirstLevelLevels;
    /// <summary>9.6 bit 1 FPD (ORed with the PASID directory entry's FPD).</summary>
    public bool FaultProcessingDisable;
    /// <summary>9.6 bit 128 SRE: supervisor requests allowed.</summary>
    public bool SupervisorRequests;
    /// <summary>9.6 bit 129 ERE: execute requests allowed.</summary>
    public bool ExecuteRequests;
    /// <summary>9.6 bit 132 WPE: supervisor writes to read-only first-level pages fault.</summary>
    public bool WriteProtect;
    /// <summary>9.6 bit 135 EAFE: the extended-accessed flag (bit 10) of first-level entries is set too.</summary>
    public bool ExtendedAccessed;
    /// <summary>9.6 bits 63:12 SLPTPTR.</summary>
    public ulong SlptPointer;
    /// <summary>9.6 bits 191:140 FLPTR.</summary>
    public ulong FlptPointer;
}

/// <summary>
/// The PASID cache (VT-d spec 6.2.2): PASID table entries of scalable-mode requests, looked up by
/// (source-id, PASID) and invalidated by DID or (DID, PASID) as the PASID-cache invalidate
/// descriptor (6.5.2.2) asks. Set-associative with LRU replacement; the unit's lock guards it.
/// </summary>
internal sealed class VtdPasidCache
{
    readonly VtdPasidEntry[] _entries;
    readonly bool[] _valid;
    readonly ulong[] _lastUse;
    readonly int _ways;
    readonly int _setMask;
    ulong _clock;

    public VtdPasidCache(int sets, int ways)
    {
        _ways = ways;
        _setMask = sets - 1;
        _entries = new VtdPasidEntry[sets * ways];
        _valid = new bool[sets * ways];
        _lastUse = new ulong[sets * ways];
    }

    public int Count
    {
        get
        {
            int n = 0;
            foreach (bool v in _valid) if (v) n++;
            return n;
        }
    }

    int SetOf(ushort sid, uint pasid) => (int)((sid ^ (sid >> 8) ^ pasid ^ (pasid >> 7)) & (uint)_setMask) * _ways;

    public bool TryGet(ushort sid, uint pasid, out VtdPasidEntry entry)
    {
        int first = SetOf(sid, pasid);
        for (int i = first; i < first + _ways; i++)
        {
            if (_valid[i] && _entries[i].SourceId == sid && _entries[i].Pasid == pasid)
            {
                _lastUse[i] = ++_clock;
                entry = _entries[i];
                return true;
            }
        }
        entry = default;
        return false;
    }

    /// <summary>Inserts an entry; returns true when a valid entry had to be evicted.</summary>
    public bool Insert(in VtdPasidEntry entry)
    {
        int first = SetOf(entry.SourceId, entry.Pasid);
        int victim = first;
        for (int i = first; i < first + _ways; i++)
        {
            if (!_valid[i] || (_entries[i].SourceId == entry.SourceId && _entries[i].Pasid == entry.Pasid))
            {
                victim = i;
                break;
            }
            if (_lastUse[i] < _lastUse[victim]) victim = i;
        }
        bool evicted = _valid[victim] && !(_entries[victim].SourceId == entry.SourceId && _entries[victim].Pasid == entry.Pasid);
        _entries[victim] = entry;
        _valid[victim] = true;
        _lastUse[victim] = ++_clock;
        return evicted;
    }

    public void InvalidateAll() => Array.Clear(_valid);

    /// <summary>Drops entries of <paramref name="domainId"/>, and of one PASID when <paramref name="pasid"/> is given.</summary>
    public void Invalidate(ushort domainId, uint? pasid)
    {
        for (int i = 0; i < _entries.Length; i++)
        {
            if (_valid[i] && _entries[i].DomainId == domainId && (pasid is not uint p || _entries[i].Pasid == p)) _valid[i] = false;
        }
    }

    /// <summary>Drops the entries of the source-ids a device-selective context invalidation names (FM as in 11.4.6).</summary>
    public void InvalidateDevice(ushort sid, int functionMask)
    {
        ushort ignore = functionMask switch { 1 => 0b100, 2 => 0b110, 3 => 0b111, _ => 0 };
        for (int i = 0; i < _entries.Length; i++)
        {
            if (_valid[i] && (_entries[i].SourceId & ~ignore) == (sid & ~ignore)) _valid[i] = false;
        }
    }
}
