using System.Buffers.Binary;
using System.Text;
using Microsoft.Win32.SafeHandles;
using SharpVisor.Core;

namespace SharpVisor.Devices.Storage;

// Opening and validating an image. Every field comes from QEMU's docs/interop/qcow2.txt ("Header",
// "Header extensions", "Feature name table"); anything the file says is checked before it is used.
public sealed partial class Qcow2Image
{
    /// <summary>"QFI\xfb" (qcow2.txt, Header bytes 0-3).</summary>
    public static ReadOnlySpan<byte> Magic => [(byte)'Q', (byte)'F', (byte)'I', 0xFB];

    // Header field offsets (qcow2.txt, Header).
    const int HVersion = 4, HBackingOffset = 8, HBackingSize = 16, HClusterBits = 20, HSize = 24, HCryptMethod = 32,
        HL1Size = 36, HL1Offset = 40, HRefTableOffset = 48, HRefTableClusters = 56, HSnapshotCount = 60,
        HIncompatible = 72, HCompatible = 80, HAutoclear = 88, HRefcountOrder = 96, HHeaderLength = 100,
        HCompressionType = 104;
    const int V2HeaderLength = 72, V3HeaderLength = 104;

    // Incompatible feature bits (qcow2.txt, Header bytes 72-79).
    const int IncompatDirty = 0, IncompatCorrupt = 1, IncompatExternalData = 2, IncompatCompressionType = 3, IncompatExtendedL2 = 4;
    const ulong KnownIncompatible = (1UL << 5) - 1;

    // QEMU's implementation limits (qcow2.txt notes): 2 MiB clusters, 32 MiB L1 table, 8 MiB refcount table.
    const int MinClusterBits = 9, MaxClusterBits = 21;
    const long MaxL1Bytes = 32L << 20, MaxRefTableBytes = 8L << 20;
    const long MaxHostOffset = 1L << 56;

    // Header extension types (qcow2.txt, Header extensions).
    const uint ExtEnd = 0, ExtFeatureNames = 0x6803f857, ExtExternalDataFile = 0x44415441;

    /// <summary>True when the file starts with the qcow2 magic (QEMU's probe looks at the same bytes).</summary>
    public static bool HasMagic(SafeFileHandle file)
    {
        Span<byte> m = stackalloc byte[4];
        return RandomAccess.Read(file, m, 0) == 4 && m.SequenceEqual(Magic);
    }

