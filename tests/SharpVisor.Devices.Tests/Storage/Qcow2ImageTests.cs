using System.Buffers.Binary;
using SharpVisor.Core;
using SharpVisor.Devices.Storage;

namespace SharpVisor.Devices.Tests.Storage;

/// <summary>qcow2 behaviour on images this code creates itself (no qemu-img needed).</summary>
public sealed class Qcow2ImageTests : IDisposable
{
    readonly string _path = Path.Combine(Path.GetTempPath(), $"sv-qcow2-{Guid.NewGuid():N}.qcow2");

    public void Dispose()
    {
        File.Delete(_path);
    }

    Qcow2Image Open(bool readOnly = false) => (Qcow2Image)DiskImage.Open(_path, DiskFormat.Qcow2, readOnly);

    static byte[] Pattern(int length, int seed)
    {
        var b = new byte[length];
        new Random(seed).NextBytes(b);
        return b;
    }

    byte[] ReadAll(IDiskImage d)
    {
        var b = new byte[d.Length];
        d.Read(0, b);
        return b;
    }

    void Patch(long offset, ReadOnlySpan<byte> bytes)
    {
        using var f = new FileStream(_path, FileMode.Open, FileAccess.ReadWrite);
        f.Position = offset;
        f.Write(bytes);
    }

    void PatchBe64(long offset, ulong value)
    {
        Span<byte> b = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(b, value);
        Patch(offset, b);
    }

    void PatchBe32(long offset, uint value)
    {
        Span<byte> b = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(b, value);
        Patch(offset, b);
    }

    string OpenError(bool readOnly = false)
    {
        var e = Assert.Throws<UserErrorException>(() => DiskImage.Open(_path, DiskFormat.Auto, readOnly).Dispose());
        Assert.DoesNotContain('\n', e.Message);
        return e.Message;
    }

    [Theory]
    [InlineData(9, 3, 4)]
    [InlineData(12, 3, 0)]
    [InlineData(12, 3, 3)]
    [InlineData(16, 3, 4)]
    [InlineData(16, 2, 4)]
    [InlineData(10, 3, 6)]
    [InlineData(13, 3, 5)]
    [InlineData(11, 3, 1)]
    public void Writes_read_back_across_clusters_and_survive_reopening(int clusterBits, int version, int refcountOrder)
    {
        const long size = 1 << 20;
        Qcow2Image.Create(_path, size, clusterBits, version, refcountOrder);
        var model = new byte[size];
        var rng = new Random(clusterBits * 100 + refcountOrder);
        using (var d = Open())
        {
            Assert.Equal(size, d.Length);
            Assert.Equal(model, ReadAll(d)); // a new image reads as zeros
            for (int i = 0; i < 40; i++)
            {
                int length = rng.Next(1, 3 * (1 << clusterBits));
                long offset = rng.NextInt64(0, size - length);
                var data = Pattern(length, i);
                d.Write(offset, data);
                data.CopyTo(model, offset);
            }
            Assert.Equal(model, ReadAll(d));
        }
        using (var d = Open(readOnly: true))
        {
            Assert.Equal(model, ReadAll(d));
        }
    }

    [Fact]
    public void Discard_and_write_zeroes_read_as_zeros_and_free_whole_clusters()
    {
        Qcow2Image.Create(_path, 1 << 20, clusterBits: 12);
        var model = Pattern(1 << 20, 1);
        using (var d = Open())
        {
            d.Write(0, model);
            long grown = new FileInfo(_path).Length;
            d.Discard(4096 * 10, 4096 * 20);           // whole clusters: freed
            d.WriteZeroes(4096 * 40 + 100, 5000, mayUnmap: false); // partial clusters: zeros written
            d.WriteZeroes(4096 * 60, 4096 * 2, mayUnmap: true);
            Array.Clear(model, 4096 * 10, 4096 * 20);
            Array.Clear(model, 4096 * 40 + 100, 5000);
            Array.Clear(model, 4096 * 60, 4096 * 2);
            Assert.Equal(model, ReadAll(d));

            // Freed clusters are reused: rewriting the discarded range does not grow the file.
            d.Write(4096 * 10, Pattern(4096 * 20, 2));
            Pattern(4096 * 20, 2).CopyTo(model, 4096 * 10);
            Assert.Equal(grown, new FileInfo(_path).Length);
        }
        using var again = Open();
        Assert.Equal(model, ReadAll(again));
    }

