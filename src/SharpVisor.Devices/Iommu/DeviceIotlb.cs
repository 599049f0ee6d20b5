using SharpVisor.Core;
using SharpVisor.Devices.Pci;

namespace SharpVisor.Devices.Iommu;

/// <summary>
/// A device-TLB (VT-d spec 4.1; PCIe ATS "ATC"): the translations a PCI function with the ATS
/// capability caches for itself, tagged by PASID (or none) and untranslated page, bounded and
/// set-associative with LRU replacement. Thread-safe (its own lock): the device's DMA and the
/// unit's invalidations may come from different threads.
/// </summary>
public sealed class DeviceIotlb
{
    internal struct Entry
    {
        public uint Pasid;            // NoPasid for requests-without-PASID
        public byte PageShift;
        public AtsPermissions Permissions;
        public ulong PageNumber;      // untranslated address >> PageShift
        public ulong TranslatedBase;
    }

    readonly struct ByTag(uint pasid, ulong pageNumber, byte shift) : ICacheSelector<Entry>
    {
        public bool Matches(in Entry e) => e.PageNumber == pageNumber && e.PageShift == shift && e.Pasid == pasid;
    }

    readonly struct Overlapping(uint pasid, ulong first, ulong last) : ICacheSelector<Entry>
    {
        public bool Matches(in Entry e)
        {
            ulong start = e.PageNumber << e.PageShift;
            ulong end = start + ((1UL << e.PageShift) - 1);
            return e.Pasid == pasid && start <= last && first <= end;
        }
    }

    const uint NoPasid = uint.MaxValue;
    static readonly byte[] PageShifts = [12, 21, 30];

    readonly Lock _lock = new();
    readonly SetAssociativeCache<Entry> _cache;

    public DeviceIotlb(string name, int sets = 16, int ways = 4, CounterRegistry? registry = null)
    {
        if (sets <= 0 || (sets & (sets - 1)) != 0 || ways is < 1 or > 64)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(sets), "the device-TLB needs a power-of-two set count and 1..64 ways");
        }
        _cache = new SetAssociativeCache<Entry>(sets, ways);
        Counter C(string n)
        {
            var c = new Counter($"{name}.devtlb.{n}");
            registry?.Add(c);
            return c;
        }
        Hits = C("hits");
        Misses = C("misses");
        Evictions = C("evictions");
        Invalidations = C("invalidations");
        InvalidatedEntries = C("invalidated_entries");
    }

    public Counter Hits { get; }
    public Counter Misses { get; }
    public Counter Evictions { get; }
    /// <summary>Invalidation requests received from the IOMMU.</summary>
    public Counter Invalidations { get; }
    public Counter InvalidatedEntries { get; }

    public int Capacity => _cache.Capacity;

    public IEnumerable<Counter> Counters => [Hits, Misses, Evictions, Invalidations, InvalidatedEntries];

    public int Count
    {
        get
        {
            lock (_lock)
            {
                return _cache.Count;
            }
        }
    }

    static int SetOf(uint pasid, ulong pageNumber, byte shift)
    {
        ulong h = (pageNumber ^ ((ulong)pasid << 11) ^ shift) * 0x9E37_79B9_7F4A_7C15UL;
        return (int)(h >> 40);
    }

    /// <summary>Looks up a cached translation of <paramref name="address"/> that grants <paramref name="needed"/>.</summary>
    public bool TryTranslate(uint? pasid, ulong address, AtsPermissions needed, out ulong translated, out ulong bytesInPage)
    {
        uint tag = pasid ?? NoPasid;
        lock (_lock)
        {
            foreach (byte shift in PageShifts)
            {
                ulong page = address >> shift;
                var selector = new ByTag(tag, page, shift);
                if (_cache.TryGet(SetOf(tag, page, shift), ref selector, out var e) && (e.Permissions & needed) == needed)
                {
                    ulong offset = address & ((1UL << shift) - 1);
                    translated = e.TranslatedBase + offset;
                    bytesInPage = (1UL << shift) - offset;
                    Hits.Increment();
                    return true;
                }
            }
        }
        Misses.Increment();
        translated = 0;
        bytesInPage = 0;
        return false;
    }

    /// <summary>Caches a successful translation completion for <paramref name="address"/>.</summary>
    public void Insert(uint? pasid, ulong address, in AtsTranslation translation)
    {
        if (translation.Status != AtsStatus.Success || translation.Permissions == AtsPermissions.None
            || translation.PageShift is not (12 or 21 or 30))
        {
            return; // nothing usable: ATS says a denial must not be cached as a translation
        }
        byte shift = (byte)translation.PageShift;
        var entry = new Entry
        {
            Pasid = pasid ?? NoPasid,
            PageShift = shift,
            Permissions = translation.Permissions,
            PageNumber = address >> shift,
            TranslatedBase = translation.TranslatedAddress & ~((1UL << shift) - 1),
        };
        lock (_lock)
        {
            var tag = new ByTag(entry.Pasid, entry.PageNumber, shift);
            if (_cache.Insert(SetOf(entry.Pasid, entry.PageNumber, shift), ref tag, in entry, out _, out _))
            {
                Evictions.Increment();
            }
        }
    }

    /// <summary>Drops every cached translation of <paramref name="pasid"/> (null: requests-without-PASID) overlapping the range.</summary>
    public void Invalidate(ulong address, ulong size, uint? pasid)
    {
        ulong last = size == ulong.MaxValue || address + size - 1 < address ? ulong.MaxValue : address + size - 1;
        if (size == ulong.MaxValue) address = 0;
        var selector = new Overlapping(pasid ?? NoPasid, address, last);
        lock (_lock)
        {
            Invalidations.Increment();
            InvalidatedEntries.Add(_cache.RemoveAll(ref selector));
        }
    }

    public void Clear()
    {
        lock (_lock)
        {
            _cache.Clear();
        }
    }
}