    /// <summary>Opens an image; any problem is a one-line <see cref="UserErrorException"/> naming it.</summary>
    public static Qcow2Image Open(FileStream file, string name, bool readOnly, Log? log = null)
    {
        log ??= new Log();
        var h = new Header();
        long fileLength = file.Length;
        var handle = file.SafeFileHandle;
        UserErrorException Fail(string what) => new($"disk image '{name}': {what}");

        Span<byte> fixedPart = stackalloc byte[V3HeaderLength];
        int got = ReadFully(handle, fixedPart, 0);
        if (got < V2HeaderLength || !fixedPart[..4].SequenceEqual(Magic))
        {
            throw Fail("not a qcow2 image (no QFI\\xfb header)");
        }
        h.Version = BinaryPrimitives.ReadUInt32BigEndian(fixedPart[HVersion..]);
        if (h.Version is not (2 or 3))
        {
            throw Fail($"qcow2 version {h.Version} is not supported (only 2 and 3)");
        }
        uint clusterBits = BinaryPrimitives.ReadUInt32BigEndian(fixedPart[HClusterBits..]);
        if (clusterBits is < MinClusterBits or > MaxClusterBits)
        {
            throw Fail($"corrupt image: cluster_bits {clusterBits} is outside {MinClusterBits}..{MaxClusterBits}");
        }
        h.ClusterBits = (int)clusterBits;
        int clusterSize = 1 << h.ClusterBits;

        uint headerLength = V2HeaderLength;
        h.RefcountOrder = 4;
        if (h.Version == 3)
        {
            if (got < V3HeaderLength)
            {
                throw Fail("corrupt image: version 3 header is truncated");
            }
            headerLength = BinaryPrimitives.ReadUInt32BigEndian(fixedPart[HHeaderLength..]);
            if (headerLength < V3HeaderLength || headerLength % 8 != 0 || headerLength > clusterSize)
            {
                throw Fail($"corrupt image: header_length {headerLength} is invalid");
            }
            h.RefcountOrder = (int)Math.Min(BinaryPrimitives.ReadUInt32BigEndian(fixedPart[HRefcountOrder..]), 64);
            if (h.RefcountOrder > 6)
            {
                throw Fail($"corrupt image: refcount_order {h.RefcountOrder} exceeds 6");
            }
            h.Incompatible = BinaryPrimitives.ReadUInt64BigEndian(fixedPart[HIncompatible..]);
            h.Autoclear = BinaryPrimitives.ReadUInt64BigEndian(fixedPart[HAutoclear..]);
            _ = BinaryPrimitives.ReadUInt64BigEndian(fixedPart[HCompatible..]); // lazy refcounts: we always update refcounts eagerly
        }

        // The whole first cluster: header, extensions and the backing file name live there.
        var first = new byte[clusterSize];
        ReadFully(handle, first, 0);
        var names = ReadFeatureNames(first, (int)headerLength, out bool extensionsOk);
        if (!extensionsOk)
        {
            throw Fail("corrupt image: a header extension overruns the first cluster");
        }

        ulong unknown = h.Incompatible & ~KnownIncompatible;
        if (unknown != 0)
        {
            throw Fail($"unsupported qcow2 feature: {DescribeBits(unknown, names)}");
        }
        if ((h.Incompatible & 1UL << IncompatExternalData) != 0)
        {
            throw Fail("unsupported qcow2 feature: external data file");
        }
        if ((h.Incompatible & 1UL << IncompatExtendedL2) != 0)
        {
            throw Fail("unsupported qcow2 feature: extended L2 entries (subclusters)");
        }
        if ((h.Incompatible & 1UL << IncompatCompressionType) != 0)
        {
            byte type = headerLength > HCompressionType ? first[HCompressionType] : (byte)0;
            throw Fail($"unsupported qcow2 feature: compression type {(type == 1 ? "zstd" : type.ToString())} (only zlib)");
        }
        if (!readOnly && (h.Incompatible & 1UL << IncompatCorrupt) != 0)
        {
            throw Fail("image is marked corrupt; repair it with 'qemu-img check -r all' or open it readonly");
        }
        if (!readOnly && (h.Incompatible & 1UL << IncompatDirty) != 0)
        {
            throw Fail("image is marked dirty (refcounts may be stale); repair it with 'qemu-img check -r all' or open it readonly");
        }
        if (BinaryPrimitives.ReadUInt32BigEndian(first.AsSpan(HCryptMethod)) != 0)
        {
            throw Fail("unsupported qcow2 feature: encryption");
        }
        ulong backingOffset = BinaryPrimitives.ReadUInt64BigEndian(first.AsSpan(HBackingOffset));
        if (backingOffset != 0)
        {
            uint backingSize = BinaryPrimitives.ReadUInt32BigEndian(first.AsSpan(HBackingSize));
            string backing = backingOffset < (ulong)clusterSize && backingSize <= 1023 && backingOffset + backingSize <= (ulong)clusterSize
                ? Printable(Encoding.UTF8.GetString(first, (int)backingOffset, (int)backingSize))
                : "?";
            throw Fail($"unsupported qcow2 feature: backing file '{backing}'; flatten it with 'qemu-img convert -O qcow2 IN OUT'");
        }

        ulong size = BinaryPrimitives.ReadUInt64BigEndian(first.AsSpan(HSize));
        uint l1Size = BinaryPrimitives.ReadUInt32BigEndian(first.AsSpan(HL1Size));
        ulong l1Offset = BinaryPrimitives.ReadUInt64BigEndian(first.AsSpan(HL1Offset));
        ulong refTableOffset = BinaryPrimitives.ReadUInt64BigEndian(first.AsSpan(HRefTableOffset));
        uint refTableClusters = BinaryPrimitives.ReadUInt32BigEndian(first.AsSpan(HRefTableClusters));
        h.SnapshotCount = BinaryPrimitives.ReadUInt32BigEndian(first.AsSpan(HSnapshotCount));
        h.SnapshotsOffset = (long)Math.Min(BinaryPrimitives.ReadUInt64BigEndian(first.AsSpan(HSnapshotsOffset)), (ulong)MaxHostOffset);

        int l2Bits = h.ClusterBits - 3;
        if (size > (ulong)MaxHostOffset)
        {
            throw Fail($"corrupt image: virtual size {size} is absurd");
        }
        ulong l1Needed = (size + (1UL << (h.ClusterBits + l2Bits)) - 1) >> (h.ClusterBits + l2Bits);
        if ((ulong)l1Size * 8 > MaxL1Bytes)
        {
            throw Fail($"corrupt image: L1 table of {l1Size} entries is absurd");
        }
        if (l1Size < l1Needed)
        {
            throw Fail($"corrupt image: L1 table of {l1Size} entries cannot map {size} bytes");
        }
        long l1Bytes = (long)l1Size * 8;
        if (l1Size > 0 && !RangeInFile(l1Offset, (ulong)l1Bytes, clusterSize, fileLength))
        {
            throw Fail($"corrupt image: L1 table at 0x{l1Offset:x} is misaligned or beyond the end of the file");
        }
        long refTableBytes = (long)refTableClusters << h.ClusterBits;
        if (refTableClusters == 0 || refTableBytes > MaxRefTableBytes || !RangeInFile(refTableOffset, (ulong)refTableBytes, clusterSize, fileLength))
        {
            throw Fail($"corrupt image: refcount table at 0x{refTableOffset:x} ({refTableClusters} clusters) is misaligned, absurd or beyond the end of the file");
        }
        if (l1Size > 0 && Overlaps((long)l1Offset, l1Bytes, (long)refTableOffset, refTableBytes))
        {
            throw Fail("corrupt image: L1 table and refcount table overlap");
        }

        h.Size = (long)size;
        h.L1Offset = (long)l1Offset;
        h.RefTableOffset = (long)refTableOffset;
        h.RefTableClusters = (int)refTableClusters;
        h.L1 = ReadTable(handle, h.L1Offset, (int)l1Size);
        h.RefTable = ReadTable(handle, h.RefTableOffset, (int)(refTableBytes / 8));

        var image = new Qcow2Image(file, name, readOnly, h, fileLength, log);
        string? problem = image.ValidateTables();
        if (problem is not null)
        {
            image.Dispose();
            throw Fail($"corrupt image: {problem}");
        }
        if (!readOnly)
        {
            // Before anything is allocated: a refcount below its references would hand out a used cluster.
            problem = image.CheckReferences(h.SnapshotsOffset);
            if (problem is not null)
            {
                image.Dispose();
                throw Fail($"corrupt image, not opened for writing: {problem}; repair it with 'qemu-img check -r all' or open it readonly");
            }
        }
        if (!readOnly && h.Autoclear != 0)
        {
            // qcow2.txt: a writer must clear auto-clear bits it does not maintain (we keep no bitmaps).
            Span<byte> zero = stackalloc byte[8];
            RandomAccess.Write(handle, zero, HAutoclear);
            log.Warn("qcow2", $"{name}: auto-clear features 0x{h.Autoclear:x} cleared (persistent bitmaps are not updated; QEMU now treats them as inconsistent)");
        }
        return image;
    }

