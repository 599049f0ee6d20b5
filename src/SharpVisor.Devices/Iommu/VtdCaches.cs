using SharpVisor.Core;

namespace SharpVisor.Devices.Iommu;

/// <summary>
/// Which cached entries an operation is about: a lookup tag, or an invalidation's selection. A
/// struct implementing it is passed by reference as a generic argument, so the JIT specialises
/// every use and nothing is allocated or called indirectly per entry.
/// </summary>
internal interface ICacheSelector<TEntry> where TEntry : struct
{
    bool Matches(in TEntry entry);
}

/// <summary>
/// A bounded set-associative cache with least-recently-used replacement within each set: the
/// storage of the context cache, IOTLB, PASID cache and paging-structure caches (VT-d spec 6.2)
/// and of device-TLBs.
/// Entries are structs kept in one array; callers choose the set (a hash of the tag) and say
/// which entries match. Not thread-safe: the owner's lock guards it.
/// </summary>
internal sealed class SetAssociativeCache<TEntry> where TEntry : struct
{
    readonly TEntry[] _entries;
    readonly bool[] _valid;
    readonly ulong[] _lastUse;
    readonly int _ways;
    ulong _clock;
    int _count;

    public SetAssociativeCache(int sets, int ways)
    {
        if (sets <= 0 || (sets & (sets - 1)) != 0 || ways < 1)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(sets), "a cache needs a power-of-two set count and at least one way");
        }
        _ways = ways;
        SetMask = sets - 1;
        _entries = new TEntry[sets * ways];
        _valid = new bool[sets * ways];
        _lastUse = new ulong[sets * ways];
    }

    /// <summary>Sets - 1: callers mask their hash with it.</summary>
    public int SetMask { get; }
    public int Capacity => _entries.Length;
    public int Count => _count;

    /// <summary>Finds the entry of <paramref name="set"/> the selector matches and marks it most recently used.</summary>
    public bool TryGet<TSelector>(int set, ref TSelector tag, out TEntry entry) where TSelector : struct, ICacheSelector<TEntry>
    {
        int first = (set & SetMask) * _ways;
        for (int i = first; i < first + _ways; i++)
        {
            if (_valid[i] && tag.Matches(in _entries[i]))
            {
                _lastUse[i] = ++_clock;
                entry = _entries[i];
                return true;
            }
        }
        entry = default;
        return false;
    }

    /// <summary>
    /// Puts <paramref name="entry"/> in <paramref name="set"/>: over the entry with the same tag,
    /// else in a free way, else over the least recently used one. Returns true, with the victim,
    /// when a valid entry with another tag was evicted; <paramref name="replaced"/> says whether a
    /// valid entry (same tag or victim) was overwritten.
    /// </summary>
    public bool Insert<TSelector>(int set, ref TSelector sameTag, in TEntry entry, out TEntry victim, out bool replaced)
        where TSelector : struct, ICacheSelector<TEntry>
    {
        int first = (set & SetMask) * _ways;
        int slot = -1;
        int free = -1;
        int oldest = first;
        for (int i = first; i < first + _ways; i++)
        {
            if (!_valid[i])
            {
                if (free < 0) free = i;
                continue;
            }
            if (sameTag.Matches(in _entries[i]))
            {
                slot = i;
                break;
            }
            if (!_valid[oldest] || _lastUse[i] < _lastUse[oldest]) oldest = i;
        }
        bool evicted = false;
        victim = default;
        if (slot < 0)
        {
            slot = free >= 0 ? free : oldest;
            evicted = _valid[slot];
            if (evicted) victim = _entries[slot];
        }
        replaced = _valid[slot];
        if (!replaced) _count++;
        _entries[slot] = entry;
        _valid[slot] = true;
        _lastUse[slot] = ++_clock;
        return evicted;
    }

    /// <summary>Drops every entry the selector matches (it may count what it sees); returns how many.</summary>
    public int RemoveAll<TSelector>(ref TSelector selector) where TSelector : struct, ICacheSelector<TEntry>
    {
        int removed = 0;
        for (int i = 0; i < _entries.Length; i++)
        {
            if (_valid[i] && selector.Matches(in _entries[i]))
            {
                _valid[i] = false;
                removed++;
            }
        }
        _count -= removed;
        return removed;
    }

    public void Clear()
    {
        Array.Clear(_valid);
        _count = 0;
    }
}

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
internal sealed class VtdContextCache(int sets, int ways)
{
    readonly SetAssociativeCache<VtdContext> _cache = new(sets, ways);