/// <summary>
/// The DMA path of a PCI function that uses ATS (VT-d 4.2): look in the device-TLB, else send a
/// translation request to the unit and cache the answer, then issue a translated request. A
/// page the unit will not translate is retried as an ordinary untranslated request, which the
/// unit blocks and reports as a fault. It is also the function's <see cref="IAtsEndpoint"/>:
/// invalidations drop device-TLB entries and are answered with their tag at once. As the
/// <see cref="IAtsPort"/> of a <see cref="PciFunction"/> with the ATS capability, it is used while
/// the guest has ATS Enable set and connected to the unit's invalidations only then.
/// </summary>
public sealed class AtsDmaSpace : IAtsPort, IAtsEndpoint
{
    volatile int _smallestShift = 12;

    readonly IntelIommu _unit;
    readonly ushort _requesterId;
    readonly uint? _pasid;
    readonly IDmaSpace _untranslated;
    readonly TranslatedRequestPermit _permit = new();

    /// <param name="pasid">Issue requests-with-PASID under this PASID (scalable mode), or none.</param>
    public AtsDmaSpace(IntelIommu unit, ushort requesterId, DeviceIotlb tlb, uint? pasid = null)
    {
        _unit = unit;
        _requesterId = requesterId;
        _pasid = pasid;
        Tlb = tlb;
        _untranslated = pasid is uint p ? unit.DmaSpaceFor(requesterId, p) : unit.DmaSpaceFor(requesterId);
    }

    public DeviceIotlb Tlb { get; }

    /// <summary>Registers this function as the ATS endpoint of its requester id (the ATS capability's Enable bit was set).</summary>
    public void Attach() => _unit.AttachAtsEndpoint(_requesterId, this);

    public IEnumerable<Counter> Counters => Tlb.Counters;

    /// <summary>
    /// ATS Enable set: the device-TLB starts empty and the unit's device-TLB invalidations for
    /// this requester reach it. Cleared: it is disconnected (outstanding invalidation tags are
    /// released by the unit) and forgets every translation (PCIe Base 4.0, 10.5.1.3: with Enable
    /// clear the function may not cache translations).
    /// </summary>
    public void SetEnabled(bool enabled, int smallestTranslationShift)
    {
        _smallestShift = Math.Clamp(smallestTranslationShift, 12, 63);
        Tlb.Clear();
        if (enabled)
        {
            _unit.AttachAtsEndpoint(_requesterId, this);
        }
        else
        {
            _unit.DetachAtsEndpoint(_requesterId);
        }
    }

    public void InvalidateDeviceTlb(ulong address, ulong size, uint? pasid, byte tag)
    {
        Tlb.Invalidate(address, size, pasid);
        _unit.CompleteDeviceTlbInvalidation(_requesterId, 1u << tag);
    }

    public DmaStatus Read(ulong address, Span<byte> destination)
    {
        int done = 0;
        while (done < destination.Length)
        {
            ulong at = address + (ulong)done;
            if (!Translate(at, write: false, out ulong translated, out ulong inPage))
            {
                return _untranslated.Read(at, destination[done..]);
            }
            int len = (int)Math.Min(inPage, (ulong)(destination.Length - done));
            var status = _unit.TranslatedDmaRead(_requesterId, translated, destination.Slice(done, len), _permit);
            if (status != DmaStatus.Ok)
            {
                return status;
            }
            done += len;
        }
        return DmaStatus.Ok;
    }

    public DmaStatus Write(ulong address, ReadOnlySpan<byte> source)
    {
        int done = 0;
        while (done < source.Length)
        {
            ulong at = address + (ulong)done;
            if (!Translate(at, write: true, out ulong translated, out ulong inPage))
            {
                return _untranslated.Write(at, source[done..]);
            }
            int len = (int)Math.Min(inPage, (ulong)(source.Length - done));
            var status = _unit.TranslatedDmaWrite(_requesterId, translated, source.Slice(done, len), _permit);
            if (status != DmaStatus.Ok)
            {
                return status;
            }
            done += len;
        }
        return DmaStatus.Ok;
    }

    bool Translate(ulong address, bool write, out ulong translated, out ulong bytesInPage)
    {
        var needed = write ? AtsPermissions.Write : AtsPermissions.Read;
        if (Tlb.TryTranslate(_pasid, address, needed, out translated, out bytesInPage))
        {
            return true;
        }
        var answer = _unit.AtsTranslate(_requesterId, _pasid, address, write);
        if (answer.Status != AtsStatus.Success || (answer.Permissions & needed) != needed)
        {
            return false;
        }
        if (answer.PageShift >= _smallestShift)
        {
            // A translation smaller than the Smallest Translation Unit software programmed is used
            // for this request only, never cached (PCIe Base 4.0, 10.5.1.3 STU).
            Tlb.Insert(_pasid, address, in answer);
        }
        translated = answer.TranslatedAddress;
        bytesInPage = (1UL << answer.PageShift) - (address & ((1UL << answer.PageShift) - 1));
        return true;
    }
}
