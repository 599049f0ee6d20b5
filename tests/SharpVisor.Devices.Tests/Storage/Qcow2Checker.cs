using System.Buffers.Binary;

namespace SharpVisor.Devices.Tests.Storage;

/// <summary>
/// An independent, minimal `qemu-img check` for tests (qcow2.txt): counts the references to every host
/// cluster (header, L1 table, refcount table and blocks, L2 tables, data and compressed clusters) and
/// compares them with the stored refcounts. Fewer refcounts than references, a "copied" flag on a
/// cluster whose refcount is not 1, or a reference beyond the end of the file is corruption; more
/// refcounts than references is a leak. No snapshots.
/// </summary>
static class Qcow2Checker
{
    public static (List<string> Corruptions, int Leaks) Check(string path)
    {
        var f = File.ReadAllBytes(path);
        var corruptions = new List<string>();
        ulong U64(long at) => BinaryPrimitives.ReadUInt64BigEndian(f.AsSpan((int)at));
        uint U32(long at) => BinaryPrimitives.ReadUInt32BigEndian(f.AsSpan((int)at));
        int version = (int)U32(4), cb = (int)U32(20);
        long cs = 1L << cb;
        int order = version == 3 ? (int)U32(96) : 4;
        long l1Offset = (long)U64(40), rtOffset = (long)U64(48);
        int l1Size = (int)U32(36), rtClusters = (int)U32(56);
        long clusters = (f.Length + cs - 1) / cs;
        var refs = new Dictionary<long, int>();
        void Ref(long offset, long length, string what)
        {
            if (offset + Math.Max(length, 1) > f.Length && what != "data")
            {
                corruptions.Add($"{what} at 0x{offset:x} beyond the file");
            }
            if (what == "data" && offset >= f.Length)
            {
                corruptions.Add($"data at 0x{offset:x} beyond the file");
            }
            for (long c = offset / cs; c <= (offset + length - 1) / cs; c++)
            {
                refs[c] = refs.GetValueOrDefault(c) + 1;
            }
        }

        Ref(0, cs, "header");
        Ref(l1Offset, l1Size * 8L, "L1");
        Ref(rtOffset, rtClusters * cs, "refcount table");
        long epb = cs * 8 >> order;
        ulong Refcount(long c)
        {
            long t = c / epb;
            if (t >= rtClusters * cs / 8)
            {
                return 0;
            }
            long block = (long)(U64(rtOffset + t * 8) & ~0x1FFUL);
            if (block == 0 || block + cs > f.Length)
            {
                return 0;
            }
            long i = c % epb;
            int bits = 1 << order;
            if (bits < 8)
            {
                return (ulong)(f[block + i * bits / 8] >> (int)(i * bits % 8)) & ((1UL << bits) - 1);
            }
            ulong v = 0;
            for (int k = 0; k < bits / 8; k++)
            {
                v = v << 8 | f[block + i * bits / 8 + k];
            }
            return v;
        }
        for (long t = 0; t < rtClusters * cs / 8; t++)
        {
            long block = (long)(U64(rtOffset + t * 8) & ~0x1FFUL);
            if (block != 0)
            {
                Ref(block, cs, "refcount block");
            }
        }
        var copiedChecks = new List<(long Cluster, string What)>();
        for (int i = 0; i < l1Size; i++)
        {
            ulong e = U64(l1Offset + i * 8L);
            long l2 = (long)(e & 0x00FF_FFFF_FFFF_FE00);
            if (l2 == 0)
            {
                continue;
            }
            Ref(l2, cs, "L2");
            if ((e & 1UL << 63) != 0)
            {
                copiedChecks.Add((l2 / cs, $"L1[{i}]"));
            }
            if (l2 + cs > f.Length)
            {
                continue;
            }
            for (int j = 0; j < cs / 8; j++)
            {
                ulong d = U64(l2 + j * 8L);
                if ((d & 1UL << 62) != 0)
                {
                    int shift = 62 - (cb - 8);
                    long off = (long)(d & ((1UL << shift) - 1));
                    long sectors = (long)((d >> shift) & ((1UL << (cb - 8)) - 1)) + 1;
                    long start = off & ~511L;
                    Ref(start, sectors * 512, "compressed");
                    continue;
                }
                long data = (long)(d & 0x00FF_FFFF_FFFF_FE00);
                if (data != 0)
                {
                    Ref(data, cs, "data");
                    if ((d & 1UL << 63) != 0)
                    {
                        copiedChecks.Add((data / cs, $"L2 0x{l2:x}[{j}]"));
                    }
                }
            }
        }
        int leaks = 0;
        long last = Math.Max(clusters, refs.Keys.DefaultIfEmpty(0).Max() + 1);
        for (long c = 0; c < last; c++)
        {
            ulong have = Refcount(c);
            int want = refs.GetValueOrDefault(c);
            if (have < (ulong)want)
            {
                corruptions.Add($"cluster {c}: refcount {have} < {want} references");
            }
            else if (have > (ulong)want)
            {
                leaks++;
            }
        }
        foreach (var (c, what) in copiedChecks)
        {
            if (Refcount(c) != 1)
            {
                corruptions.Add($"{what}: copied flag on cluster {c} with refcount {Refcount(c)}");
            }
        }
        return (corruptions, leaks);
    }
}
