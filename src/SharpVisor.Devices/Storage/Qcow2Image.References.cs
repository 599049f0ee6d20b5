using System.Buffers.Binary;

namespace SharpVisor.Devices.Storage;

// The reference check made before a read-write open (issue 16 defect 9b). New clusters are taken where the
// refcount is 0, so a refcount lower than the references to a cluster (zeroed refcount blocks, a changed
// refcount_order, a bad repair) would let the next allocation overwrite data or metadata the guest never
// touched. Like `qemu-img check` (QEMU's check_refcounts), count every reference the image makes — header,
// L1 table, refcount table and blocks, snapshot table, every L1 table (active and snapshots), the L2 tables
// they point to and the data and compressed clusters in those — and compare with the stored refcounts.
public sealed partial class Qcow2Image
{
    const int HSnapshotsOffset = 64;
    // qcow2.txt, Snapshot table: 40 fixed bytes, then extra data, id and name, padded to 8 bytes.
    const int SnapshotFixedLength = 40;
    // QEMU's limits (block/qcow2.h): 65536 snapshots, a 64 MiB snapshot table.
    const uint MaxSnapshots = 65536;
    const long MaxSnapshotTableBytes = 64L << 20;
    // Bounds on the check's work and memory, far above real images (2^20 L2 tables map 256 TiB with 64 KiB
    // clusters) and far below what a hostile sparse file could demand.
    const int MaxCheckedL2Tables = 1 << 20;
    const long MaxSnapshotL1Entries = 1L << 26;
    const int MaxTallyPages = 1 << 17; // 1 GiB of counts: 2^29 clusters

    sealed class CheckLimitException(string message) : Exception(message);

    /// <summary>
    /// Counts the references to every host cluster and compares them with the refcounts. Returns null when
    /// every referenced cluster's refcount covers its references (and a cluster marked "copied" in the
    /// active tables has refcount 1, as writing in place assumes), otherwise one line naming the first
    /// problem. Leaks (refcounts above the references) are harmless and allowed. Entries the guest path
    /// refuses on access anyway (misaligned or reserved bits) are not counted, as in QEMU's check.
    /// Snapshot tables and L1 tables join the metadata that data writes and allocations must avoid.
    /// </summary>
    string? CheckReferences(long snapshotsOffset)
    {
        try
        {
            return CountAndCompareReferences(snapshotsOffset);
        }
        catch (CheckLimitException e)
        {
            return $"{e.Message}: too large to check before writing";
        }
    }

