using SharpVisor.Core;

namespace SharpVisor.Devices.Storage;

/// <summary>
/// A virtual disk as a block device sees it: a byte-addressed image of <see cref="Length"/> bytes.
/// Host failures and image corruption found during an access are <see cref="IOException"/>s (the
/// device turns them into an I/O error status); passing a range outside the image or writing to a
/// read-only image is a caller bug (<see cref="ArgumentOutOfRangeException"/> /
/// <see cref="InvalidOperationException"/>).
/// </summary>
public interface IDiskImage : IDisposable
{
    /// <summary>Virtual size in bytes.</summary>
    long Length { get; }

    bool ReadOnly { get; }

    void Read(long offset, Span<byte> buffer);

    void Write(long offset, ReadOnlySpan<byte> data);

    /// <summary>Makes every completed write durable on the host (write back caches, then fsync).</summary>
    void Flush();

    /// <summary>The range's contents no longer matter; afterwards it reads as zeros (the image may free space).</summary>
    void Discard(long offset, long length);

    /// <summary>The range reads as zeros afterwards; <paramref name="mayUnmap"/> allows freeing its space.</summary>
    void WriteZeroes(long offset, long length, bool mayUnmap);

    /// <summary>The image's own event counters (shown with the device's under --stats).</summary>
    IEnumerable<Counter> Counters => [];
}

/// <summary>Disk image formats; <see cref="Auto"/> probes the file like QEMU does.</summary>
public enum DiskFormat
{
    Auto,
    Raw,
    Qcow2,
}

/// <summary>An image whose metadata is inconsistent: the guest gets an I/O error for the access.</summary>
public sealed class DiskImageCorruptException(string message) : IOException(message);

public static class DiskImage
{
    /// <summary>
    /// Opens <paramref name="path"/> as <paramref name="format"/>; <see cref="DiskFormat.Auto"/> picks qcow2
    /// when the file starts with the qcow2 magic and raw otherwise. With <paramref name="locking"/> the file
    /// gets QEMU-compatible locks (<see cref="ImageLock"/>) that it keeps while open. A missing file, an
    /// unreadable one, a corrupt or unsupported image, or one another process has open is a one-line
    /// <see cref="UserErrorException"/>.
    /// </summary>
    public static IDiskImage Open(string path, DiskFormat format = DiskFormat.Auto, bool readOnly = false, bool locking = true, Log? log = null)
    {
        log ??= new Log();
        FileStream file;
        try
        {
            file = new FileStream(path, FileMode.Open, readOnly ? FileAccess.Read : FileAccess.ReadWrite,
                FileShare.Read, bufferSize: 0);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            throw new UserErrorException($"cannot open disk image '{path}': {e.Message}");
        }
        var handle = file.SafeFileHandle;
        try
        {
            if (format == DiskFormat.Auto)
            {
                format = Qcow2Image.HasMagic(handle) ? DiskFormat.Qcow2 : DiskFormat.Raw;
            }
            if (locking)
            {
                ImageLock.Acquire(handle, path, readOnly, format == DiskFormat.Qcow2, log);
            }
            return format == DiskFormat.Qcow2 ? Qcow2Image.Open(file, path, readOnly, log) : new RawDiskImage(file, readOnly);
        }
        catch (IOException e)
        {
            ImageLock.Release(handle);
            file.Dispose();
            throw new UserErrorException($"cannot read disk image '{path}': {e.Message}");
        }
        catch
        {
            ImageLock.Release(handle);
            file.Dispose();
            throw;
        }
    }
}
