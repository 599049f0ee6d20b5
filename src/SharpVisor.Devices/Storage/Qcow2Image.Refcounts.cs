using System.Buffers.Binary;

namespace SharpVisor.Devices.Storage;

// Host cluster management (qcow2.txt, Host cluster management): a refcount table (in memory) points to
// refcount blocks (cached); refcount_bits = 1 << refcount_order, sub-byte entries start at bit 0.
public sealed partial class Qcow2Image
{
    long MaxHostClusters => MaxHostOffset >> _clusterBits;

    /// <summary>The header cluster, the L1 table and the refcount table.</summary>
    bool IsFixedMetadata(long cluster)
    {
        if (cluster == 0)
        {
            return true;
        }
        long l1First = _l1Offset >> _clusterBits, l1Last = (_l1Offset + _l1.Length * 8L - 1) >> _clusterBits;
        if (_l1.Length > 0 && cluster >= l1First && cluster <= l1Last)
        {
            return true;
        }
        long rtFirst = _refTableOffset >> _clusterBits;
        return cluster >= rtFirst && cluster < rtFirst + _refTableClusters;
    }

    bool IsMetadataCluster(long cluster) => IsFixedMetadata(cluster) || _metadata.Contains(cluster);

    static ulong LoadRefcount(ReadOnlySpan<byte> block, int order, long index) => order switch
    {
        < 3 => (ulong)(block[(int)((index << order) >> 3)] >> (int)((index << order) & 7)) & ((1UL << (1 << order)) - 1),
        3 => block[(int)index],
        4 => BinaryPrimitives.ReadUInt16BigEndian(block[(int)(index * 2)..]),
        5 => BinaryPrimitives.ReadUInt32BigEndian(block[(int)(index * 4)..]),
        _ => BinaryPrimitives.ReadUInt64BigEndian(block[(int)(index * 8)..]),
    };

    /// <summary>Stores a refcount into a block; returns the byte range that changed.</summary>
    static (int Start, int Length) StoreRefcount(Span<byte> block, int order, long index, ulong value)
    {
        switch (order)
        {
            case < 3:
                {
                    int bits = 1 << order;
                    int at = (int)((index << order) >> 3), shift = (int)((index << order) & 7);
                    int mask = ((1 << bits) - 1) << shift;
                    block[at] = (byte)((block[at] & ~mask) | ((int)value << shift & mask));
                    return (at, 1);
                }
            case 3:
                block[(int)index] = (byte)value;
                return ((int)index, 1);
            case 4:
                BinaryPrimitives.WriteUInt16BigEndian(block[(int)(index * 2)..], (ushort)value);
                return ((int)index * 2, 2);
            case 5:
                BinaryPrimitives.WriteUInt32BigEndian(block[(int)(index * 4)..], (uint)value);
                return ((int)index * 4, 4);
            default:
                BinaryPrimitives.WriteUInt64BigEndian(block[(int)(index * 8)..], value);
                return ((int)index * 8, 8);
        }
    }

    byte[] LoadRefBlock(long tableIndex)
    {
        long offset = (long)(_refTable[tableIndex] & ~RefTableReserved);
        var block = _refCache.TryGet(offset);
        if (block is not null)
        {
            return block;
        }
        block = _refCache.Insert(offset);
        if (ReadFully(_handle, block, offset) != _clusterSize)
        {
            _refCache.Remove(offset);
            throw Corrupt($"refcount block at 0x{offset:x} lies beyond the end of the file");
        }
        return block;
    }

    ulong GetRefcount(long cluster)
    {
        long t = cluster >> _refBlockBits;
        if (t >= _refTable.Length || _refTable[t] == 0)
        {
            return 0;
        }
        return LoadRefcount(LoadRefBlock(t), _refcountOrder, cluster & ((1L << _refBlockBits) - 1));
    }

