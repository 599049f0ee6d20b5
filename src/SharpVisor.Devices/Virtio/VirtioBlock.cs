using System.Buffers.Binary;
using System.Text;
using SharpVisor.Core;
using SharpVisor.Devices.Storage;

namespace SharpVisor.Devices.Virtio;

/// <summary>
/// virtio-blk (virtio 1.2, 5.2) on an <see cref="IDiskImage"/> (raw or qcow2): read, write, flush
/// (the image writes back and fsyncs), GET_ID, DISCARD and WRITE_ZEROES, optional read-only. Capacity
/// is the image's virtual size in 512-byte sectors (a partial last sector is not visible to the guest).
/// Host I/O errors and image corruption found during a request give the guest VIRTIO_BLK_S_IOERR.
/// </summary>
public sealed class VirtioBlock : VirtioDevice, IDisposable
{
    // 5.2.3 feature bits.
    public const int FeatureSizeMax = 1;
    public const int FeatureSegMax = 2;
    public const int FeatureReadOnly = 5;
    public const int FeatureBlockSize = 6;
    public const int FeatureFlush = 9;
    public const int FeatureDiscard = 13;
    public const int FeatureWriteZeroes = 14;

    // 5.2.6 request types and status values.
    public const uint RequestIn = 0;
    public const uint RequestOut = 1;
    public const uint RequestFlush = 4;
    public const uint RequestGetId = 8;
    public const uint RequestDiscard = 11;
    public const uint RequestWriteZeroes = 13;
    public const byte StatusOk = 0;
    public const byte StatusIoError = 1;
    public const byte StatusUnsupported = 2;

    public const int SectorSize = 512;
    public const int IdLength = 20;
    public const ushort QueueSize = 256;
    /// <summary>Largest single buffer (size_max) and the longest chain's data buffers (seg_max).</summary>
    public const uint SizeMax = 1 << 20;
    public const uint SegMax = QueueSize - 2;
    /// <summary>Per-segment limit of DISCARD / WRITE_ZEROES, which bounds the zeros written per request.</summary>
    public const uint MaxZeroSectors = 1 << 16;
    const int HeaderLength = 16;
    const int RangeLength = 16;

    readonly IDiskImage _disk;
    readonly byte[] _scratch = new byte[128 * 1024];
    readonly byte[] _id = new byte[IdLength];

    public readonly Counter IoErrors = new("virtio.blk.io_errors");

    /// <summary>Opens <paramref name="path"/> (format probed); a missing, unopenable or bad image is a <see cref="UserErrorException"/>.</summary>
    public VirtioBlock(string path, bool readOnly = false, string? serial = null)
        : this(DiskImage.Open(path, DiskFormat.Auto, readOnly), serial ?? Path.GetFileName(path))
    {
    }

    /// <summary>A disk on <paramref name="disk"/>, which the device owns (disposes) from now on.</summary>
    public VirtioBlock(IDiskImage disk, string serial)
        : base("blk", VirtioDeviceType.Block, 0x01_00_00, 1, QueueSize, Features(disk.ReadOnly), 0x3C)
    {
        _disk = disk;
        ReadOnly = disk.ReadOnly;
        CapacitySectors = (ulong)disk.Length / SectorSize;
        string id = serial;
        Encoding.ASCII.GetBytes(id.AsSpan(0, Math.Min(IdLength, id.Length)), _id);

        // 5.2.4 struct virtio_blk_config.
        var c = DeviceConfig.AsSpan();
        BinaryPrimitives.WriteUInt64LittleEndian(c[0x00..], CapacitySectors);
        BinaryPrimitives.WriteUInt32LittleEndian(c[0x08..], SizeMax);
        BinaryPrimitives.WriteUInt32LittleEndian(c[0x0C..], SegMax);
        BinaryPrimitives.WriteUInt32LittleEndian(c[0x14..], SectorSize);          // blk_size
        BinaryPrimitives.WriteUInt32LittleEndian(c[0x24..], MaxZeroSectors);      // max_discard_sectors
        BinaryPrimitives.WriteUInt32LittleEndian(c[0x28..], 1);                   // max_discard_seg
        BinaryPrimitives.WriteUInt32LittleEndian(c[0x2C..], 1);                   // discard_sector_alignment
        BinaryPrimitives.WriteUInt32LittleEndian(c[0x30..], MaxZeroSectors);      // max_write_zeroes_sectors
        BinaryPrimitives.WriteUInt32LittleEndian(c[0x34..], 1);                   // max_write_zeroes_seg
        c[0x38] = 0;                                                              // write_zeroes_may_unmap
    }

    static ulong Features(bool readOnly) =>
        1UL << FeatureSizeMax | 1UL << FeatureSegMax | 1UL << FeatureBlockSize | 1UL << FeatureFlush
        | (readOnly ? 1UL << FeatureReadOnly : 1UL << FeatureDiscard | 1UL << FeatureWriteZeroes);

    public bool ReadOnly { get; }
    public ulong CapacitySectors { get; }