    string? CountAndCompareReferences(long snapshotsOffset)
    {
        long fileClusters = (_fileLength + _clusterSize - 1) >> _clusterBits;
        var tally = new ClusterTally();
        int problems = 0;
        string? first = null;
        void Problem(string what)
        {
            problems++;
            first ??= what;
        }
        void Reference(long offset, long length, int times, bool copied, string what)
        {
            long last = (offset + length - 1) >> _clusterBits;
            if (last >= fileClusters)
            {
                Problem($"{what} at 0x{offset:x} lies beyond the end of the file");
                return;
            }
            for (long c = offset >> _clusterBits; c <= last; c++)
            {
                tally.Add(c, times, copied);
            }
        }

        Reference(0, _clusterSize, 1, false, "header");
        if (_l1.Length > 0)
        {
            Reference(_l1Offset, _l1.Length * 8L, 1, false, "L1 table");
        }
        Reference(_refTableOffset, (long)_refTableClusters << _clusterBits, 1, false, "refcount table");
        foreach (ulong e in _refTable)
        {
            if (e != 0)
            {
                Reference((long)(e & ~RefTableReserved), _clusterSize, 1, false, "refcount block");
            }
        }

        // Every L2 table with the number of L1 entries (active and snapshots) that point to it. QEMU counts
        // a table's data clusters once per such entry: taking a snapshot increments them all.
        var l2Tables = new Dictionary<long, L2Use>();
        void UseL2(long offset, bool active, bool copied)
        {
            var use = l2Tables.GetValueOrDefault(offset);
            if (use.Times == 0 && l2Tables.Count >= MaxCheckedL2Tables)
            {
                throw new CheckLimitException($"more than {MaxCheckedL2Tables} L2 tables");
            }
            l2Tables[offset] = new L2Use(use.Times + 1, use.Active || active, use.Copied || copied);
        }
        foreach (ulong e in _l1) // validated at open: aligned, inside the file, clear of fixed metadata
        {
            long off = (long)(e & L1OffsetMask);
            if (off != 0)
            {
                UseL2(off, active: true, copied: (e & Copied) != 0);
            }
        }
        if (SnapshotCount > 0)
        {
            ReadSnapshots(snapshotsOffset, Problem, Reference, off => UseL2(off, active: false, copied: false));
        }

        var table = new byte[_clusterSize];
        foreach (var (offset, use) in l2Tables)
        {
            Reference(offset, _clusterSize, use.Times, use.Active && use.Copied, "L2 table");
            if (ReadFully(_handle, table, offset) != _clusterSize)
            {
                continue; // beyond the file: reported just above
            }
            for (int i = 0; i < _clusterSize / 8; i++)
            {
                ulong e = Entry(table, i);
                if ((e & CompressedFlag) != 0)
                {
                    // A compressed cluster holds a reference on every host cluster its sectors touch.
                    long at = (long)(e & _compressedOffsetMask);
                    long sectors = (long)((e >> _compressedShift) & _compressedSectorMask) + 1;
                    if (at < _clusterSize)
                    {
                        Problem($"compressed cluster at 0x{at:x} lies in the header");
                        continue;
                    }
                    Reference(at & ~511L, sectors * 512, use.Times, false, "compressed cluster");
                    continue;
                }
                long host = (long)(e & L2OffsetMask);
                if (host == 0 || (e & L2Reserved) != 0 || (host & (_clusterSize - 1)) != 0)
                {
                    continue; // unallocated, or refused with an I/O error when the guest touches it
                }
                Reference(host, _clusterSize, use.Times, use.Active && (e & Copied) != 0, "data cluster");
            }
        }

        // Compare, one refcount block at a time.
        var block = new byte[_clusterSize];
        long loaded = -1;
        foreach (long page in tally.Pages.Keys.Order())
        {
            var counts = tally.Pages[page];
            for (int i = 0; i < counts.Length; i++)
            {
                if (counts[i] == 0)
                {
                    continue;
                }
                long c = page << ClusterTally.PageBits | (long)i;
                int references = counts[i] & ClusterTally.CountMask;
                long t = c >> _refBlockBits;
                ulong refcount = 0;
                if (t < _refTable.Length && _refTable[t] != 0)
                {
                    if (t != loaded)
                    {
                        ReadFully(_handle, block, (long)(_refTable[t] & ~RefTableReserved));
                        loaded = t;
                    }
                    refcount = LoadRefcount(block, _refcountOrder, c & ((1L << _refBlockBits) - 1));
                }
                if (refcount < (ulong)references)
                {
                    Problem($"host cluster {c} (0x{c << _clusterBits:x}) has refcount {refcount} but {references} reference{(references == 1 ? "" : "s")}");
                }
                else if ((counts[i] & ClusterTally.CopiedBit) != 0 && refcount != 1)
                {
                    Problem($"host cluster {c} (0x{c << _clusterBits:x}) is marked unshared (\"copied\") but has refcount {refcount}");
                }
            }
        }
        return problems switch
        {
            0 => null,
            1 => first,
            _ => $"{first} (and {problems - 1} more problem{(problems == 2 ? "" : "s")})",
        };
    }

    readonly record struct L2Use(int Times, bool Active, bool Copied);

