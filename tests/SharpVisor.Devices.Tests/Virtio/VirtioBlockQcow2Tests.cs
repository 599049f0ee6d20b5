using System.Buffers.Binary;
using SharpVisor.Devices.Storage;
using SharpVisor.Devices.Tests.Storage;
using SharpVisor.Devices.Virtio;

namespace SharpVisor.Devices.Tests.Virtio;

/// <summary>virtio-blk on a qcow2 image: what the guest driver sees, and what QEMU finds afterwards.</summary>
public sealed class VirtioBlockQcow2Tests : IDisposable
{
    readonly string _path = Path.Combine(Path.GetTempPath(), $"sv-blk-{Guid.NewGuid():N}.qcow2");

    public void Dispose() => File.Delete(_path);

    static byte Request(VirtioTestDriver d, uint type, ulong sector, ulong data, uint dataLength, bool dataWritable)
    {
        var header = new byte[16];
        BinaryPrimitives.WriteUInt32LittleEndian(header, type);
        BinaryPrimitives.WriteUInt64LittleEndian(header.AsSpan(8), sector);
        ulong status = d.AllocateData([0xEE]);
        var q = d.Queues[0];
        var buffers = dataLength == 0
            ? new[] { (d.AllocateData(header), 16u, false), (status, 1u, true) }
            : new[] { (d.AllocateData(header), 16u, false), (data, dataLength, dataWritable), (status, 1u, true) };
        q.Post(buffers);
        q.Notify();
        Assert.NotNull(q.TakeUsed());
        return d.ReadRam(status, 1)[0];
    }

    static ulong Range(VirtioTestDriver d, ulong sector, uint count, uint flags)
    {
        var range = new byte[16];
        BinaryPrimitives.WriteUInt64LittleEndian(range, sector);
        BinaryPrimitives.WriteUInt32LittleEndian(range.AsSpan(8), count);
        BinaryPrimitives.WriteUInt32LittleEndian(range.AsSpan(12), flags);
        return d.AllocateData(range);
    }

    [Fact]
    public void Guest_io_on_a_qemu_img_image_leaves_it_clean_with_the_guests_data()
    {
        QemuImg.Create(_path, (1 << 20) + 512, "compat=1.1,cluster_size=4096");
        var model = new byte[(1 << 20) + 512];
        using (var d = new VirtioTestDriver(new VirtioBlock(_path, serial: "q")))
        {
            d.Start();
            Assert.Equal((ulong)model.Length / 512, d.DeviceCfg(0, 8)); // capacity: the virtual size
            var data = new byte[12 * 512];
            new Random(1).NextBytes(data);
            Assert.Equal(VirtioBlock.StatusOk, Request(d, VirtioBlock.RequestOut, 7, d.AllocateData(data), (uint)data.Length, false));
            data.CopyTo(model, 7 * 512);
            Assert.Equal(VirtioBlock.StatusOk, Request(d, VirtioBlock.RequestDiscard, 0, Range(d, 8, 8, 0), 16, false));
            Array.Clear(model, 8 * 512, 8 * 512);
            Assert.Equal(VirtioBlock.StatusOk, Request(d, VirtioBlock.RequestWriteZeroes, 0, Range(d, 2048, 1, 1), 16, false));
            Assert.Equal(VirtioBlock.StatusOk, Request(d, VirtioBlock.RequestFlush, 0, 0, 0, false));
            ulong buf = d.Allocate(16 * 512);
            Assert.Equal(VirtioBlock.StatusOk, Request(d, VirtioBlock.RequestIn, 4, buf, 16 * 512, true));
            Assert.Equal(model.AsSpan(4 * 512, 16 * 512).ToArray(), d.ReadRam(buf, 16 * 512));
        }
        QemuImg.AssertClean(_path);
        Assert.Equal(model, QemuImg.ToRaw(_path));
    }

    [Fact]
    public void Corrupt_mapping_gives_the_guest_ioerr_and_the_device_keeps_serving()
    {
        Qcow2Image.Create(_path, 1 << 20, clusterBits: 12);
        using (var img = DiskImage.Open(_path))
        {
            img.Write(0, new byte[] { 1 });
        }
        // Point guest cluster 0's L2 entry far beyond the end of the file.
        var file = File.ReadAllBytes(_path);
        long l2 = (long)(BinaryPrimitives.ReadUInt64BigEndian(file.AsSpan(3 * 4096)) & 0x00FF_FFFF_FFFF_FE00);
        BinaryPrimitives.WriteUInt64BigEndian(file.AsSpan((int)l2), 1UL << 63 | 1UL << 40);
        File.WriteAllBytes(_path, file);

        var blk = new VirtioBlock(_path, readOnly: true, serial: "c"); // read-write opens refuse such an image
        using var d = new VirtioTestDriver(blk);
        d.Start();
        ulong buf = d.Allocate(4096);
        Assert.Equal(VirtioBlock.StatusIoError, Request(d, VirtioBlock.RequestIn, 0, buf, 4096, true));
        Assert.Equal(1, blk.IoErrors.Value);
        Assert.Equal(VirtioBlock.StatusOk, Request(d, VirtioBlock.RequestIn, 64, buf, 4096, true));
        Assert.Equal(0, d.Status & VirtioPci.StatusNeedsReset);
    }

    [Fact]
    public void Steady_state_reads_and_overwrites_allocate_nothing_on_the_heap()
    {
        Qcow2Image.Create(_path, 1 << 20, clusterBits: 12);
        using var d = new VirtioTestDriver(new VirtioBlock(_path, serial: "a"));
        d.Start();
        d.CommonWrite(VirtioPci.QueueSelect, 2, 0);
        d.CommonWrite(VirtioPci.QueueMsixVector, 2, VirtioPci.NoVector);
        ulong buf = d.AllocateData(new byte[8192]);
        var q = d.Queues[0];
        var read = new byte[16];
        var write = new byte[16];
        BinaryPrimitives.WriteUInt32LittleEndian(write, VirtioBlock.RequestOut);
        BinaryPrimitives.WriteUInt64LittleEndian(write.AsSpan(8), 8);
        BinaryPrimitives.WriteUInt64LittleEndian(read.AsSpan(8), 8);
        ulong r = d.AllocateData(read), w = d.AllocateData(write), status = d.Allocate(1);
        for (int round = 0; round < 2; round++)
        {
            // Round 0 allocates the clusters and warms the caches; round 1 must not touch the heap.
            for (int i = 0; i < 4; i++)
            {
                q.Post((w, 16, false), (buf, 8192, false), (status, 1, true));
                q.Post((r, 16, false), (buf, 8192, true), (status, 1, true));
            }
            long before = GC.GetAllocatedBytesForCurrentThread();
            q.Notify();
            if (round == 1)
            {
                Assert.Equal(before, GC.GetAllocatedBytesForCurrentThread());
            }
        }
        Assert.Equal(16, q.UsedIndex);
        Assert.Equal(VirtioBlock.StatusOk, d.ReadRam(status, 1)[0]);
    }
}