    readonly struct BySource(ushort sid) : ICacheSelector<VtdContext>
    {
        public bool Matches(in VtdContext e) => e.SourceId == sid;
    }

    /// <summary>Source-ids equal but for the function bits a device-selective invalidation's FM ignores.</summary>
    readonly struct ByDevice(ushort sid, ushort ignore) : ICacheSelector<VtdContext>
    {
        public bool Matches(in VtdContext e) => (e.SourceId & ~ignore) == (sid & ~ignore);
    }

    /// <summary>
    /// A scalable-mode context entry carries no domain id (its PASID entries do), so a
    /// domain-selective invalidation must drop every scalable-mode entry.
    /// </summary>
    readonly struct ByDomain(ushort domainId) : ICacheSelector<VtdContext>
    {
        public bool Matches(in VtdContext e) => e.DomainId == domainId || e.Scalable;
    }

    public int Capacity => _cache.Capacity;
    public int Count => _cache.Count;

    static int SetOf(ushort sid) => sid ^ (sid >> 8);

    public bool TryGet(ushort sid, out VtdContext context)
    {
        var tag = new BySource(sid);
        return _cache.TryGet(SetOf(sid), ref tag, out context);
    }

    /// <summary>Inserts an entry; returns true when a valid entry had to be evicted.</summary>
    public bool Insert(in VtdContext context)
    {
        var tag = new BySource(context.SourceId);
        return _cache.Insert(SetOf(context.SourceId), ref tag, in context, out _, out _);
    }

    public void InvalidateAll() => _cache.Clear();

    public void InvalidateDomain(ushort domainId)
    {
        var selector = new ByDomain(domainId);
        _cache.RemoveAll(ref selector);
    }

    /// <summary>Device-selective invalidation: <paramref name="functionMask"/> is CCMD.FM (11.4.6): 0..3 low function bits ignored.</summary>
    public void InvalidateDevice(ushort sid, int functionMask)
    {
        var selector = new ByDevice(sid, FunctionBitsIgnored(functionMask));
        _cache.RemoveAll(ref selector);
    }

    /// <summary>FM (11.4.6) = 01 masks bit 2 of the function number, 10 bits 2:1, 11 bits 2:0.</summary>
    internal static ushort FunctionBitsIgnored(int functionMask) => functionMask switch { 1 => 0b100, 2 => 0b110, 3 => 0b111, _ => 0 };
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
/// The IOTLB (VT-d spec 6.2.3): translations tagged by domain id, PASID tag, input page number and
/// page size, set-associative with LRU replacement. A lookup probes each page size that currently
/// has entries. Not thread-safe: the unit's lock guards it.
/// </summary>
internal sealed class VtdIotlb(int sets, int ways)
{
    public static readonly byte[] PageShifts = [12, 21, 30];

    readonly SetAssociativeCache<VtdIotlbEntry> _cache = new(sets, ways);
    readonly int[] _countBySize = new int[3];

    readonly struct ByTag(ushort domainId, uint pasidTag, ulong pageNumber, byte shift) : ICacheSelector<VtdIotlbEntry>
    {
        public bool Matches(in VtdIotlbEntry e) =>
            e.PageNumber == pageNumber && e.PageShift == shift && e.DomainId == domainId && e.PasidTag == pasidTag;
    }

