namespace SharpVisor.Devices.Storage;

/// <summary>
/// A raw image file: guest byte N is file byte N. The virtual size is the file length; discard and
/// write-zeroes write zeros (the file keeps its allocation); flush is fsync.
/// </summary>
public sealed class RawDiskImage : IDiskImage
{
    const int ZeroChunk = 128 * 1024;
    static readonly byte[] Zeros = new byte[ZeroChunk];

    readonly FileStream _file;

    public RawDiskImage(FileStream file, bool readOnly)
    {
        _file = file;
        ReadOnly = readOnly || !file.CanWrite;
        Length = file.Length;
    }

    public long Length { get; }
    public bool ReadOnly { get; }

    void Check(long offset, long length)
    {
        if (offset < 0 || length < 0 || offset > Length || length > Length - offset)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), $"[{offset}, +{length}) is outside the {Length}-byte image");
        }
    }

    void CheckWritable()
    {
        if (ReadOnly)
        {
            throw new InvalidOperationException("write to a read-only image");
        }
    }

    public void Read(long offset, Span<byte> buffer)
    {
        Check(offset, buffer.Length);
        while (!buffer.IsEmpty)
        {
            int got = RandomAccess.Read(_file.SafeFileHandle, buffer, offset);
            if (got == 0)
            {
                buffer.Clear(); // the file shrank under us: what is gone reads as zeros
                return;
            }
            buffer = buffer[got..];
            offset += got;
        }
    }

    public void Write(long offset, ReadOnlySpan<byte> data)
    {
        CheckWritable();
        Check(offset, data.Length);
        RandomAccess.Write(_file.SafeFileHandle, data, offset);
    }

    public void Flush()
    {
        if (!ReadOnly)
        {
            _file.Flush(flushToDisk: true);
        }
    }

    public void Discard(long offset, long length) => WriteZeroes(offset, length, mayUnmap: true);

    public void WriteZeroes(long offset, long length, bool mayUnmap)
    {
        CheckWritable();
        Check(offset, length);
        for (long done = 0; done < length;)
        {
            int n = (int)Math.Min(ZeroChunk, length - done);
            RandomAccess.Write(_file.SafeFileHandle, Zeros.AsSpan(0, n), offset + done);
            done += n;
        }
    }

    public void Dispose()
    {
        ImageLock.Release(_file.SafeFileHandle);
        _file.Dispose();
    }
}