    [Fact]
    public void Write_zeroes_without_unmap_keeps_the_cluster_and_a_later_write_reuses_it()
    {
        Qcow2Image.Create(_path, 1 << 20, clusterBits: 12);
        using var d = Open();
        d.Write(0, Pattern(8192, 3));
        long length = new FileInfo(_path).Length;
        d.WriteZeroes(0, 4096, mayUnmap: false);
        Assert.Equal(new byte[4096], ReadAll(d)[..4096]);
        d.Write(100, new byte[] { 1, 2, 3 });
        var back = new byte[4096];
        d.Read(0, back);
        var expected = new byte[4096];
        expected[100] = 1;
        expected[101] = 2;
        expected[102] = 3;
        Assert.Equal(expected, back); // the stale contents of the kept cluster never show through
        Assert.Equal(length, new FileInfo(_path).Length);
    }

    [Fact]
    public void Refcount_table_grows_when_the_file_outgrows_it()
    {
        // 512-byte clusters with 64-bit refcounts: a block covers 64 clusters, the 64-entry table 2 MiB.
        Qcow2Image.Create(_path, 4 << 20, clusterBits: 9, version: 3, refcountOrder: 6);
        var data = Pattern(3 << 20, 4);
        using (var d = Open())
        {
            d.Write(0, data);
        }
        Assert.True(new FileInfo(_path).Length > 3 << 20);
        long refTableOffset = (long)BinaryPrimitives.ReadUInt64BigEndian(File.ReadAllBytes(_path).AsSpan(48));
        Assert.NotEqual(512, refTableOffset); // moved
        using var again = Open();
        var back = new byte[data.Length];
        again.Read(0, back);
        Assert.Equal(data, back);
    }

    [Fact]
    public void Probing_picks_qcow2_by_magic_and_raw_otherwise()
    {
        Qcow2Image.Create(_path, 1 << 20);
        using (var d = DiskImage.Open(_path))
        {
            Assert.IsType<Qcow2Image>(d);
            Assert.Equal(1 << 20, d.Length);
        }
        using (var raw = DiskImage.Open(_path, DiskFormat.Raw))
        {
            Assert.IsType<RawDiskImage>(raw);
            Assert.Equal(new FileInfo(_path).Length, raw.Length);
        }
        File.WriteAllBytes(_path, new byte[4096]);
        using (var plain = DiskImage.Open(_path))
        {
            Assert.IsType<RawDiskImage>(plain);
        }
        Assert.Contains("not a qcow2 image", Assert.Throws<UserErrorException>(() => DiskImage.Open(_path, DiskFormat.Qcow2)).Message);
    }

    [Fact]
    public void Unsupported_features_are_named_at_open()
    {
        Qcow2Image.Create(_path, 1 << 20);
        PatchBe64(72, 1UL << 2);
        Assert.Contains("unsupported qcow2 feature: external data file", OpenError());
        PatchBe64(72, 1UL << 4);
        Assert.Contains("extended L2 entries", OpenError());
        PatchBe64(72, 1UL << 3);
        Assert.Contains("compression type", OpenError());
        PatchBe64(72, 1UL << 9);
        Assert.Contains("unknown incompatible bit 9", OpenError());
        PatchBe64(72, 0);
        PatchBe32(32, 2);
        Assert.Contains("encryption", OpenError());
        PatchBe32(32, 0);
        PatchBe32(4, 4);
        Assert.Contains("qcow2 version 4 is not supported", OpenError());
    }

    [Fact]
    public void Unknown_incompatible_bit_is_named_from_the_feature_name_table()
    {
        Qcow2Image.Create(_path, 1 << 20);
        // Feature name table extension right after the 104-byte header: one entry (incompatible, bit 7).
        var ext = new byte[8 + 48];
        BinaryPrimitives.WriteUInt32BigEndian(ext, 0x6803f857);
        BinaryPrimitives.WriteUInt32BigEndian(ext.AsSpan(4), 48);
        ext[8] = 0;
        ext[9] = 7;
        "time travel"u8.CopyTo(ext.AsSpan(10));
        Patch(104, ext);
        PatchBe64(72, 1UL << 7);
        Assert.Contains("'time travel' (incompatible bit 7)", OpenError());
    }

    [Fact]
    public void Dirty_and_corrupt_images_are_refused_for_writing_but_open_readonly()
    {
        Qcow2Image.Create(_path, 1 << 20);
        PatchBe64(72, 1);
        Assert.Contains("marked dirty", OpenError());
        Open(readOnly: true).Dispose();
        PatchBe64(72, 2);
        Assert.Contains("marked corrupt", OpenError());
        Open(readOnly: true).Dispose();
    }

    [Fact]
    public void Backing_file_is_refused_and_named()
    {
        Qcow2Image.Create(_path, 1 << 20);
        Patch(512, "base.qcow2"u8);
        PatchBe64(8, 512);
        PatchBe32(16, 10);
        Assert.Contains("backing file 'base.qcow2'", OpenError());
    }