    sealed class Header
    {
        public uint Version;
        public int ClusterBits;
        public int RefcountOrder;
        public ulong Incompatible, Autoclear;
        public long Size, L1Offset, RefTableOffset;
        public int RefTableClusters;
        public uint SnapshotCount;
        public long SnapshotsOffset;
        public ulong[] L1 = [];
        public ulong[] RefTable = [];
    }

    static bool RangeInFile(ulong offset, ulong length, int clusterSize, long fileLength) =>
        offset % (ulong)clusterSize == 0 && offset >= (ulong)clusterSize && offset < MaxHostOffset
        && length <= (ulong)fileLength && offset + length <= (ulong)fileLength;

    static bool Overlaps(long a, long aLength, long b, long bLength) => a < b + bLength && b < a + aLength;

    static int ReadFully(SafeFileHandle file, Span<byte> buffer, long offset)
    {
        int total = 0;
        while (total < buffer.Length)
        {
            int n = RandomAccess.Read(file, buffer[total..], offset + total);
            if (n == 0)
            {
                break;
            }
            total += n;
        }
        buffer[total..].Clear();
        return total;
    }

    static ulong[] ReadTable(SafeFileHandle file, long offset, int entries)
    {
        var bytes = new byte[entries * 8];
        ReadFully(file, bytes, offset);
        var table = new ulong[entries];
        for (int i = 0; i < entries; i++)
        {
            table[i] = BinaryPrimitives.ReadUInt64BigEndian(bytes.AsSpan(i * 8));
        }
        return table;
    }