    /// <summary>Walks the snapshot table (qcow2.txt, Snapshot table): references it and each snapshot's L1 table.</summary>
    void ReadSnapshots(long tableOffset, Action<string> problem, Action<long, long, int, bool, string> reference, Action<long> useL2)
    {
        if (SnapshotCount > MaxSnapshots || tableOffset <= 0 || (tableOffset & (_clusterSize - 1)) != 0 || tableOffset >= _fileLength)
        {
            problem($"snapshot table at 0x{tableOffset:x} ({SnapshotCount} snapshots) is misaligned, absurd or beyond the end of the file");
            return;
        }
        Span<byte> entry = stackalloc byte[SnapshotFixedLength];
        long at = tableOffset;
        long l1Entries = 0;
        for (uint s = 0; s < SnapshotCount; s++)
        {
            if (at + SnapshotFixedLength - tableOffset > MaxSnapshotTableBytes || ReadFully(_handle, entry, at) != SnapshotFixedLength)
            {
                problem($"snapshot table at 0x{tableOffset:x} is truncated or larger than {MaxSnapshotTableBytes >> 20} MiB");
                break;
            }
            long l1Offset = (long)BinaryPrimitives.ReadUInt64BigEndian(entry);
            uint l1Size = BinaryPrimitives.ReadUInt32BigEndian(entry[8..]);
            int idLength = BinaryPrimitives.ReadUInt16BigEndian(entry[12..]);
            int nameLength = BinaryPrimitives.ReadUInt16BigEndian(entry[14..]);
            uint extraLength = BinaryPrimitives.ReadUInt32BigEndian(entry[36..]);
            at = (at + SnapshotFixedLength + Math.Min(extraLength, MaxSnapshotTableBytes) + idLength + nameLength + 7) & ~7L;

            if (l1Size == 0)
            {
                continue;
            }
            if ((ulong)l1Size * 8 > MaxL1Bytes || !RangeInFile((ulong)l1Offset, (ulong)l1Size * 8, _clusterSize, _fileLength))
            {
                problem($"snapshot {s}'s L1 table at 0x{l1Offset:x} ({l1Size} entries) is misaligned, absurd or beyond the end of the file");
                continue;
            }
            l1Entries += l1Size;
            if (l1Entries > MaxSnapshotL1Entries)
            {
                throw new CheckLimitException($"snapshot L1 tables of more than {MaxSnapshotL1Entries} entries");
            }
            reference(l1Offset, l1Size * 8L, 1, false, $"snapshot {s}'s L1 table");
            for (long c = l1Offset >> _clusterBits; c <= (l1Offset + l1Size * 8L - 1) >> _clusterBits; c++)
            {
                _metadata.Add(c);
            }
            var l1 = ReadTable(_handle, l1Offset, (int)l1Size);
            for (int i = 0; i < l1.Length; i++)
            {
                long off = (long)(l1[i] & L1OffsetMask);
                if (off == 0)
                {
                    continue;
                }
                if (!RangeInFile((ulong)off, (ulong)_clusterSize, _clusterSize, _fileLength))
                {
                    // Its L2 table's references could not be counted, so its data would be unprotected.
                    problem($"snapshot {s}'s L1 entry {i} points to 0x{off:x}, misaligned or beyond the end of the file");
                    continue;
                }
                useL2(off);
            }
        }
        reference(tableOffset, Math.Max(at - tableOffset, 1), 1, false, "snapshot table");
        for (long c = tableOffset >> _clusterBits; c <= (Math.Max(at, tableOffset + 1) - 1) >> _clusterBits; c++)
        {
            _metadata.Add(c);
        }
    }

    /// <summary>
    /// References per host cluster, in pages allocated on first use (a sparse file costs nothing for its
    /// holes): 15 bits of count (saturating) and a bit for "referenced with the copied flag".
    /// </summary>
    sealed class ClusterTally
    {
        public const int PageBits = 12;
        public const ushort CopiedBit = 0x8000;
        public const ushort CountMask = 0x7FFF;

        public Dictionary<long, ushort[]> Pages { get; } = [];

        public void Add(long cluster, int times, bool copied)
        {
            if (!Pages.TryGetValue(cluster >> PageBits, out var page))
            {
                if (Pages.Count >= MaxTallyPages)
                {
                    throw new CheckLimitException($"references spread over more than {(long)MaxTallyPages << PageBits} host clusters");
                }
                page = new ushort[1 << PageBits];
                Pages.Add(cluster >> PageBits, page);
            }
            ref ushort v = ref page[cluster & ((1 << PageBits) - 1)];
            int count = Math.Min((v & CountMask) + times, CountMask);
            v = (ushort)(count | (v & CopiedBit) | (copied ? CopiedBit : 0));
        }
    }
}