    [Theory]
    [InlineData(36, 0x1000_0000u, "L1 table of 268435456 entries is absurd")]
    [InlineData(36, 0u, "cannot map")]
    [InlineData(20, 30u, "cluster_bits 30")]
    [InlineData(100, 12u, "header_length")]
    [InlineData(56, 1000u, "refcount table")]
    [InlineData(96, 7u, "refcount_order 7")]
    public void Corrupt_header_fields_give_one_line_errors(int field, uint value, string expected)
    {
        Qcow2Image.Create(_path, 1 << 20);
        PatchBe32(field, value);
        Assert.Contains(expected, OpenError());
    }

    [Theory]
    [InlineData(40, 1UL << 40, "L1 table")]          // L1 beyond the file
    [InlineData(40, 0x30001UL, "L1 table")]          // misaligned
    [InlineData(48, 1UL << 40, "refcount table")]
    [InlineData(48, 0x30000UL, "overlap")]           // refcount table on top of the L1 table
    public void Metadata_outside_the_file_or_overlapping_is_refused_at_open(int field, ulong value, string expected)
    {
        Qcow2Image.Create(_path, 1 << 20);
        PatchBe64(field, value);
        string m = OpenError();
        Assert.Contains("corrupt image", m);
        Assert.Contains(expected, m);
    }

    [Fact]
    public void L1_entry_beyond_the_file_or_onto_the_header_is_refused_at_open()
    {
        Qcow2Image.Create(_path, 1 << 20, clusterBits: 16);
        PatchBe64(3 * 65536, 1UL << 63 | 1UL << 40);
        Assert.Contains("L1 entry 0 points to", OpenError());
        PatchBe64(3 * 65536, 1UL << 63); // offset 0 with "copied": fine, means unallocated
        Open().Dispose();
        PatchBe64(3 * 65536, 1UL << 63 | 65536); // the refcount table's cluster
        Assert.Contains("L1 entry 0 points to", OpenError());
    }

    /// <summary>Writes guest byte 0, which allocates the first L2 table (host cluster 4) and data cluster (5); returns the table's offset.</summary>
    long AllocateFirstCluster()
    {
        using (var d = Open())
        {
            d.Write(0, new byte[] { 1 });
        }
        var file = File.ReadAllBytes(_path);
        return (long)(BinaryPrimitives.ReadUInt64BigEndian(file.AsSpan(3 * 4096)) & 0x00FF_FFFF_FFFF_FE00);
    }

    /// <summary>Makes guest cluster 0's L2 entry <paramref name="entry"/> (after a write allocated the L2 table).</summary>
    long SetFirstL2Entry(ulong entry)
    {
        long l2 = AllocateFirstCluster();
        PatchBe64(l2, entry);
        return l2;
    }

    [Fact]
    public void Data_cluster_beyond_the_file_refuses_a_read_write_open_and_is_an_io_error_on_access()
    {
        Qcow2Image.Create(_path, 1 << 20, clusterBits: 12);
        SetFirstL2Entry(1UL << 63 | 1UL << 40);
        string m = OpenError();
        Assert.Contains("data cluster at 0x10000000000 lies beyond the end of the file", m);
        Assert.Contains("qemu-img check -r all", m);
        using var d = Open(readOnly: true);
        Assert.Throws<DiskImageCorruptException>(() => d.Read(0, new byte[512]));
        d.Read(8192, new byte[512]); // other clusters still read
    }

    [Fact]
    public void Metadata_changed_under_an_open_image_is_an_io_error_and_marks_it_corrupt()
    {
        // What the check at open cannot see: the file changing afterwards (another writer ignoring the lock).
        Qcow2Image.Create(_path, 1 << 20, clusterBits: 12);
        long l2 = AllocateFirstCluster();
        using (var d = Open())
        {
            PatchBe64(l2, 1UL << 63 | 1UL << 40); // the L2 table is read on first access, after this
            Assert.Throws<DiskImageCorruptException>(() => d.Read(0, new byte[512]));
            Assert.Throws<DiskImageCorruptException>(() => d.Write(0, new byte[512]));
            // Other clusters still work for reading; writes are refused once corruption was seen.
            d.Read(8192, new byte[512]);
            Assert.Throws<DiskImageCorruptException>(() => d.Write(8192, new byte[512]));
        }
        Assert.Contains("marked corrupt", OpenError()); // the corrupt bit reached the header
    }

    [Fact]
    public void Guest_write_through_an_l2_entry_pointing_at_metadata_is_refused()
    {
        Qcow2Image.Create(_path, 1 << 20, clusterBits: 12);
        long l2 = AllocateFirstCluster();
        var before = File.ReadAllBytes(_path).AsSpan(3 * 4096, 4096).ToArray();
        using (var d = Open())
        {
            PatchBe64(l2, 1UL << 63 | 3 * 4096); // onto the L1 table, after the check at open
            Assert.Throws<DiskImageCorruptException>(() => d.Write(0, Pattern(4096, 9)));
        }
        Assert.Equal(before, File.ReadAllBytes(_path).AsSpan(3 * 4096, 4096).ToArray());
    }