    /// <summary>An invalidation's selection; it keeps the per-size counts right as it drops entries.</summary>
    struct Selection(VtdIotlb owner, ushort domainId, uint? pasid, ulong first, ulong last) : ICacheSelector<VtdIotlbEntry>
    {
        public bool Matches(in VtdIotlbEntry e)
        {
            if (e.DomainId != domainId || (pasid is uint p && e.PasidTag != p))
            {
                return false;
            }
            ulong start = e.PageNumber << e.PageShift;
            ulong end = start + ((1UL << e.PageShift) - 1);
            if (start > last || first > end)
            {
                return false;
            }
            owner._countBySize[SizeIndex(e.PageShift)]--;
            return true;
        }
    }

    public int Capacity => _cache.Capacity;

    public int Count => _cache.Count;

    static int SizeIndex(byte shift) => shift == 12 ? 0 : shift == 21 ? 1 : 2;

    static int SetOf(ushort domainId, ulong pageNumber, byte shift)
    {
        ulong h = (pageNumber ^ ((ulong)domainId << 7) ^ shift) * 0x9E37_79B9_7F4A_7C15UL;
        return (int)(h >> 40);
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
            var tag = new ByTag(domainId, pasidTag, page, shift);
            if (_cache.TryGet(SetOf(domainId, page, shift), ref tag, out entry))
            {
                return true;
            }
        }
        entry = default;
        return false;
    }

    /// <summary>Inserts a translation; returns true when a valid entry was evicted to make room.</summary>
    public bool Insert(in VtdIotlbEntry entry)
    {
        var tag = new ByTag(entry.DomainId, entry.PasidTag, entry.PageNumber, entry.PageShift);
        bool evicted = _cache.Insert(SetOf(entry.DomainId, entry.PageNumber, entry.PageShift), ref tag, in entry, out var victim, out bool replaced);
        if (evicted)
        {
            _countBySize[SizeIndex(victim.PageShift)]--;
        }
        if (!replaced || evicted)
        {
            _countBySize[SizeIndex(entry.PageShift)]++;
        }
        return evicted;
    }

    public void InvalidateAll()
    {
        _cache.Clear();
        Array.Clear(_countBySize);
    }

    public void InvalidateDomain(ushort domainId) => Remove(domainId, null, 0, ulong.MaxValue);

    /// <summary>
    /// Page-selective invalidation (11.4.8.2): drops every entry of the domain that overlaps the
    /// 2^(12+AM)-byte naturally aligned region holding <paramref name="address"/>.
    /// </summary>
    public void InvalidatePages(ushort domainId, ulong address, int addressMask) => InvalidatePages(domainId, null, address, addressMask);

    /// <summary>PASID-based invalidation (6.5.2.4): every first-level entry of (DID, PASID).</summary>
    public void InvalidatePasid(ushort domainId, uint pasid) => Remove(domainId, pasid, 0, ulong.MaxValue);

    /// <summary>Page-selective invalidation of one domain, limited to one PASID tag when <paramref name="pasid"/> is given.</summary>
    public void InvalidatePages(ushort domainId, uint? pasid, ulong address, int addressMask)
    {
        int regionShift = 12 + addressMask;
        ulong regionBase = regionShift >= 64 ? 0 : address & ~((1UL << regionShift) - 1);
        ulong regionLast = regionShift >= 64 ? ulong.MaxValue : regionBase + ((1UL << regionShift) - 1);
        Remove(domainId, pasid, regionBase, regionLast);
    }

