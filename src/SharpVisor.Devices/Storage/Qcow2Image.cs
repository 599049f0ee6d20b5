using System.Buffers.Binary;
using System.IO.Compression;
using Microsoft.Win32.SafeHandles;
using SharpVisor.Core;

namespace SharpVisor.Devices.Storage;

/// <summary>
/// A qcow2 image (versions 2 and 3, unencrypted, no backing file), read-write, following QEMU's
/// docs/interop/qcow2.txt. Guest clusters map through the L1 table (kept in memory) and L2 tables (a
/// bounded cache); host clusters are reference-counted in refcount blocks (any refcount_order 0..6).
/// Unallocated and zero-flagged clusters read as zeros; compressed (zlib/deflate) clusters are read and,
/// on write, copied to a new cluster; clusters and L2 tables whose "copied" bit is clear (shared, e.g. by
/// an internal snapshot) are copied on write too.
///
/// Crash consistency (the VMM may die between any two writes): metadata is write-through and written in
/// QEMU's order — a new cluster's refcount before the cluster's contents, the contents before the L2 or
/// L1 entry that points to it, and a reference is removed before its refcount drops. A crash therefore
/// leaves at worst a leaked cluster, never a reference to unowned or unwritten space. <see cref="Flush"/>
/// is fsync. Corruption found during an access is a <see cref="DiskImageCorruptException"/> (the guest
/// sees an I/O error); the image then refuses further writes and a v3 image gets its corrupt bit set,
/// as QEMU does.
/// </summary>
public sealed partial class Qcow2Image : IDiskImage
{
    // L1/L2 entry layout (qcow2.txt, Cluster mapping).
    const ulong L1OffsetMask = 0x00FF_FFFF_FFFF_FE00;
    const ulong L1Reserved = 0x7F00_0000_0000_01FF;
    const ulong Copied = 1UL << 63;
    const ulong CompressedFlag = 1UL << 62;
    const ulong ZeroFlag = 1;
    const ulong L2OffsetMask = 0x00FF_FFFF_FFFF_FE00;
    const ulong L2Reserved = 0x3F00_0000_0000_01FE;
    const ulong RefTableReserved = 0x1FF;

    readonly FileStream _file;
    readonly SafeFileHandle _handle;
    readonly string _name;
    readonly Lock _gate = new();
    readonly int _version;
    readonly int _clusterBits;
    readonly int _clusterSize;
    readonly int _l2Bits;
    readonly ulong[] _l1;
    readonly long _l1Offset;
    ulong[] _refTable;
    long _refTableOffset;
    int _refTableClusters;
    readonly int _refcountOrder;
    readonly int _refBlockBits;
    readonly ulong _refcountMax;
    readonly int _compressedShift;
    readonly ulong _compressedOffsetMask;
    readonly ulong _compressedSectorMask;

    readonly ClusterCache _l2Cache;
    readonly ClusterCache _refCache;
    /// <summary>Host cluster indices of the active L2 tables and the refcount blocks (QEMU's overlap check).</summary>
    readonly HashSet<long> _metadata = [];
    /// <summary>The log of the VM using this image.</summary>
    readonly Log Log;

    long _fileLength;
    long _freeHint;
    bool _corrupt;
    bool _disposed;

    readonly byte[] _cow;
    readonly byte[] _scratch;
    readonly byte[] _zeros;
    readonly byte[] _compressed;
    readonly byte[] _decompressed;
    ulong _decompressedEntry;