    [Fact]
    public void L2_entry_pointing_at_metadata_refuses_a_read_write_open()
    {
        // The L1 table's cluster would have two references (as L1 table and as data) and refcount 1.
        Qcow2Image.Create(_path, 1 << 20, clusterBits: 12);
        SetFirstL2Entry(1UL << 63 | 3 * 4096);
        Assert.Contains("host cluster 3 (0x3000) has refcount 1 but 2 references", OpenError());
    }

    [Fact]
    public void Reserved_bits_in_an_l2_entry_are_an_io_error()
    {
        Qcow2Image.Create(_path, 1 << 20, clusterBits: 12);
        SetFirstL2Entry(1UL << 63 | 5 * 4096 | 0x10);
        using var d = Open();
        Assert.Throws<DiskImageCorruptException>(() => d.Read(0, new byte[16]));
    }

    [Fact]
    public void Garbage_compressed_cluster_is_an_io_error()
    {
        Qcow2Image.Create(_path, 1 << 20, clusterBits: 12);
        long l2 = SetFirstL2Entry(0);
        // Compressed descriptor (cluster_bits 12: offset in bits 0..57, 4 extra sectors above) onto the L2 table itself.
        PatchBe64(l2, 1UL << 62 | 4UL << 58 | (ulong)l2);
        using var d = Open(readOnly: true); // read-write is refused: the L2 table's cluster gains a second reference
        Assert.Throws<DiskImageCorruptException>(() => d.Read(0, new byte[16]));
    }

    [Fact]
    public void Zeroed_refcount_of_a_data_cluster_refuses_a_read_write_open()
    {
        Qcow2Image.Create(_path, 1 << 20, clusterBits: 12);
        var data = Pattern(4096, 5);
        using (var d = Open())
        {
            d.Write(0, data);
        }
        // Zero the data cluster's refcount (16-bit entries in the block at cluster 2; the data is cluster 5).
        Patch(2 * 4096 + 5 * 2, new byte[2]);
        string m = OpenError();
        Assert.Contains("host cluster 5 (0x5000) has refcount 0 but 1 reference", m);
        Assert.Contains("qemu-img check -r all", m);
        using var ro = Open(readOnly: true);
        Assert.Equal(data, ReadAll(ro)[..4096]);
    }

    [Fact]
    public void Refcount_underflow_is_detected()
    {
        Qcow2Image.Create(_path, 1 << 20, clusterBits: 12);
        using (var d = Open())
        {
            d.Write(0, Pattern(4096, 5));
        }
        using var again = Open();
        // Zero the data cluster's refcount after the check at open (the refcount block is read on first use),
        // then discard the cluster: its refcount would drop below zero.
        Patch(2 * 4096 + 5 * 2, new byte[2]);
        Assert.Throws<DiskImageCorruptException>(() => again.Discard(0, 4096));
    }

    [Fact]
    public void Refcounts_claiming_space_far_beyond_the_file_are_corruption_not_an_endless_search()
    {
        // Every refcount table entry points to one block full of refcount 0xFFFF: a naive search walks
        // 512 x 2048 "used" clusters (and with a large table, billions) and then allocates at 4 GiB.
        Qcow2Image.Create(_path, 1 << 20, clusterBits: 12);
        var full = new byte[4096];
        full.AsSpan().Fill(0xFF);
        Patch(2 * 4096, full);
        for (int i = 0; i < 512; i++)
        {
            PatchBe64(4096 + i * 8, 2 * 4096);
        }
        using var d = Open();
        Assert.Throws<DiskImageCorruptException>(() => d.Write(0, new byte[512]));
    }

    [Fact]
    public void Read_only_image_refuses_writes()
    {
        Qcow2Image.Create(_path, 1 << 20);
        using var d = Open(readOnly: true);
        Assert.True(d.ReadOnly);
        Assert.Throws<InvalidOperationException>(() => d.Write(0, new byte[1]));
    }

    [Fact]
    public void Steady_state_reads_and_overwrites_allocate_nothing()
    {
        Qcow2Image.Create(_path, 1 << 20, clusterBits: 12);
        using var d = Open();
        var buffer = new byte[16384];
        d.Write(0, buffer);
        d.Read(0, buffer);
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 100; i++)
        {
            d.Write(0, buffer);
            d.Read(0, buffer);
        }
        Assert.Equal(before, GC.GetAllocatedBytesForCurrentThread());
    }
}