    void Remove(ushort domainId, uint? pasid, ulong first, ulong last)
    {
        var selection = new Selection(this, domainId, pasid, first, last);
        _cache.RemoveAll(ref selection);
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
internal sealed class VtdPasidCache(int sets, int ways)
{
    readonly SetAssociativeCache<VtdPasidEntry> _cache = new(sets, ways);

    readonly struct ByTag(ushort sid, uint pasid) : ICacheSelector<VtdPasidEntry>
    {
        public bool Matches(in VtdPasidEntry e) => e.SourceId == sid && e.Pasid == pasid;
    }

    readonly struct ByDomain(ushort domainId, uint? pasid) : ICacheSelector<VtdPasidEntry>
    {
        public bool Matches(in VtdPasidEntry e) => e.DomainId == domainId && (pasid is not uint p || e.Pasid == p);
    }

    readonly struct ByDevice(ushort sid, ushort ignore) : ICacheSelector<VtdPasidEntry>
    {
        public bool Matches(in VtdPasidEntry e) => (e.SourceId & ~ignore) == (sid & ~ignore);
    }

    public int Count => _cache.Count;

    static int SetOf(ushort sid, uint pasid) => (int)(sid ^ (sid >> 8) ^ pasid ^ (pasid >> 7));

    public bool TryGet(ushort sid, uint pasid, out VtdPasidEntry entry)
    {
        var tag = new ByTag(sid, pasid);
        return _cache.TryGet(SetOf(sid, pasid), ref tag, out entry);
    }

    /// <summary>Inserts an entry; returns true when a valid entry had to be evicted.</summary>
    public bool Insert(in VtdPasidEntry entry)
    {
        var tag = new ByTag(entry.SourceId, entry.Pasid);
        return _cache.Insert(SetOf(entry.SourceId, entry.Pasid), ref tag, in entry, out _, out _);
    }

    public void InvalidateAll() => _cache.Clear();

    /// <summary>Drops entries of <paramref name="domainId"/>, and of one PASID when <paramref name="pasid"/> is given.</summary>
    public void Invalidate(ushort domainId, uint? pasid)
    {
        var selector = new ByDomain(domainId, pasid);
        _cache.RemoveAll(ref selector);
    }

    /// <summary>Drops the entries of the source-ids a device-selective context invalidation names (FM as in 11.4.6).</summary>
    public void InvalidateDevice(ushort sid, int functionMask)
    {
        var selector = new ByDevice(sid, VtdContextCache.FunctionBitsIgnored(functionMask));
        _cache.RemoveAll(ref selector);
    }
}

/// <summary>
/// One paging-structure-cache entry (VT-d spec 6.2.4): a present, valid non-leaf paging entry of
/// level <see cref="Level"/> (2 PDE, 3 PDPE, 4 PML4E, 5 PML5E) — the address of the table it
/// points to and the permissions accumulated from the top of the walk down to it.
/// </summary>
internal struct VtdPscEntry
{
    public ushort DomainId;
    /// <summary>PASID of a first-level entry (6.2.4: first-level entries are tagged by DID and PASID); <see cref="VtdIotlbEntry.NoPasid"/> for second level.</summary>
    public uint PasidTag;
    /// <summary>Level of the cached entry (2..5); it maps the 2^(12+9*(Level-1))-byte region <see cref="Prefix"/> names.</summary>
    public byte Level;
    /// <summary>The depth of the table hierarchy it came from (3..5).</summary>
    public byte Levels;
    /// <summary>Accumulated R (bit 0) and W (bit 1), the AND from the top level down to this one.</summary>
    public byte Permissions;
    /// <summary>First level only: <see cref="VtdIotlbEntry.FlagUser"/> and <see cref="VtdIotlbEntry.FlagExecute"/> accumulated the same way.</summary>
    public byte Flags;
    /// <summary>Input address bits above the region this entry maps: address &gt;&gt; (12 + 9 * (Level - 1)).</summary>
    public ulong Prefix;
    /// <summary>
    /// The top-level table pointer (SLPTPTR or FLPTR) of the walk. Not an architectural tag — the
    /// spec tags by DID (and PASID) only — but keeping it means a domain id software reuses with
    /// other tables can never alias, at no cost to a correctly invalidating guest.
    /// </summary>
    public ulong TableRoot;
    /// <summary>Address of the level-(Level-1) table this entry points to.</summary>
    public ulong NextTable;

    public readonly int Shift => 12 + 9 * (Level - 1);
}

/// <summary>
/// The paging-structure caches (VT-d spec 6.2.4, PML5E/PML4E/PDPE/PDE caches) as one bounded
/// set-associative cache tagged by level, domain id, PASID tag and the input address bits the
/// level translates. A walk starts below the deepest cached level (6.2.5). Entries are made only
/// from present, valid non-leaf entries of walks that succeeded (so first-level entries always
/// had their Accessed flag set, as a processor's paging-structure caches require). Not
/// thread-safe: the unit's lock guards it.
/// </summary>
internal sealed class VtdPagingStructureCache(int sets, int ways)
{
    readonly SetAssociativeCache<VtdPscEntry> _cache = new(sets, ways);

    readonly struct ByTag(ushort domainId, uint pasidTag, ulong tableRoot, byte levels, byte level, ulong prefix) : ICacheSelector<VtdPscEntry>
    {
        public bool Matches(in VtdPscEntry e) =>
            e.Prefix == prefix && e.Level == level && e.DomainId == domainId && e.PasidTag == pasidTag && e.TableRoot == tableRoot && e.Levels == levels;
    }

    /// <summary>An invalidation's selection: a domain (every PASID, or one), optionally only entries whose region overlaps [first, last].</summary>
    readonly struct Selection(ushort domainId, uint? pasid, ulong first, ulong last) : ICacheSelector<VtdPscEntry>
    {
        public bool Matches(in VtdPscEntry e)
        {
            if (e.DomainId != domainId || (pasid is uint p && e.PasidTag != p))
            {
                return false;
            }
            int shift = e.Shift;
            ulong start = shift >= 64 ? 0 : e.Prefix << shift;
            ulong end = shift >= 64 ? ulong.MaxValue : start + ((1UL << shift) - 1);
            return start <= last && first <= end;
        }
    }

    public int Capacity => _cache.Capacity;
    public int Count => _cache.Count;

    static int SetOf(ushort domainId, uint pasidTag, byte level, ulong prefix)
    {
        ulong h = (prefix ^ ((ulong)domainId << 9) ^ ((ulong)pasidTag << 25) ^ ((ulong)level << 50)) * 0x9E37_79B9_7F4A_7C15UL;
        return (int)(h >> 40);
    }

    /// <summary>The cached entry of <paramref name="level"/> on the way to <paramref name="address"/>, if any.</summary>
    public bool TryGet(ushort domainId, uint pasidTag, ulong tableRoot, byte levels, byte level, ulong address, out VtdPscEntry entry)
    {
        ulong prefix = address >> (12 + 9 * (level - 1));
        var tag = new ByTag(domainId, pasidTag, tableRoot, levels, level, prefix);
        return _cache.TryGet(SetOf(domainId, pasidTag, level, prefix), ref tag, out entry);
    }

    /// <summary>Inserts an entry; returns true when a valid entry was evicted to make room.</summary>
    public bool Insert(in VtdPscEntry entry)
    {
        var tag = new ByTag(entry.DomainId, entry.PasidTag, entry.TableRoot, entry.Levels, entry.Level, entry.Prefix);
        return _cache.Insert(SetOf(entry.DomainId, entry.PasidTag, entry.Level, entry.Prefix), ref tag, in entry, out _, out _);
    }

    /// <summary>Drops everything; returns how many entries were dropped.</summary>
    public int InvalidateAll()
    {
        int n = _cache.Count;
        _cache.Clear();
        return n;
    }

    /// <summary>Domain-selective (every PASID of the domain) or, with <paramref name="pasid"/>, PASID-selective invalidation.</summary>
    public int Invalidate(ushort domainId, uint? pasid)
    {
        var selection = new Selection(domainId, pasid, 0, ulong.MaxValue);
        return _cache.RemoveAll(ref selection);
    }

    /// <summary>
    /// Page-selective invalidation with IH=0 (6.5.2.3, 11.4.8.2): every entry of the domain (of one
    /// PASID when given) whose region overlaps the 2^(12+AM)-byte naturally aligned region holding
    /// <paramref name="address"/> — the non-leaf entries software may have changed or freed there.
    /// </summary>
    public int InvalidatePages(ushort domainId, uint? pasid, ulong address, int addressMask)
    {
        int regionShift = 12 + addressMask;
        ulong regionBase = regionShift >= 64 ? 0 : address & ~((1UL << regionShift) - 1);
        ulong regionLast = regionShift >= 64 ? ulong.MaxValue : regionBase + ((1UL << regionShift) - 1);
        var selection = new Selection(domainId, pasid, regionBase, regionLast);
        return _cache.RemoveAll(ref selection);
    }
}
