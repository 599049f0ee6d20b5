namespace SharpVisor.Devices.Iommu;

/// <summary>
/// A decoded, present legacy-mode context entry (VT-d spec 9.3) as the context cache keeps it.
/// Scalable mode will add the PASID directory pointer and PGTT here.
/// </summary>
internal struct VtdContext
{
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
            if (_valid[i] && _entries[i].DomainId == domainId) _valid[i] = false;
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
    public ushort DomainId;
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
    public bool TryGet(ushort domainId, ulong address, out VtdIotlbEntry entry)
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
                if (_valid[i] && e.PageNumber == page && e.PageShift == shift && e.DomainId == domainId)
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
            if (!_valid[i] || (e.PageNumber == entry.PageNumber && e.PageShift == entry.PageShift && e.DomainId == entry.DomainId))
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
            evicted = !(old.PageNumber == entry.PageNumber && old.PageShift == entry.PageShift && old.DomainId == entry.DomainId);
            _countBySize[SizeIndex(old.PageShift)]--;
        }
        _entries[victim] = entry;
        _valid[victim] = true;
        _lastUse[victim] = ++_clock;
        _countBySize[SizeIndex(entry.PageShift)]++;
        return evicted;
    }

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
    public void InvalidatePages(ushort domainId, ulong address, int addressMask)
    {
        int regionShift = 12 + addressMask;
        ulong regionBase = regionShift >= 64 ? 0 : address & ~((1UL << regionShift) - 1);
        ulong regionLast = regionShift >= 64 ? ulong.MaxValue : regionBase + ((1UL << regionShift) - 1);
        for (int i = 0; i < _entries.Length; i++)
        {
            if (!_valid[i]) continue;
            ref var e = ref _entries[i];
            if (e.DomainId != domainId) continue;
            ulong start = e.PageNumber << e.PageShift;
            ulong last = start + ((1UL << e.PageShift) - 1);
            if (start <= regionLast && regionBase <= last) Drop(i);
        }
    }
}