    public override IEnumerable<Counter> Counters => [.. base.Counters, IoErrors, .. _disk.Counters];

    protected internal override bool HandleRequest(int queue, DescriptorChain chain)
    {
        // 5.2.6: header (type, reserved, sector) readable first; the status byte is the last
        // writable byte; data lies in between.
        Span<byte> header = stackalloc byte[HeaderLength];
        if (chain.WritableLength == 0 || !chain.Read(0, header))
        {
            return false;
        }
        uint type = BinaryPrimitives.ReadUInt32LittleEndian(header);
        ulong sector = BinaryPrimitives.ReadUInt64LittleEndian(header[8..]);
        uint statusOffset = chain.WritableLength - 1;
        byte status;
        try
        {
            status = type switch
            {
                RequestIn => Read(chain, sector, statusOffset),
                RequestOut => Write(chain, sector),
                RequestFlush => Flush(),
                RequestGetId => GetId(chain, statusOffset),
                RequestDiscard or RequestWriteZeroes => ReadOnly ? StatusIoError : Zero(chain, type),
                _ => StatusUnsupported,
            };
        }
        catch (IOException e)
        {
            IoErrors.Increment();
            Log.Once($"virtio.blk.{Location}.io", "virtio-blk", $"{Location}: host I/O error: {e.Message}");
            status = StatusIoError;
        }
        if (chain.Faulted)
        {
            return true; // the caller breaks the queue
        }
        Span<byte> s = [status];
        return chain.Write(statusOffset, s);
    }

    bool InRange(ulong sector, ulong bytes, out long offset)
    {
        offset = 0;
        if (bytes % SectorSize != 0 || sector > CapacitySectors || bytes / SectorSize > CapacitySectors - sector)
        {
            return false;
        }
        offset = (long)(sector * SectorSize);
        return true;
    }

    byte Read(DescriptorChain chain, ulong sector, uint length)
    {
        if (!InRange(sector, length, out long position))
        {
            return StatusIoError;
        }
        for (uint done = 0; done < length;)
        {
            int n = (int)Math.Min((uint)_scratch.Length, length - done);
            var buffer = _scratch.AsSpan(0, n);
            _disk.Read(position + done, buffer);
            if (!chain.Write(done, buffer))
            {
                return StatusIoError;
            }
            done += (uint)n;
        }
        return StatusOk;
    }

    byte Write(DescriptorChain chain, ulong sector)
    {
        uint length = chain.ReadableLength - HeaderLength;
        if (ReadOnly || !InRange(sector, length, out long position))
        {
            return StatusIoError;
        }
        for (uint done = 0; done < length;)
        {
            int n = (int)Math.Min((uint)_scratch.Length, length - done);
            var buffer = _scratch.AsSpan(0, n);
            if (!chain.Read(HeaderLength + done, buffer))
            {
                return StatusIoError;
            }
            _disk.Write(position + done, buffer);
            done += (uint)n;
        }
        return StatusOk;
    }

    byte Flush()
    {
        if (!ReadOnly)
        {
            _disk.Flush();
        }
        return StatusOk;
    }

    byte GetId(DescriptorChain chain, uint length)
    {
        // 5.2.6.4: up to 20 bytes, NUL-padded, not NUL-terminated when 20 long.
        int n = (int)Math.Min(length, IdLength);
        return chain.Write(0, _id.AsSpan(0, n)) ? StatusOk : StatusIoError;
    }

    byte Zero(DescriptorChain chain, uint type)
    {
        // 5.2.6: struct virtio_blk_discard_write_zeroes { le64 sector; le32 num_sectors; le32 flags; }.
        uint data = chain.ReadableLength - HeaderLength;
        if (data == 0 || data % RangeLength != 0)
        {
            return StatusUnsupported;
        }
        if (data / RangeLength > 1)
        {
            return StatusUnsupported; // max_discard_seg = max_write_zeroes_seg = 1
        }
        Span<byte> range = stackalloc byte[RangeLength];
        if (!chain.Read(HeaderLength, range))
        {
            return StatusIoError;
        }
        ulong sector = BinaryPrimitives.ReadUInt64LittleEndian(range);
        uint count = BinaryPrimitives.ReadUInt32LittleEndian(range[8..]);
        uint flags = BinaryPrimitives.ReadUInt32LittleEndian(range[12..]);
        // 5.2.6.2: unmap (bit 0) is only meaningful for WRITE_ZEROES; other bits are reserved.
        if ((flags & ~1u) != 0 || (type == RequestDiscard && flags != 0))
        {
            return StatusUnsupported;
        }
        if (count > MaxZeroSectors || !InRange(sector, (ulong)count * SectorSize, out long position))
        {
            return StatusIoError;
        }
        long length = (long)count * SectorSize;
        if (type == RequestDiscard)
        {
            _disk.Discard(position, length);
        }
        else
        {
            _disk.WriteZeroes(position, length, mayUnmap: (flags & 1) != 0);
        }
        return StatusOk;
    }

    public void Dispose()
    {
        lock (Gate)
        {
            _disk.Dispose();
        }
    }
}
