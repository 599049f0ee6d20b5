using System.Buffers.Binary;
using SharpVisor.Core;
using SharpVisor.Devices.Virtio;

namespace SharpVisor.Devices.Tests.Virtio;

public sealed class VirtioBlockTests : IDisposable
{
    const int Sectors = 64;
    readonly string _path = Path.Combine(Path.GetTempPath(), $"sv-blk-{Guid.NewGuid():N}.img");
    readonly byte[] _initial = new byte[Sectors * 512];

    public VirtioBlockTests()
    {
        new Random(7).NextBytes(_initial);
        File.WriteAllBytes(_path, _initial);
    }

    public void Dispose() => File.Delete(_path);

    VirtioTestDriver Start(bool readOnly = false)
    {
        var d = new VirtioTestDriver(new VirtioBlock(_path, readOnly, serial: "SV-SERIAL-1"));
        d.Start();
        return d;
    }

    /// <summary>Sends one request the way virtio_blk does (header, data, status) and returns (status, used.len).</summary>
    static (byte Status, uint UsedLength) Request(VirtioTestDriver d, uint type, ulong sector, ulong data, uint dataLength, bool dataWritable, bool indirect = false)
    {
        var header = new byte[16];
        BinaryPrimitives.WriteUInt32LittleEndian(header, type);
        BinaryPrimitives.WriteUInt64LittleEndian(header.AsSpan(8), sector);
        ulong h = d.AllocateData(header);
        ulong status = d.AllocateData([0xEE]);
        var q = d.Queues[0];
        var buffers = dataLength == 0
            ? new[] { (h, 16u, false), (status, 1u, true) }
            : new[] { (h, 16u, false), (data, dataLength, dataWritable), (status, 1u, true) };
        ushort head = indirect ? q.PostIndirect(buffers) : q.Post(buffers);
        q.Notify();
        var used = q.TakeUsed();
        Assert.NotNull(used);
        Assert.Equal(head, used.Value.Id);
        return (d.ReadRam(status, 1)[0], used.Value.Length);
    }

