using System.Buffers.Binary;
using SharpVisor.Core;
using SharpVisor.Devices.Storage;

namespace SharpVisor.Devices.Tests.Storage;

/// <summary>
/// Images QEMU made, then damaged the way a bad disk, a bug or a hostile image author would (issue 16
/// defect 9): guest requests through <see cref="Qcow2Image"/> must get I/O errors and the image its
/// corrupt bit, or the open must be refused — data the guest did not write is never overwritten. QEMU's
/// tools check the result.
/// </summary>
public sealed class Qcow2DamagedImageTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("sv-qcow2-damaged-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    string PathOf(string name) => Path.Combine(_dir, name);

    static ulong Be64(byte[] file, long at) => BinaryPrimitives.ReadUInt64BigEndian(file.AsSpan((int)at));

    static void PatchBe64(string path, long offset, ulong value)
    {
        Span<byte> b = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(b, value);
        Patch(path, offset, b);
    }

    static void Patch(string path, long offset, ReadOnlySpan<byte> bytes)
    {
        using var f = new FileStream(path, FileMode.Open, FileAccess.ReadWrite);
        f.Position = offset;
        f.Write(bytes);
    }

    /// <summary>File offset of the L2 entry that maps guest cluster <paramref name="guestCluster"/> (its L2 table exists).</summary>
    static long L2EntryOffset(string path, long guestCluster)
    {
        var file = File.ReadAllBytes(path);
        int clusterBits = (int)BinaryPrimitives.ReadUInt32BigEndian(file.AsSpan(20));
        long l2Entries = 1L << (clusterBits - 3);
        long l1 = (long)Be64(file, 40);
        long l2 = (long)(Be64(file, l1 + guestCluster / l2Entries * 8) & 0x00FF_FFFF_FFFF_FE00);
        Assert.NotEqual(0, l2);
        return l2 + guestCluster % l2Entries * 8;
    }

    static bool QemuSaysCorrupt(string path) =>
        QemuImg.Run("qemu-img", "info", "--output=json", path).Contains("\"corrupt\": true", StringComparison.Ordinal);

    [Fact]
    public void Misaligned_data_cluster_offset_is_an_io_error_marks_the_image_corrupt_and_spares_the_neighbour()
    {
        // 4 KiB clusters; guest clusters 0, 1, 2 hold 0x11, 0x22, 0x33, in host clusters allocated in a row.
        string path = PathOf("misaligned.qcow2");
        QemuImg.Create(path, 1 << 20, "compat=1.1,cluster_size=4096");
        QemuImg.Run("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 4k", "-c", "write -P 0x22 4k 4k", "-c", "write -P 0x33 8k 4k", path);
        long entryAt = L2EntryOffset(path, 0);
        ulong entry = Be64(File.ReadAllBytes(path), entryAt);
        long host = (long)(entry & 0x00FF_FFFF_FFFF_FE00);
        PatchBe64(path, entryAt, entry + 512); // qcow2.txt: bits 9-55 must be cluster-aligned; this is not
        var before = File.ReadAllBytes(path);

        using (var d = (Qcow2Image)DiskImage.Open(path))
        {
            Assert.Throws<DiskImageCorruptException>(() => d.Write(0, Enumerable.Repeat((byte)0xEE, 4096).ToArray()));
            Assert.Throws<DiskImageCorruptException>(() => d.Read(0, new byte[512]));
            // Other clusters still read; writes anywhere are refused from now on.
            var other = new byte[4096];
            d.Read(4096, other);
            Assert.All(other, b => Assert.Equal(0x22, b));
            Assert.Throws<DiskImageCorruptException>(() => d.Write(3 * 4096, new byte[512]));
            Assert.Equal(2, d.CorruptionsFound.Value); // the write and the read that found it; refused writes are not findings
        }

        // Nothing but the header's incompatible-features field changed in the file: the neighbour of
        // the misaligned cluster (and everything else) is intact.
        var after = File.ReadAllBytes(path);
        Assert.Equal(before.Length, after.Length);
        Assert.Equal(before.AsSpan(80).ToArray(), after.AsSpan(80).ToArray());
        Assert.Equal(before.AsSpan(0, 72).ToArray(), after.AsSpan(0, 72).ToArray());
        Assert.Equal(host + 4096, (long)(Be64(after, L2EntryOffset(path, 1)) & 0x00FF_FFFF_FFFF_FE00)); // the neighbour is guest cluster 1
        QemuImg.Run("qemu-io", "-r", "-f", "qcow2", "-c", "read -P 0x22 4k 4k", "-c", "read -P 0x33 8k 4k", path);
        Assert.True(QemuSaysCorrupt(path));
        var e = Assert.Throws<UserErrorException>(() => DiskImage.Open(path).Dispose());
        Assert.Contains("marked corrupt", e.Message);
        Assert.DoesNotContain('\n', e.Message);
        using var ro = DiskImage.Open(path, readOnly: true);
        ro.Read(8192, new byte[4096]);
    }

    [Fact]
    public void Misaligned_preallocated_zero_cluster_is_an_io_error_on_write()
    {
        // A v3 zero-flagged entry that keeps its host cluster is reused on write: its offset must be aligned too.
        string path = PathOf("zero.qcow2");
        QemuImg.Create(path, 1 << 20, "compat=1.1,cluster_size=4096");
        QemuImg.Run("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 8k", path);
        long entryAt = L2EntryOffset(path, 0);
        ulong entry = Be64(File.ReadAllBytes(path), entryAt);
        PatchBe64(path, entryAt, (entry + 1024) | 1); // zero flag, misaligned preallocation
        using (var d = DiskImage.Open(path))
        {
            Assert.Throws<DiskImageCorruptException>(() => d.Write(100, new byte[] { 1 }));
        }
        QemuImg.Run("qemu-io", "-r", "-f", "qcow2", "-c", "read -P 0x11 4k 4k", path);
        Assert.True(QemuSaysCorrupt(path));
    }
    /// <summary>
    /// Refcounts that no longer cover the data (issue 16 defect 9b). 4 KiB clusters, 16-bit refcounts: guest
    /// [0, 512 KiB) holds 0x5a in host clusters 5..132; then "zeroed" clears the whole refcount block,
    /// "order3"/"order5" change refcount_order so that the block decodes to other values (many zero), and
    /// "snapshot" keeps the 0x5a data only in an internal snapshot (the guest rewrote it with 0x77) and clears
    /// just those clusters' refcounts. New allocations then land on data: a read-write open must refuse.
    /// </summary>
    [Theory]
    [InlineData("zeroed")]
    [InlineData("order3")]
    [InlineData("order5")]
    [InlineData("snapshot")]
    public void Refcounts_below_the_references_refuse_a_read_write_open_and_no_data_is_overwritten(string damage)
    {
        string path = PathOf($"{damage}.qcow2");
        QemuImg.Create(path, 1 << 20, "compat=1.1,cluster_size=4096");
        QemuImg.Run("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 512k", path);
        if (damage == "snapshot")
        {
            QemuImg.Run("qemu-img", "snapshot", "-c", "s1", path);
            QemuImg.Run("qemu-io", "-f", "qcow2", "-c", "write -P 0x77 0 512k", path);
        }
        var file = File.ReadAllBytes(path);
        long refBlock = (long)Be64(file, (long)Be64(file, 48));
        switch (damage)
        {
            case "zeroed":
                Patch(path, refBlock, new byte[4096]);
                break;
            case "order3":
            case "order5":
                Patch(path, 96, [0, 0, 0, (byte)(damage == "order3" ? 3 : 5)]);
                break;
            default:
                // The clusters that hold 0x5a are now the snapshot's alone (refcount 1): make them look free.
                int cleared = 0;
                for (long c = 1; c < file.Length / 4096; c++)
                {
                    if (file.AsSpan((int)(c * 4096), 4096).IndexOfAnyExcept((byte)0x5a) < 0)
                    {
                        Patch(path, refBlock + c * 2, [0, 0]);
                        cleared++;
                    }
                }
                Assert.Equal(128, cleared);
                break;
        }

        // A guest writing the other half of the disk through our code.
        UserErrorException? refused = null;
        try
        {
            using var d = DiskImage.Open(path);
            d.Write(512 * 1024, Enumerable.Repeat((byte)0xC3, 512 * 1024).ToArray());
            d.Flush();
        }
        catch (UserErrorException e)
        {
            refused = e;
        }

        // The data the guest did not write is intact, as QEMU reads it.
        if (damage == "snapshot")
        {
            string snap = PathOf("snap.raw");
            QemuImg.Run("qemu-img", "convert", "-l", "snapshot.name=s1", "-O", "raw", path, snap);
            Assert.True(File.ReadAllBytes(snap).AsSpan(0, 512 * 1024).IndexOfAnyExcept((byte)0x5a) < 0, "the snapshot's data was overwritten");
            QemuImg.Run("qemu-io", "-r", "-f", "qcow2", "-c", "read -P 0x77 0 512k", path);
        }
        else
        {
            QemuImg.Run("qemu-io", "-r", "-f", "qcow2", "-c", "read -P 0x5a 0 512k", path);
        }
        Assert.NotNull(refused);
        Assert.Contains("qemu-img check -r all", refused.Message);
        Assert.DoesNotContain('\n', refused.Message);

        // Read-only use still works; after QEMU's repair the image opens read-write and takes writes.
        using (var ro = DiskImage.Open(path, readOnly: true))
        {
            var back = new byte[4096];
            ro.Read(4096, back);
            Assert.All(back, b => Assert.Equal(damage == "snapshot" ? 0x77 : 0x5a, b));
        }
        QemuImg.Repair(path);
        using (var d = DiskImage.Open(path))
        {
            d.Write(512 * 1024, Enumerable.Repeat((byte)0xC3, 512 * 1024).ToArray());
        }
        QemuImg.AssertClean(path);
        QemuImg.Run("qemu-io", "-r", "-f", "qcow2", "-c", $"read -P {(damage == "snapshot" ? "0x77" : "0x5a")} 0 512k", "-c", "read -P 0xc3 512k 512k", path);
    }
}
