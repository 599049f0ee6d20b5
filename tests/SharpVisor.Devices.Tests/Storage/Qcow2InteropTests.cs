using CsCheck;
using SharpVisor.Core;
using SharpVisor.Devices.Storage;

namespace SharpVisor.Devices.Tests.Storage;

/// <summary>
/// Our qcow2 code against QEMU's: images made by qemu-img, changed through <see cref="Qcow2Image"/>, must
/// pass `qemu-img check` (no corruption, no leak) and convert to exactly the contents a byte-array model
/// predicts; data QEMU writes must read back through our code.
/// </summary>
public sealed class Qcow2InteropTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("sv-qcow2-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    string PathOf(string name) => Path.Combine(_dir, name);

    static byte[] Pattern(int length, int seed)
    {
        var b = new byte[length];
        new Random(seed).NextBytes(b);
        return b;
    }

    static byte[] ReadAll(IDiskImage d)
    {
        var b = new byte[d.Length];
        d.Read(0, b);
        return b;
    }

    enum Op { Write, Discard, WriteZeroes, WriteZeroesUnmap }

    /// <summary>Random write / discard / write-zeroes runs; each run ends with qemu-img check and convert.</summary>
    [Theory]
    [InlineData("compat=0.10,cluster_size=512", 256 * 1024)]
    [InlineData("compat=1.1,cluster_size=512,refcount_bits=1", 256 * 1024)]
    [InlineData("compat=1.1,cluster_size=4096,refcount_bits=64", 1 << 20)]
    [InlineData("compat=1.1", 4 << 20)]
    [InlineData("compat=0.10", 4 << 20)]
    [InlineData("compat=1.1,cluster_size=2048,preallocation=metadata", 1 << 20)]
    public void Random_operations_leave_an_image_qemu_img_checks_clean_with_the_model_contents(string options, int size)
    {
        var gen = Gen.Select(Gen.Enum<Op>(), Gen.Int[0, size - 1], Gen.Int[1, 3 * 65536], Gen.Int).Array[1, 24];
        int run = 0;
        gen.Sample(ops =>
        {
            string path = PathOf($"prop{run++}.qcow2");
            QemuImg.Create(path, size, options);
            var model = new byte[size];
            using (var d = DiskImage.Open(path, DiskFormat.Qcow2))
            {
                foreach (var (op, offset, requested, seed) in ops)
                {
                    int length = Math.Min(requested, size - offset);
                    switch (op)
                    {
                        case Op.Write:
                            var data = Pattern(length, seed);
                            d.Write(offset, data);
                            data.CopyTo(model, offset);
                            break;
                        case Op.Discard:
                            d.Discard(offset, length);
                            Array.Clear(model, offset, length);
                            break;
                        default:
                            d.WriteZeroes(offset, length, op == Op.WriteZeroesUnmap);
                            Array.Clear(model, offset, length);
                            break;
                    }
                }
                Assert.Equal(model, ReadAll(d));
                d.Flush();
            }
            QemuImg.AssertClean(path);
            Assert.Equal(model, QemuImg.ToRaw(path));
            File.Delete(path);
        }, iter: 6, threads: 1);
    }

    [Fact]
    public void Growing_the_refcount_table_keeps_qemu_img_check_clean()
    {
        // Our own small-table image: 512-byte clusters, 64-bit refcounts (one block covers 32 KiB, the
        // one-cluster table 2 MiB), then 3 MiB of writes: the table must move, twice over.
        string path = PathOf("grow.qcow2");
        Qcow2Image.Create(path, 4 << 20, clusterBits: 9, version: 3, refcountOrder: 6);
        var model = new byte[4 << 20];
        using (var d = DiskImage.Open(path))
        {
            for (int i = 0; i < 24; i++)
            {
                var data = Pattern(128 * 1024, i);
                long offset = (i * 7919L % 32) * 128 * 1024;
                d.Write(offset, data);
                data.CopyTo(model, offset);
            }
            d.Discard(0, 1 << 20);
            Array.Clear(model, 0, 1 << 20);
        }
        QemuImg.AssertClean(path);
        Assert.Equal(model, QemuImg.ToRaw(path));
        Assert.Contains("\"refcount-bits\": 64", QemuImg.Run("qemu-img", "info", "--output=json", path));
    }

    [Theory]
    [InlineData("compat=1.1")]
    [InlineData("compat=0.10,cluster_size=4096")]
    public void Compressed_clusters_read_back_and_writing_into_one_copies_it(string options)
    {
        string raw = PathOf("src.raw"), path = PathOf("c.qcow2");
        var model = new byte[2 << 20];
        for (int i = 0; i < model.Length; i += 4096)
        {
            model.AsSpan(i, 1024).Fill((byte)(i / 4096)); // compressible, distinct per 4 KiB
        }
        File.WriteAllBytes(raw, model);
        QemuImg.Run("qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", options, raw, path);
        using (var d = DiskImage.Open(path))
        {
            Assert.Equal(model, ReadAll(d));
            var data = Pattern(3000, 1);
            d.Write(70_000, data);
            data.CopyTo(model, 70_000);
            d.WriteZeroes(65536 * 4, 65536 * 2, mayUnmap: true);
            Array.Clear(model, 65536 * 4, 65536 * 2);
            d.Discard(65536 * 8 + 100, 200);
            Array.Clear(model, 65536 * 8 + 100, 200);
            Assert.Equal(model, ReadAll(d));
        }
        QemuImg.AssertClean(path);
        Assert.Equal(model, QemuImg.ToRaw(path));
        Assert.True(new FileInfo(path).Length < model.Length / 2, "qemu-img did not compress");
    }

    [Theory]
    [InlineData("preallocation=falloc")]
    [InlineData("preallocation=full,compat=0.10")]
    public void Preallocated_images_work_in_place(string options)
    {
        string path = PathOf("p.qcow2");
        QemuImg.Create(path, 1 << 20, options);
        long length = new FileInfo(path).Length;
        var model = new byte[1 << 20];
        using (var d = DiskImage.Open(path))
        {
            var data = Pattern(200_000, 2);
            d.Write(12345, data);
            data.CopyTo(model, 12345);
            d.WriteZeroes(65536, 65536, mayUnmap: false);
            Array.Clear(model, 65536, 65536);
            d.Write(65536 + 10, new byte[] { 9 });
            model[65536 + 10] = 9;
            Assert.Equal(model, ReadAll(d));
        }
        Assert.Equal(length, new FileInfo(path).Length); // nothing new was allocated
        QemuImg.AssertClean(path);
        Assert.Equal(model, QemuImg.ToRaw(path));
    }

    [Fact]
    public void Data_qemu_io_writes_reads_back_through_our_code()
    {
        string path = PathOf("q.qcow2");
        QemuImg.Create(path, 1 << 20, "compat=1.1");
        QemuImg.Run("qemu-io", "-f", "qcow2", "-c", "write -P 0xab 0 64k", "-c", "write -z 8k 4k", "-c", "write -P 0x5c 300k 5k", path);
        using var d = DiskImage.Open(path);
        var all = ReadAll(d);
        var expected = new byte[1 << 20];
        expected.AsSpan(0, 65536).Fill(0xAB);
        expected.AsSpan(8192, 4096).Clear();
        expected.AsSpan(300 * 1024, 5 * 1024).Fill(0x5C);
        Assert.Equal(expected, all);
    }

    [Fact]
    public void Internal_snapshot_keeps_its_data_when_the_guest_overwrites_shared_clusters()
    {
        string path = PathOf("s.qcow2");
        QemuImg.Create(path, 1 << 20, "compat=1.1,cluster_size=4096");
        QemuImg.Run("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 256k", path);
        QemuImg.Run("qemu-img", "snapshot", "-c", "before", path);
        var model = new byte[1 << 20];
        model.AsSpan(0, 256 * 1024).Fill(0x11);
        using (var d = DiskImage.Open(path))
        {
            var data = Pattern(10_000, 3);
            d.Write(5000, data);
            data.CopyTo(model, 5000);
            d.Discard(64 * 1024, 64 * 1024);
            Array.Clear(model, 64 * 1024, 64 * 1024);
            Assert.Equal(model, ReadAll(d));
        }
        QemuImg.AssertClean(path);
        Assert.Equal(model, QemuImg.ToRaw(path));
        string snap = PathOf("snap.raw");
        QemuImg.Run("qemu-img", "convert", "-l", "snapshot.name=before", "-O", "raw", path, snap);
        var before = new byte[1 << 20];
        before.AsSpan(0, 256 * 1024).Fill(0x11);
        Assert.Equal(before, File.ReadAllBytes(snap));
    }

    [Fact]
    public void Persistent_bitmap_image_opens_read_write_and_its_autoclear_bit_is_cleared()
    {
        // qcow2.txt: a writer must clear auto-clear bits it does not maintain; we do not update bitmaps.
        string path = PathOf("bm.qcow2");
        QemuImg.Create(path, 1 << 20, "compat=1.1");
        QemuImg.Run("qemu-img", "bitmap", "--add", path, "b0");
        Assert.Equal(1, File.ReadAllBytes(path)[95] & 1);
        using (var d = DiskImage.Open(path))
        {
            d.Write(0, Pattern(70_000, 4));
        }
        Assert.Equal(0, File.ReadAllBytes(path)[95] & 1);
        // With the bit clear QEMU ignores the bitmap directory, so its clusters count as leaked (harmless).
        QemuImg.AssertConsistent(path, leaksAllowed: true);
        Assert.Equal(Pattern(70_000, 4), QemuImg.ToRaw(path)[..70_000]);
    }

    [Fact]
    public void Backing_file_image_is_refused_with_a_clear_line()
    {
        string baseImage = PathOf("base.qcow2"), overlay = PathOf("overlay.qcow2");
        QemuImg.Create(baseImage, 1 << 20, "compat=1.1");
        QemuImg.Run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", baseImage, overlay);
        var e = Assert.Throws<UserErrorException>(() => DiskImage.Open(overlay));
        Assert.Contains($"backing file '{baseImage}'", e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void Lazy_refcount_image_left_dirty_by_qemu_is_refused_for_writing()
    {
        string path = PathOf("lazy.qcow2");
        QemuImg.Create(path, 1 << 20, "compat=1.1,lazy_refcounts=on");
        // qemu-io's "abort" leaves the image dirty, as a crashed QEMU would.
        try
        {
            QemuImg.Run("qemu-io", "-f", "qcow2", "-c", "write 0 4k", "-c", "abort", path);
        }
        catch (InvalidOperationException)
        {
            // exits through abort(): expected
        }
        var e = Assert.Throws<UserErrorException>(() => DiskImage.Open(path));
        Assert.Contains("marked dirty", e.Message);
        using var ro = DiskImage.Open(path, readOnly: true);
        Assert.Equal(1 << 20, ro.Length);
    }
}