    byte[] FileBytes()
    {
        using var f = new FileStream(_path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        var b = new byte[f.Length];
        f.ReadExactly(b);
        return b;
    }

    [Fact]
    public void Config_reports_capacity_blk_size_and_limits()
    {
        using var d = Start();
        Assert.Equal((ulong)Sectors, d.DeviceCfg(0, 8));
        Assert.Equal(512UL, d.DeviceCfg(0x14, 4));
        Assert.Equal((ulong)VirtioBlock.SegMax, d.DeviceCfg(0x0C, 4));
        Assert.Equal((ulong)VirtioBlock.SizeMax, d.DeviceCfg(0x08, 4));
        Assert.Equal(1UL, d.DeviceCfg(0x28, 4)); // max_discard_seg
        ulong f = d.Transport.NegotiatedFeatures;
        Assert.NotEqual(0UL, f & 1UL << VirtioBlock.FeatureFlush);
        Assert.NotEqual(0UL, f & 1UL << VirtioBlock.FeatureDiscard);
        Assert.Equal(0UL, f & 1UL << VirtioBlock.FeatureReadOnly);
    }

    [Fact]
    public void Read_returns_file_contents()
    {
        using var d = Start();
        ulong buf = d.Allocate(1024);
        var (status, len) = Request(d, VirtioBlock.RequestIn, 3, buf, 1024, true);
        Assert.Equal(VirtioBlock.StatusOk, status);
        Assert.Equal(1025u, len); // data + status byte
        Assert.Equal(_initial.AsSpan(3 * 512, 1024).ToArray(), d.ReadRam(buf, 1024));
    }

    [Fact]
    public void Write_then_flush_lands_in_the_file_byte_for_byte()
    {
        using var d = Start();
        var data = new byte[1536];
        new Random(9).NextBytes(data);
        ulong buf = d.AllocateData(data);
        var (status, len) = Request(d, VirtioBlock.RequestOut, 10, buf, 1536, false, indirect: true);
        Assert.Equal(VirtioBlock.StatusOk, status);
        Assert.Equal(1u, len);
        Assert.Equal(VirtioBlock.StatusOk, Request(d, VirtioBlock.RequestFlush, 0, 0, 0, false).Status);
        var expected = (byte[])_initial.Clone();
        data.CopyTo(expected, 10 * 512);
        Assert.Equal(expected, FileBytes());
    }

    [Fact]
    public void Discard_and_write_zeroes_zero_the_range()
    {
        using var d = Start();
        var range = new byte[16];
        BinaryPrimitives.WriteUInt64LittleEndian(range, 4);
        BinaryPrimitives.WriteUInt32LittleEndian(range.AsSpan(8), 2);
        Assert.Equal(VirtioBlock.StatusOk, Request(d, VirtioBlock.RequestDiscard, 0, d.AllocateData(range), 16, false).Status);
        BinaryPrimitives.WriteUInt64LittleEndian(range, 20);
        BinaryPrimitives.WriteUInt32LittleEndian(range.AsSpan(8), 1);
        BinaryPrimitives.WriteUInt32LittleEndian(range.AsSpan(12), 1); // unmap allowed for write zeroes
        Assert.Equal(VirtioBlock.StatusOk, Request(d, VirtioBlock.RequestWriteZeroes, 0, d.AllocateData(range), 16, false).Status);
        var expected = (byte[])_initial.Clone();
        Array.Clear(expected, 4 * 512, 1024);
        Array.Clear(expected, 20 * 512, 512);
        Assert.Equal(expected, FileBytes());

        // Unmap on DISCARD and reserved flags are unsupported; nothing changes.
        BinaryPrimitives.WriteUInt64LittleEndian(range, 30);
        Assert.Equal(VirtioBlock.StatusUnsupported, Request(d, VirtioBlock.RequestDiscard, 0, d.AllocateData(range), 16, false).Status);
        Assert.Equal(expected, FileBytes());
    }

    [Fact]
    public void Get_id_returns_the_serial()
    {
        using var d = Start();
        ulong buf = d.Allocate(20);
        var (status, len) = Request(d, VirtioBlock.RequestGetId, 0, buf, 20, true);
        Assert.Equal(VirtioBlock.StatusOk, status);
        Assert.Equal(21u, len);
        Assert.Equal("SV-SERIAL-1"u8.ToArray().Concat(new byte[9]).ToArray(), d.ReadRam(buf, 20));
    }

    [Fact]
    public void Read_only_disk_rejects_writes_and_offers_ro()
    {
        using var d = Start(readOnly: true);
        Assert.NotEqual(0UL, d.Transport.NegotiatedFeatures & 1UL << VirtioBlock.FeatureReadOnly);
        ulong buf = d.AllocateData(new byte[512]);
        Assert.Equal(VirtioBlock.StatusIoError, Request(d, VirtioBlock.RequestOut, 0, buf, 512, false).Status);
        Assert.Equal(_initial, FileBytes());
        Assert.Equal(VirtioBlock.StatusOk, Request(d, VirtioBlock.RequestIn, 0, d.Allocate(512), 512, true).Status);
    }

    [Fact]
    public void Requests_beyond_capacity_fail_with_ioerr_and_touch_nothing()
    {
        using var d = Start();
        ulong buf = d.Allocate(1024);
        Assert.Equal(VirtioBlock.StatusIoError, Request(d, VirtioBlock.RequestIn, Sectors - 1, buf, 1024, true).Status);
        Assert.Equal(VirtioBlock.StatusIoError, Request(d, VirtioBlock.RequestIn, ulong.MaxValue, buf, 512, true).Status);
        ulong w = d.AllocateData(new byte[1024]);
        Assert.Equal(VirtioBlock.StatusIoError, Request(d, VirtioBlock.RequestOut, Sectors - 1, w, 1024, false).Status);
        Assert.Equal(_initial, FileBytes());
        Assert.Equal(VirtioBlock.StatusUnsupported, Request(d, 99, 0, 0, 0, false).Status);
    }

    [Fact]
    public void Missing_image_is_a_user_error()
    {
        var e = Assert.Throws<UserErrorException>(() => new VirtioBlock(_path + ".missing"));
        Assert.Contains(".missing", e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void Data_buffer_blocked_by_the_iommu_needs_reset_and_leaves_the_file_alone()
    {
        var dma = new CheckingDmaProvider();
        using var d = new VirtioTestDriver(new VirtioBlock(_path), dma);
        d.Start();
        ulong data = d.AllocateData(new byte[512]);
        dma.Blocked = a => a >= data && a < data + 512;
        var header = new byte[16];
        BinaryPrimitives.WriteUInt32LittleEndian(header, VirtioBlock.RequestOut);
        var q = d.Queues[0];
        q.Post((d.AllocateData(header), 16, false), (data, 512, false), (d.Allocate(1), 1, true));
        q.Notify();
        Assert.NotEqual(0, d.Status & VirtioPci.StatusNeedsReset);
        Assert.Equal(0, q.UsedIndex);
        Assert.Equal(_initial, FileBytes());
    }

    [Fact]
    public void Steady_state_requests_allocate_nothing_on_the_heap()
    {
        using var d = Start();
        d.CommonWrite(VirtioPci.QueueSelect, 2, 0);
        d.CommonWrite(VirtioPci.QueueMsixVector, 2, VirtioPci.NoVector); // no recording MSI sink list growth
        ulong buf = d.Allocate(4096);
        var q = d.Queues[0];
        var header = new byte[16];
        ulong h = d.AllocateData(header);
        ulong status = d.Allocate(1);
        for (int i = 0; i < 8; i++)
        {
            q.Post((h, 16, false), (buf, 4096, true), (status, 1, true));
            q.Notify();
        }
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 64; i++)
        {
            q.Notify(); // the same ring path as a guest kick, nothing new: walker + empty check
        }
        long afterEmpty = GC.GetAllocatedBytesForCurrentThread();
        Assert.Equal(before, afterEmpty);

        // Eight 4 KiB reads from the file in one kick: chain walk, file I/O, DMA, used ring.
        for (int i = 0; i < 8; i++)
        {
            q.Post((h, 16, false), (buf, 4096, true), (status, 1, true));
        }
        before = GC.GetAllocatedBytesForCurrentThread();
        q.Notify();
        long afterRequests = GC.GetAllocatedBytesForCurrentThread();
        Assert.Equal(16, q.UsedIndex);
        Assert.Equal(before, afterRequests);
    }
}