    Qcow2Image(FileStream file, string name, bool readOnly, Header h, long fileLength, Log log)
    {
        Log = log;
        _file = file;
        _handle = file.SafeFileHandle;
        _name = name;
        ReadOnly = readOnly || !file.CanWrite;
        _version = (int)h.Version;
        _clusterBits = h.ClusterBits;
        _clusterSize = 1 << h.ClusterBits;
        _l2Bits = h.ClusterBits - 3;
        Length = h.Size;
        _l1 = h.L1;
        _l1Offset = h.L1Offset;
        _refTable = h.RefTable;
        _refTableOffset = h.RefTableOffset;
        _refTableClusters = h.RefTableClusters;
        _refcountOrder = h.RefcountOrder;
        _refBlockBits = h.ClusterBits + 3 - h.RefcountOrder;
        _refcountMax = h.RefcountOrder == 6 ? ulong.MaxValue : (1UL << (1 << h.RefcountOrder)) - 1;
        // Compressed cluster descriptor: offset in bits 0..x-1, extra sector count in x..61, x = 62 - (cluster_bits - 8).
        _compressedShift = 62 - (h.ClusterBits - 8);
        _compressedOffsetMask = (1UL << _compressedShift) - 1;
        _compressedSectorMask = (1UL << (h.ClusterBits - 8)) - 1;
        _fileLength = fileLength;
        SnapshotCount = h.SnapshotCount;

        // Bounded caches: about 4 MiB of L2 tables (a 64 KiB-cluster table maps 512 MiB) and 1 MiB of refcount blocks.
        _l2Cache = new ClusterCache(_clusterSize, Math.Clamp((4 << 20) >> _clusterBits, 8, 1024));
        _refCache = new ClusterCache(_clusterSize, Math.Clamp((1 << 20) >> _clusterBits, 4, 256));
        _cow = new byte[_clusterSize];
        _scratch = new byte[_clusterSize];
        _zeros = new byte[_clusterSize];
        _compressed = new byte[2 * _clusterSize];
        _decompressed = new byte[_clusterSize];
    }