    /// <summary>Writes one refcount to the file, then to the cached block (its refcount block must exist).</summary>
    void SetRefcount(long cluster, ulong value)
    {
        if (value > _refcountMax)
        {
            throw Corrupt($"refcount of host cluster {cluster} would overflow {_refcountMax}");
        }
        long t = cluster >> _refBlockBits;
        var block = LoadRefBlock(t);
        long blockOffset = (long)(_refTable[t] & ~RefTableReserved);
        Span<byte> changed = stackalloc byte[8];
        long index = cluster & ((1L << _refBlockBits) - 1);
        // Work on a copy of the affected bytes so that a failed write leaves the cache equal to the file.
        int start = (int)((index << _refcountOrder) >> 3);
        int length = Math.Max(1, (1 << _refcountOrder) / 8);
        block.AsSpan(start, length).CopyTo(changed);
        StoreRefcount(changed, _refcountOrder, _refcountOrder < 3 ? index & ((8 >> _refcountOrder) - 1) : 0, value);
        HostWrite(changed[..length], blockOffset + start);
        changed[..length].CopyTo(block.AsSpan(start));
    }

    void DecrementRefcount(long cluster)
    {
        ulong r = GetRefcount(cluster);
        if (r == 0)
        {
            throw Corrupt($"refcount of host cluster {cluster} would drop below zero");
        }
        SetRefcount(cluster, r - 1);
        if (r == 1)
        {
            _freeHint = Math.Min(_freeHint, cluster);
            if (_metadata.Remove(cluster))
            {
                _l2Cache.Remove(cluster << _clusterBits);
            }
        }
    }

    /// <summary>Finds a free host cluster and sets its refcount to 1 (on disk) before anything points to it.</summary>
    long AllocateCluster()
    {
        for (int attempt = 0; attempt < 8; attempt++)
        {
            long c = FindFreeCluster();
            EnsureRefcountBlock(c);
            if (GetRefcount(c) != 0 || IsMetadataCluster(c))
            {
                continue; // the new refcount block or table took this cluster
            }
            SetRefcount(c, 1);
            _freeHint = c + 1;
            return c << _clusterBits;
        }
        throw Corrupt("cannot allocate a host cluster");
    }

    long FindFreeCluster()
    {
        long c = _freeHint;
        long blockMask = (1L << _refBlockBits) - 1;
        // Clusters in use lie inside the file (we write every cluster we allocate); refcounts claiming
        // more than a block's span past its end are corrupt and must not turn into a scan of 2^47 entries.
        long limit = Math.Min(MaxHostClusters, ((_fileLength + _clusterSize - 1) >> _clusterBits) + blockMask + 1);
        while (c < MaxHostClusters)
        {
            if (c > limit)
            {
                throw Corrupt("refcounts mark clusters beyond the end of the file as used");
            }
            long t = c >> _refBlockBits;
            if (t >= _refTable.Length || _refTable[t] == 0)
            {
                if (!IsMetadataCluster(c))
                {
                    return c;
                }
                c++;
                continue;
            }
            var block = LoadRefBlock(t);
            for (long i = c & blockMask; i <= blockMask; i++, c++)
            {
                if (LoadRefcount(block, _refcountOrder, i) == 0 && !IsMetadataCluster(c))
                {
                    return c;
                }
            }
        }
        throw new IOException($"qcow2 image '{_name}' is full (host offsets reach 2^56)");
    }

    /// <summary>
    /// Makes sure the refcount block covering <paramref name="cluster"/> exists. A new block describes
    /// itself: it goes into the first free cluster of the range it covers (all of which are free, having
    /// no block), with its own refcount 1, and is written before the table entry that points to it.
    /// </summary>
    void EnsureRefcountBlock(long cluster)
    {
        long t = cluster >> _refBlockBits;
        if (t >= _refTable.Length)
        {
            GrowRefcountTable(t);
        }
        if (_refTable[t] != 0)
        {
            return;
        }
        long first = t << _refBlockBits;
        long b = first;
        while (IsMetadataCluster(b))
        {
            b++;
        }
        if (b - first > ((1L << _refBlockBits) - 1))
        {
            throw Corrupt($"no room for refcount block {t}");
        }
        Array.Clear(_scratch);
        StoreRefcount(_scratch, _refcountOrder, b - first, 1);
        WriteCluster(b << _clusterBits, _scratch);
        WriteRefTableEntry(t, (ulong)(b << _clusterBits));
        _metadata.Add(b);
        _scratch.CopyTo(_refCache.Insert(b << _clusterBits), 0);
    }

