using SharpVisor.Core;
using SharpVisor.Devices.Storage;

namespace SharpVisor.Fuzz;

/// <summary>
/// A qcow2 image file, opened as --disk opens it, then driven as a guest would drive it. The answers
/// IDiskImage documents are a one-line <see cref="UserErrorException"/> at open and an
/// <see cref="IOException"/> for an access (the guest's I/O error: corruption found, or the host refusing).
/// Beyond "no other exception", every write, discard and write-zeroes that succeeds must read back
/// as written (or as zeros) at once, and the image must open again afterwards or be refused with one line.
/// </summary>
sealed class Qcow2Target : FuzzTarget
{
    readonly string _directory;
    readonly string _path;

    public Qcow2Target()
    {
        // tmpfs when there is one: the image is written and opened once per input.
        string root = Directory.Exists("/dev/shm") ? "/dev/shm" : Path.GetTempPath();
        _directory = Path.Combine(root, $"sharpvisor-fuzz-{Environment.ProcessId}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(_directory);
        _path = Path.Combine(_directory, "image.qcow2");
    }

    public override FuzzOutcome Run(byte[] input)
    {
        File.WriteAllBytes(_path, input);
        IDiskImage disk;
        try
        {
            disk = DiskImage.Open(_path, DiskFormat.Qcow2, log: FuzzTarget.Quiet);
        }
        catch (UserErrorException e)
        {
            return Rejected(e);
        }
        string? ioError;
        using (disk)
        {
            ioError = Exercise(disk);
        }

        // What the VMM left behind must open again (or be refused with one line, e.g. marked corrupt).
        try
        {
            using var again = DiskImage.Open(_path, DiskFormat.Qcow2, readOnly: true, log: FuzzTarget.Quiet);
            var buffer = new byte[Math.Min(again.Length, 4096)];
            again.Read(0, buffer);
        }
        catch (UserErrorException e)
        {
            return Rejected(e);
        }
        catch (IOException e)
        {
            return Rejected(e);
        }
        return ioError is null ? FuzzOutcome.Ok : new FuzzOutcome(false, ioError);
    }

    /// <summary>A fixed sequence of guest accesses spread over the image; returns the first I/O error's message.</summary>
    static string? Exercise(IDiskImage disk)
    {
        long length = disk.Length;
        if (length == 0)
        {
            return null;
        }
        int cluster = disk is Qcow2Image q ? q.ClusterSize : 512;
        string? firstError = null;
        void Try(Action access)
        {
            try
            {
                access();
            }
            catch (IOException e)
            {
                Rejected(e);
                firstError ??= e.Message;
            }
        }

        // Reads: the start, the end, and one cluster at each eighth (different L1 and L2 entries).
        var buffer = new byte[(int)Math.Min(length, 64 * 1024)];
        Try(() => disk.Read(0, buffer));
        Try(() => disk.Read(length - buffer.Length, buffer));
        for (int i = 1; i < 8; i++)
        {
            long at = AlignDown(length / 8 * i, cluster);
            Try(() => disk.Read(at, buffer.AsSpan(0, (int)Math.Min(cluster, length - at))));
        }

        // Writes, each read back at once: part of a cluster (copy-on-write of what is there), whole
        // clusters, one in the middle, the tail.
        WriteAndCheck(disk, Math.Min(cluster / 4, length - 1), cluster / 2, 0x11, Try);
        WriteAndCheck(disk, Math.Min(cluster, length - 1), 2 * cluster, 0x22, Try);
        WriteAndCheck(disk, AlignDown(length / 2, cluster) + 100, cluster, 0x33, Try);
        WriteAndCheck(disk, length - Math.Min(length, 300), 300, 0x44, Try);

        // Discard and write-zeroes of whole and partial clusters must read back as zeros.
        ZeroAndCheck(disk, 0, cluster, z => disk.Discard(0, z.Length), Try);
        ZeroAndCheck(disk, cluster, 2 * cluster, z => disk.WriteZeroes(z.Offset, z.Length, mayUnmap: false), Try);
        ZeroAndCheck(disk, AlignDown(length / 2, cluster), cluster, z => disk.WriteZeroes(z.Offset, z.Length, mayUnmap: true), Try);
        ZeroAndCheck(disk, 10, cluster - 20, z => disk.Discard(z.Offset, z.Length), Try);
        Try(disk.Flush);
        return firstError;
    }

    static void WriteAndCheck(IDiskImage disk, long offset, int length, byte seed, Action<Action> @try)
    {
        length = (int)Math.Min(length, disk.Length - offset);
        if (length <= 0)
        {
            return;
        }
        var data = new byte[length];
        for (int i = 0; i < data.Length; i++)
        {
            data[i] = (byte)(seed + i * 13);
        }
        @try(() =>
        {
            disk.Write(offset, data);
            var back = new byte[length];
            disk.Read(offset, back);
            if (!back.AsSpan().SequenceEqual(data))
            {
                throw new FuzzOracleException($"{length} bytes written at {offset} read back differently");
            }
        });
    }

    static void ZeroAndCheck(IDiskImage disk, long offset, long length, Action<(long Offset, long Length)> zero, Action<Action> @try)
    {
        length = Math.Min(length, disk.Length - offset);
        if (length <= 0)
        {
            return;
        }
        @try(() =>
        {
            zero((offset, length));
            var back = new byte[length];
            disk.Read(offset, back);
            if (back.AsSpan().ContainsAnyExcept((byte)0))
            {
                throw new FuzzOracleException($"{length} bytes zeroed at {offset} do not read back as zeros");
            }
        });
    }

    static long AlignDown(long value, int alignment) => value & ~(long)(alignment - 1);

    public override void Dispose()
    {
        try
        {
            Directory.Delete(_directory, recursive: true);
        }
        catch (IOException)
        {
            // Best effort: a temp directory.
        }
    }
}