    /// <summary>Creates an empty image (no backing file, no extensions); used by tests and tools.</summary>
    public static void Create(string path, long size, int clusterBits = 16, int version = 3, int refcountOrder = 4)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(clusterBits, MinClusterBits);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(clusterBits, MaxClusterBits);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(refcountOrder, version == 2 ? 4 : 6);
        int cs = 1 << clusterBits;
        long l2Coverage = 1L << (2 * clusterBits - 3);
        long l1Entries = (size + l2Coverage - 1) / l2Coverage;
        long l1Clusters = Math.Max(1, (l1Entries * 8 + cs - 1) / cs);
        // Layout: header, refcount table, refcount block, L1 table — all covered by the one refcount block.
        long used = 3 + l1Clusters;
        if (used > (long)cs * 8 >> refcountOrder)
        {
            throw new ArgumentOutOfRangeException(nameof(size), "too large for a single refcount block");
        }
        var image = new byte[used * cs];
        var hdr = image.AsSpan();
        Magic.CopyTo(hdr);
        BinaryPrimitives.WriteUInt32BigEndian(hdr[HVersion..], (uint)version);
        BinaryPrimitives.WriteUInt32BigEndian(hdr[HClusterBits..], (uint)clusterBits);
        BinaryPrimitives.WriteUInt64BigEndian(hdr[HSize..], (ulong)size);
        BinaryPrimitives.WriteUInt32BigEndian(hdr[HL1Size..], (uint)l1Entries);
        BinaryPrimitives.WriteUInt64BigEndian(hdr[HL1Offset..], 3UL * (ulong)cs);
        BinaryPrimitives.WriteUInt64BigEndian(hdr[HRefTableOffset..], (ulong)cs);
        BinaryPrimitives.WriteUInt32BigEndian(hdr[HRefTableClusters..], 1);
        if (version == 3)
        {
            BinaryPrimitives.WriteUInt32BigEndian(hdr[HRefcountOrder..], (uint)refcountOrder);
            BinaryPrimitives.WriteUInt32BigEndian(hdr[HHeaderLength..], V3HeaderLength);
        }
        BinaryPrimitives.WriteUInt64BigEndian(hdr[cs..], 2UL * (ulong)cs);
        var block = hdr.Slice(2 * cs, cs);
        for (long c = 0; c < used; c++)
        {
            StoreRefcount(block, refcountOrder, c, 1);
        }
        File.WriteAllBytes(path, image);
    }

    public long Length { get; }
    public bool ReadOnly { get; }
    public int ClusterSize => _clusterSize;
    public int Version => _version;
    public uint SnapshotCount { get; }

    /// <summary>Corruption found while serving requests (the image is marked corrupt at the first).</summary>
    public Counter CorruptionsFound { get; } = new("qcow2.corruptions_found");

    public IEnumerable<Counter> Counters => [CorruptionsFound];

    // ---- guest-facing operations -------------------------------------------------------------

    public void Read(long offset, Span<byte> buffer)
    {
        lock (_gate)
        {
            CheckRange(offset, buffer.Length);
            while (!buffer.IsEmpty)
            {
                int n = SegmentLength(offset, buffer.Length);
                try
                {
                    ReadSegment(offset, buffer[..n]);
                }
                catch (DiskImageCorruptException e)
                {
                    MarkCorrupt(e); // found by a read, the corruption is as real as when a write finds it (QEMU too)
                    throw;
                }
                offset += n;
                buffer = buffer[n..];
            }
        }
    }

    public void Write(long offset, ReadOnlySpan<byte> data)
    {
        lock (_gate)
        {
            CheckWritable(offset, data.Length);
            while (!data.IsEmpty)
            {
                int n = SegmentLength(offset, data.Length);
                try
                {
                    WriteSegment(offset, data[..n], zero: false);
                }
                catch (DiskImageCorruptException e)
                {
                    MarkCorrupt(e);
                    throw;
                }
                catch (IOException)
                {
                    DropCaches();
                    throw;
                }
                offset += n;
                data = data[n..];
            }
        }
    }

    public void Discard(long offset, long length) => Zero(offset, length, discard: true, mayUnmap: true);

    public void WriteZeroes(long offset, long length, bool mayUnmap) => Zero(offset, length, discard: false, mayUnmap);

    public void Flush()
    {
        lock (_gate)
        {
            // Metadata is write-through, so fsync is all there is to write back.
            if (!ReadOnly && !_disposed)
            {
                _file.Flush(flushToDisk: true);
            }
        }
    }

    public void Dispose()
    {
        lock (_gate)
        {
            _disposed = true;
            ImageLock.Release(_handle);
            _file.Dispose();
        }
    }

    void Zero(long offset, long length, bool discard, bool mayUnmap)
    {
        lock (_gate)
        {
            CheckWritable(offset, length);
            try
            {
                while (length > 0)
                {
                    int n = SegmentLength(offset, length);
                    if (n == _clusterSize)
                    {
                        ZeroCluster(offset, discard, mayUnmap);
                    }
                    else
                    {
                        WriteSegment(offset, default, zero: true, zeroLength: n);
                    }
                    offset += n;
                    length -= n;
                }
            }
            catch (DiskImageCorruptException e)
            {
                MarkCorrupt(e);
                throw;
            }
            catch (IOException)
            {
                DropCaches();
                throw;
            }
        }
    }

    void CheckRange(long offset, long length)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (offset < 0 || length < 0 || offset > Length || length > Length - offset)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), $"[{offset}, +{length}) is outside the {Length}-byte image");
        }
    }

    void CheckWritable(long offset, long length)
    {
        CheckRange(offset, length);
        if (ReadOnly)
        {
            throw new InvalidOperationException("write to a read-only image");
        }
        if (_corrupt)
        {
            throw new DiskImageCorruptException($"qcow2 image '{_name}' is corrupt; writes are refused");
        }
    }

    int SegmentLength(long offset, long remaining) =>
        (int)Math.Min(remaining, _clusterSize - (offset & (_clusterSize - 1)));

    DiskImageCorruptException Corrupt(string what) => new($"qcow2 image '{_name}' is corrupt: {what}");

    /// <summary>
    /// Corruption was found serving a request: count it; the first time, log one line, refuse writes from
    /// now on and set the v3 corrupt bit on disk (fsynced), as QEMU's qcow2_signal_corruption does, so no
    /// later open writes to the image before it is repaired.
    /// </summary>
    void MarkCorrupt(DiskImageCorruptException e)
    {
        DropCaches();
        CorruptionsFound.Increment();
        if (_corrupt)
        {
            return;
        }
        _corrupt = true;
        Log.Once($"qcow2.corrupt.{_name}", "qcow2", $"{e.Message}; the guest gets I/O errors, further writes are refused");
        if (_version == 3 && !ReadOnly)
        {
            // qcow2.txt incompatible bit 1: the image must not be written until repaired (QEMU sets it too).
            // Version 2 headers have no feature bits: there the in-memory flag is all there is, as in QEMU.
            try
            {
                Span<byte> field = stackalloc byte[8];
                if (ReadFully(_handle, field, HIncompatible) == 8)
                {
                    BinaryPrimitives.WriteUInt64BigEndian(field, BinaryPrimitives.ReadUInt64BigEndian(field) | 1UL << IncompatCorrupt);
                    HostWrite(field, HIncompatible);
                    _file.Flush(flushToDisk: true);
                }
            }
            catch (IOException)
            {
                // Marking is best effort; the in-memory flag already refuses writes.
            }
        }
    }

    void DropCaches()
    {
        _l2Cache.Clear();
        _refCache.Clear();
        _decompressedEntry = 0;
    }

    /// <summary>Tests: the number of file writes after which the image behaves as if the VMM died (negative: never).</summary>
    internal int WritesUntilCrash { get; set; } = -1;

    /// <summary>Tests: file writes made so far.</summary>
    internal int HostWrites { get; private set; }

    /// <summary>Tests: <see cref="HostWrites"/> when the refcount table last started to grow (-1: never).</summary>
    internal int GrowthStartedAtWrite { get; private set; } = -1;

    /// <summary>Every write to the image file goes through here (so tests can cut the sequence anywhere).</summary>
    void HostWrite(ReadOnlySpan<byte> data, long offset)
    {
        if (WritesUntilCrash == 0)
        {
            throw new SimulatedCrashException();
        }
        if (WritesUntilCrash > 0)
        {
            WritesUntilCrash--;
        }
        HostWrites++;
        RandomAccess.Write(_handle, data, offset);
    }

    // ---- mapping ------------------------------------------------------------------------------

    int L1Index(long guest) => (int)(guest >> (_clusterBits + _l2Bits));

    int L2Index(long guest) => (int)((guest >> _clusterBits) & ((1 << _l2Bits) - 1));

    static ulong Entry(byte[] table, int index) => BinaryPrimitives.ReadUInt64BigEndian(table.AsSpan(index * 8));

    /// <summary>Host offset of a standard (uncompressed) L2 entry; reserved bits set mean corruption.</summary>
    long StandardOffset(ulong entry)
    {
        if ((entry & L2Reserved) != 0)
        {
            throw Corrupt($"L2 entry 0x{entry:x} has reserved bits set");
        }
        long host = (long)(entry & L2OffsetMask);
        if (host == 0 && (entry & Copied) != 0)
        {
            throw Corrupt($"L2 entry 0x{entry:x} maps host offset 0 (external data files are not supported)");
        }
        if ((host & (_clusterSize - 1)) != 0)
        {
            // qcow2.txt, Standard Cluster Descriptor: bits 9-55 are the host cluster offset and "must be
            // aligned to a cluster boundary". Used as is, a write would run into the next host cluster.
            throw Corrupt($"L2 entry 0x{entry:x} maps a host offset that is not cluster-aligned");
        }
        return host;
    }

    /// <summary>True when a standard entry reads as zeros: unallocated (no backing file) or the v3 zero flag.</summary>
    static bool ReadsAsZero(ulong entry) =>
        (entry & CompressedFlag) == 0 && ((entry & ZeroFlag) != 0 || (entry & L2OffsetMask) == 0);

    void CheckDataCluster(long host)
    {
        if (host >= _fileLength)
        {
            throw Corrupt($"data cluster at 0x{host:x} lies beyond the end of the file");
        }
        if (IsMetadataCluster(host >> _clusterBits))
        {
            throw Corrupt($"data cluster at 0x{host:x} overlaps metadata");
        }
    }

    byte[] LoadL2(long offset)
    {
        var table = _l2Cache.TryGet(offset);
        if (table is not null)
        {
            return table;
        }
        table = _l2Cache.Insert(offset);
        if (ReadFully(_handle, table, offset) != _clusterSize)
        {
            _l2Cache.Remove(offset);
            throw Corrupt($"L2 table at 0x{offset:x} lies beyond the end of the file");
        }
        return table;
    }

    void ReadSegment(long guest, Span<byte> dest)
    {
        long l2Offset = (long)(_l1[L1Index(guest)] & L1OffsetMask);
        if (l2Offset == 0)
        {
            dest.Clear();
            return;
        }
        ulong e = Entry(LoadL2(l2Offset), L2Index(guest));
        int within = (int)(guest & (_clusterSize - 1));
        if ((e & CompressedFlag) != 0)
        {
            Decompress(e).AsSpan(within, dest.Length).CopyTo(dest);
            return;
        }
        long host = StandardOffset(e);
        if (ReadsAsZero(e))
        {
            dest.Clear();
            return;
        }
        if (host >= _fileLength)
        {
            throw Corrupt($"data cluster at 0x{host:x} lies beyond the end of the file");
        }
        ReadFully(_handle, dest, host + within); // a cluster's tail past the end of the file reads as zeros
    }

    /// <summary>Decompresses a compressed cluster (raw deflate, qcow2.txt Compressed Clusters Descriptor); the last one is kept.</summary>
    byte[] Decompress(ulong entry)
    {
        if (entry == _decompressedEntry)
        {
            return _decompressed;
        }
        long offset = (long)(entry & _compressedOffsetMask);
        int sectors = (int)((entry >> _compressedShift) & _compressedSectorMask) + 1;
        long end = (offset & ~511L) + sectors * 512L;
        if (offset < _clusterSize || offset >= _fileLength || offset >= MaxHostOffset)
        {
            throw Corrupt($"compressed cluster at 0x{offset:x} lies outside the file");
        }
        int length = ReadFully(_handle, _compressed.AsSpan(0, (int)(end - offset)), offset);
        int total = 0;
        try
        {
            using var input = new MemoryStream(_compressed, 0, length, writable: false);
            using var inflate = new DeflateStream(input, CompressionMode.Decompress);
            while (total < _clusterSize)
            {
                int n = inflate.Read(_decompressed, total, _clusterSize - total);
                if (n == 0)
                {
                    break;
                }
                total += n;
            }
        }
        catch (InvalidDataException e)
        {
            throw Corrupt($"compressed cluster at 0x{offset:x} does not inflate: {e.Message}");
        }
        if (total != _clusterSize)
        {
            throw Corrupt($"compressed cluster at 0x{offset:x} inflates to {total} bytes, not {_clusterSize}");
        }
        _decompressedEntry = entry;
        return _decompressed;
    }

    // ---- writing ------------------------------------------------------------------------------

    void WriteL1Entry(int index, ulong value)
    {
        Span<byte> b = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(b, value);
        HostWrite(b, _l1Offset + index * 8L);
        _l1[index] = value;
    }

    void WriteL2Entry(long l2Offset, int index, ulong value)
    {
        Span<byte> b = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(b, value);
        HostWrite(b, l2Offset + index * 8L);
        b.CopyTo(LoadL2(l2Offset).AsSpan(index * 8));
    }

    void WriteCluster(long host, ReadOnlySpan<byte> contents)
    {
        HostWrite(contents, host);
        _fileLength = Math.Max(_fileLength, host + contents.Length);
    }

    /// <summary>The L2 table for <paramref name="l1Index"/>, allocated (zeroed) or copied when it is shared.</summary>
    long WritableL2(int l1Index)
    {
        ulong e = _l1[l1Index];
        long old = (long)(e & L1OffsetMask);
        if (old != 0 && (e & Copied) != 0)
        {
            return old;
        }
        long table = AllocateCluster(); // first: allocating may use _scratch for a new refcount block
        if (old == 0)
        {
            Array.Clear(_scratch);
        }
        else
        {
            LoadL2(old).CopyTo(_scratch, 0);
        }
        WriteCluster(table, _scratch);
        _metadata.Add(table >> _clusterBits);
        _scratch.CopyTo(_l2Cache.Insert(table), 0);
        WriteL1Entry(l1Index, (ulong)table | Copied);
        if (old != 0)
        {
            DecrementRefcount(old >> _clusterBits); // the old table stays with whoever else shares it
        }
        return table;
    }

    /// <summary>Writes <paramref name="data"/> (or zeros) into one guest cluster.</summary>
    void WriteSegment(long guest, ReadOnlySpan<byte> data, bool zero, int zeroLength = 0)
    {
        int length = zero ? zeroLength : data.Length;
        if (zero)
        {
            // Zeroing a partial cluster only needs work when it does not read as zeros already.
            long l2 = (long)(_l1[L1Index(guest)] & L1OffsetMask);
            if (l2 == 0 || ReadsAsZero(Entry(LoadL2(l2), L2Index(guest))))
            {
                return;
            }
        }
        int within = (int)(guest & (_clusterSize - 1));
        long l2Offset = WritableL2(L1Index(guest));
        int index = L2Index(guest);
        ulong e = Entry(LoadL2(l2Offset), index);
        var source = zero ? _zeros.AsSpan(0, length) : data;

        if ((e & (CompressedFlag | ZeroFlag | Copied)) == Copied)
        {
            long host = StandardOffset(e);
            if (host != 0)
            {
                // The common case: an allocated cluster this image alone owns; write in place.
                CheckDataCluster(host);
                HostWrite(source, host + within);
                _fileLength = Math.Max(_fileLength, host + within + length);
                return;
            }
        }

        // Build the whole new cluster: old contents (zeros, inflated or copied) with the new data over them.
        if ((e & CompressedFlag) != 0)
        {
            Decompress(e).CopyTo(_cow, 0);
        }
        else if (ReadsAsZero(e))
        {
            StandardOffset(e);
            Array.Clear(_cow);
        }
        else
        {
            long host = StandardOffset(e);
            CheckDataCluster(host);
            ReadFully(_handle, _cow, host);
        }
        source.CopyTo(_cow.AsSpan(within));

        // A zero-flagged cluster we own keeps its preallocated host cluster; anything else gets a new one.
        bool reuse = (e & (CompressedFlag | ZeroFlag | Copied)) == (ZeroFlag | Copied) && (e & L2OffsetMask) != 0;
        long target;
        if (reuse)
        {
            target = StandardOffset(e);
            CheckDataCluster(target);
        }
        else
        {
            target = AllocateCluster();
        }
        WriteCluster(target, _cow);
        WriteL2Entry(l2Offset, index, (ulong)target | Copied);
        if (!reuse)
        {
            ReleaseData(e);
        }
    }

    /// <summary>DISCARD or WRITE_ZEROES of one whole guest cluster: change only the L2 entry when possible.</summary>
    void ZeroCluster(long guest, bool discard, bool mayUnmap)
    {
        int l1Index = L1Index(guest);
        long current = (long)(_l1[l1Index] & L1OffsetMask);
        if (current == 0)
        {
            return; // unallocated: reads as zeros already (no backing file)
        }
        int index = L2Index(guest);
        ulong e = Entry(LoadL2(current), index);
        if ((e & CompressedFlag) == 0)
        {
            StandardOffset(e); // refuse to act on a corrupt entry
        }
        ulong next;
        if (discard || _version == 2)
        {
            next = 0; // unallocated reads as zeros without a backing file
        }
        else if (!mayUnmap && (e & (CompressedFlag | Copied)) == Copied && (e & L2OffsetMask) != 0)
        {
            next = e | ZeroFlag; // qcow2.txt: the zero flag may keep a preallocated host cluster
        }
        else
        {
            next = ZeroFlag;
        }
        if (next == e || (e == 0 && next == ZeroFlag))
        {
            return; // decided before copying a shared L2 table for nothing
        }
        long l2Offset = WritableL2(l1Index); // the copy, if shared, holds the same entry
        WriteL2Entry(l2Offset, index, next);
        if ((next & L2OffsetMask) == 0)
        {
            ReleaseData(e);
        }
    }

    /// <summary>Drops one reference to the host space a (no longer referenced) L2 entry used.</summary>
    void ReleaseData(ulong entry)
    {
        if ((entry & CompressedFlag) != 0)
        {
            // A compressed cluster holds a reference on every host cluster its sectors touch.
            long offset = (long)(entry & _compressedOffsetMask) & ~511L;
            long sectors = (long)((entry >> _compressedShift) & _compressedSectorMask) + 1;
            long first = offset >> _clusterBits, last = (offset + sectors * 512 - 1) >> _clusterBits;
            for (long c = first; c <= last; c++)
            {
                DecrementRefcount(c);
            }
            _decompressedEntry = 0;
            return;
        }
        long host = (long)(entry & L2OffsetMask);
        if (host != 0)
        {
            DecrementRefcount(host >> _clusterBits);
        }
    }
}

/// <summary>Thrown by <see cref="Qcow2Image"/> when a test's simulated VMM death is reached.</summary>
sealed class SimulatedCrashException : Exception
{
    public SimulatedCrashException()
        : base("simulated crash")
    {
    }
}