    void WriteRefTableEntry(long index, ulong value)
    {
        Span<byte> e = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(e, value);
        HostWrite(e, _refTableOffset + index * 8);
        _refTable[index] = value;
    }

    /// <summary>
    /// Moves the refcount table to a bigger one so that it has entry <paramref name="neededIndex"/>. The new
    /// table and the refcount blocks describing it go beyond everything the old table covers and beyond the
    /// end of the file: they are written first, then the header is switched to the new table in one write,
    /// then the old table's clusters are freed. Dying before the header write leaves only unreferenced
    /// space past the old table's reach; after it, at worst the old table leaks.
    /// </summary>
    void GrowRefcountTable(long neededIndex)
    {
        GrowthStartedAtWrite = HostWrites;
        long perTableCluster = _clusterSize / 8;
        long oldEntries = _refTable.Length;
        long start = Math.Max((_fileLength + _clusterSize - 1) >> _clusterBits, oldEntries << _refBlockBits);
        long entries = Math.Max(neededIndex + 1, oldEntries * 2);
        long tableClusters, blocks;
        for (; ; )
        {
            tableClusters = (entries + perTableCluster - 1) / perTableCluster;
            blocks = 0;
            for (; ; )
            {
                long need = ((start + tableClusters + blocks - 1) >> _refBlockBits) - (start >> _refBlockBits) + 1;
                if (need == blocks)
                {
                    break;
                }
                blocks = need;
            }
            long lastIndex = (start + tableClusters + blocks - 1) >> _refBlockBits;
            if (lastIndex < entries)
            {
                break;
            }
            entries = lastIndex + 1;
        }
        if (tableClusters << _clusterBits > MaxRefTableBytes || start + tableClusters + blocks > MaxHostClusters)
        {
            throw new IOException($"qcow2 image '{_name}' is full (refcount table limit)");
        }
        entries = tableClusters * perTableCluster;
        long end = start + tableClusters + blocks;
        long blocksAt = start + tableClusters;
        long firstIndex = start >> _refBlockBits;

        // 1. The refcount blocks: refcount 1 for every cluster of the new area (table and blocks).
        for (long k = 0; k < blocks; k++)
        {
            Array.Clear(_scratch);
            long covered = (firstIndex + k) << _refBlockBits;
            for (long c = Math.Max(start, covered); c < Math.Min(end, covered + (1L << _refBlockBits)); c++)
            {
                StoreRefcount(_scratch, _refcountOrder, c - covered, 1);
            }
            WriteCluster((blocksAt + k) << _clusterBits, _scratch);
        }

        // 2. The new table: the old entries plus the new blocks.
        var table = new ulong[entries];
        _refTable.CopyTo(table, 0);
        for (long k = 0; k < blocks; k++)
        {
            table[firstIndex + k] = (ulong)((blocksAt + k) << _clusterBits);
        }
        for (long tc = 0; tc < tableClusters; tc++)
        {
            for (int i = 0; i < perTableCluster; i++)
            {
                BinaryPrimitives.WriteUInt64BigEndian(_scratch.AsSpan(i * 8), table[tc * perTableCluster + i]);
            }
            WriteCluster((start + tc) << _clusterBits, _scratch);
        }

        // 3. Switch the header (refcount_table_offset and refcount_table_clusters are adjacent: one write).
        Span<byte> header = stackalloc byte[12];
        BinaryPrimitives.WriteUInt64BigEndian(header, (ulong)(start << _clusterBits));
        BinaryPrimitives.WriteUInt32BigEndian(header[8..], (uint)tableClusters);
        HostWrite(header, HRefTableOffset);

        long oldFirst = _refTableOffset >> _clusterBits;
        int oldClusters = _refTableClusters;
        _refTable = table;
        _refTableOffset = start << _clusterBits;
        _refTableClusters = (int)tableClusters;
        for (long k = 0; k < blocks; k++)
        {
            _metadata.Add(blocksAt + k);
        }

        // 4. Free the old table.
        for (long c = oldFirst; c < oldFirst + oldClusters; c++)
        {
            DecrementRefcount(c);
        }
    }
}