    /// <summary>Walks the header extensions (unknown types are skipped); returns the incompatible-feature names.</summary>
    static Dictionary<int, string> ReadFeatureNames(byte[] cluster, int start, out bool ok)
    {
        var names = new Dictionary<int, string>();
        ok = true;
        for (int at = start; at + 8 <= cluster.Length;)
        {
            uint type = BinaryPrimitives.ReadUInt32BigEndian(cluster.AsSpan(at));
            uint length = BinaryPrimitives.ReadUInt32BigEndian(cluster.AsSpan(at + 4));
            if (type == ExtEnd)
            {
                return names;
            }
            if (length > (uint)(cluster.Length - at - 8))
            {
                ok = false;
                return names;
            }
            if (type == ExtFeatureNames)
            {
                // Feature name table: 48-byte entries of (type, bit, 46-byte name).
                for (int e = at + 8; e + 48 <= at + 8 + (int)length; e += 48)
                {
                    if (cluster[e] == 0 && cluster[e + 1] < 64)
                    {
                        names[cluster[e + 1]] = Printable(Encoding.ASCII.GetString(cluster, e + 2, 46).TrimEnd('\0'));
                    }
                }
            }
            _ = ExtExternalDataFile; // refused through its incompatible bit
            at += 8 + (int)((length + 7) & ~7u);
        }
        return names;
    }

    /// <summary>
    /// Text from the image as it may appear in a one-line error: control characters (line breaks,
    /// terminal escape sequences) become '?'. Found by fuzzing (fuzz/corpus/qcow2/crash-backing-name-control-chars).
    /// </summary>
    static string Printable(string text) =>
        string.Create(text.Length, text, static (chars, source) =>
        {
            for (int i = 0; i < chars.Length; i++)
            {
                chars[i] = char.IsControl(source[i]) ? '?' : source[i];
            }
        });

    static string DescribeBits(ulong bits, Dictionary<int, string> names)
    {
        var parts = new List<string>();
        for (int b = 0; b < 64; b++)
        {
            if ((bits & 1UL << b) != 0)
            {
                parts.Add(names.TryGetValue(b, out string? n) && n.Length > 0 ? $"'{n}' (incompatible bit {b})" : $"unknown incompatible bit {b}");
            }
        }
        return string.Join(", ", parts);
    }

    /// <summary>Checks every L1 and refcount table entry: aligned, inside the file, clear of other metadata.</summary>
    string? ValidateTables()
    {
        for (int i = 0; i < _l1.Length; i++)
        {
            ulong e = _l1[i];
            long off = (long)(e & L1OffsetMask);
            if ((e & L1Reserved) != 0)
            {
                return $"L1 entry {i} (0x{e:x}) has reserved bits set";
            }
            if (off == 0)
            {
                continue;
            }
            if (!RangeInFile((ulong)off, (ulong)_clusterSize, _clusterSize, _fileLength) || IsFixedMetadata(off >> _clusterBits))
            {
                return $"L1 entry {i} points to 0x{off:x}, beyond the file or into other metadata";
            }
            _metadata.Add(off >> _clusterBits);
        }
        var l2Tables = new HashSet<long>(_metadata);
        for (int i = 0; i < _refTable.Length; i++)
        {
            ulong e = _refTable[i];
            long off = (long)(e & ~RefTableReserved);
            if ((e & RefTableReserved) != 0)
            {
                return $"refcount table entry {i} (0x{e:x}) has reserved bits set";
            }
            if (off == 0)
            {
                continue;
            }
            if (!RangeInFile((ulong)off, (ulong)_clusterSize, _clusterSize, _fileLength) || IsFixedMetadata(off >> _clusterBits)
                || l2Tables.Contains(off >> _clusterBits))
            {
                return $"refcount block {i} at 0x{off:x} is beyond the file or overlaps other metadata";
            }
            _metadata.Add(off >> _clusterBits);
        }
        return null;
    }
}
