using SharpVisor.Devices.Storage;

namespace SharpVisor.Devices.Tests.Storage;

/// <summary>
/// The VMM may die between any two writes to the image file. Cutting a run of guest operations after
/// every possible number of file writes must leave an image `qemu-img check` finds free of corruption
/// (leaked clusters are allowed, as with QEMU), whose contents outside the interrupted request are the
/// contents of the completed requests.
/// </summary>
public sealed class Qcow2CrashTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("sv-qcow2-crash-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    const int Size = 1 << 20;

    /// <summary>(kind, offset, length): 0 write, 1 discard, 2 write-zeroes.</summary>
    static readonly (int Kind, int Offset, int Length)[] Ops =
    [
        (0, 0, 40_000), (0, 700_000, 9000), (1, 4096, 8192), (0, 3000, 20_000), (2, 500_000, 70_000),
        (0, 900_000, 100_000), (1, 0, 65536), (0, 10, 100_000), (2, 1024, 5000),
    ];

    static void Apply(IDiskImage d, (int Kind, int Offset, int Length) op, int seed)
    {
        switch (op.Kind)
        {
            case 0:
                d.Write(op.Offset, Data(op, seed));
                break;
            case 1:
                d.Discard(op.Offset, op.Length);
                break;
            default:
                d.WriteZeroes(op.Offset, op.Length, mayUnmap: true);
                break;
        }
    }

    static byte[] Data((int Kind, int Offset, int Length) op, int seed)
    {
        var b = new byte[op.Length];
        new Random(seed).NextBytes(b);
        return b;
    }

    /// <summary>Runs the operations with a crash after <paramref name="writes"/> file writes; returns whether it crashed.</summary>
    bool RunUntilCrash(string path, int writes, byte[] model, out int interrupted)
    {
        interrupted = -1;
        using var d = (Qcow2Image)DiskImage.Open(path);
        d.WritesUntilCrash = writes;
        for (int i = 0; i < Ops.Length; i++)
        {
            try
            {
                Apply(d, Ops[i], i);
            }
            catch (SimulatedCrashException)
            {
                interrupted = i;
                return true;
            }
            if (Ops[i].Kind == 0)
            {
                Data(Ops[i], i).CopyTo(model, Ops[i].Offset);
            }
            else
            {
                Array.Clear(model, Ops[i].Offset, Ops[i].Length);
            }
        }
        return false;
    }

    [Theory]
    [InlineData("compat=1.1,cluster_size=4096", 0)]
    [InlineData("compat=0.10,cluster_size=8192", 0)]
    [InlineData("compat=1.1,cluster_size=65536,refcount_bits=8", 0)]
    [InlineData("own", 6)]
    public void Dying_between_any_two_writes_leaves_no_corruption(string options, int refcountOrder)
    {
        string pristine = Path.Combine(_dir, "pristine.qcow2");
        if (options == "own")
        {
            // 512-byte clusters: with 64-bit refcounts the one-cluster refcount table covers 2 MiB of file,
            // with 2-bit ones 16 MiB. Fill the image to just short of that so that the run grows the table.
            long coverage = 64L * (4096 >> refcountOrder) * 512;
            Qcow2Image.Create(pristine, Size + coverage, 9, 3, refcountOrder);
            using var fill = DiskImage.Open(pristine);
            var chunk = new byte[64 * 1024];
            for (long at = Size; at + chunk.Length < Size + coverage - 80 * 1024; at += chunk.Length)
            {
                chunk[0]++;
                fill.Write(at, chunk);
            }
        }
        else
        {
            QemuImg.Create(pristine, Size, options);
        }
        long refTableBefore = RefTableOffset(pristine);

        // How many writes the whole run makes (and that it grows the refcount table where intended).
        string probe = Path.Combine(_dir, "probe.qcow2");
        File.Copy(pristine, probe);
        int total, growth;
        using (var d = (Qcow2Image)DiskImage.Open(probe))
        {
            for (int i = 0; i < Ops.Length; i++)
            {
                Apply(d, Ops[i], i);
            }
            total = d.HostWrites;
            growth = d.GrowthStartedAtWrite;
        }
        Assert.True(total > 20, $"only {total} writes");
        Assert.Equal(options == "own", RefTableOffset(probe) != refTableBefore);
        Assert.Equal(options == "own", growth >= 0);

        // Every cut point through the independent checker (for the big image: every one around the
        // refcount table's growth, every 400th elsewhere); every 16th also through qemu-img.
        var model = new byte[Size];
        string path = Path.Combine(_dir, "cut.qcow2");
        for (int cut = 0; cut < total; cut++)
        {
            if (growth >= 0 && (cut < growth - 10 || cut > growth + 40) && cut % 400 != 0)
            {
                continue;
            }
            File.Copy(pristine, path, overwrite: true);
            Array.Clear(model);
            Assert.True(RunUntilCrash(path, cut, model, out int interrupted));
            var (corruptions, _) = Qcow2Checker.Check(path);
            Assert.True(corruptions.Count == 0, $"cut after {cut} writes (in op {interrupted}): {string.Join("; ", corruptions.Take(5))}");
            var (_, offset, length) = Ops[interrupted];
            var actual = new byte[Size];
            using (var again = DiskImage.Open(path)) // our own code opens the leaky image and keeps working
            {
                again.Read(0, actual);
                again.Write(offset, new byte[Math.Min(length, 4096)]);
            }
            Assert.True(actual.AsSpan(0, offset).SequenceEqual(model.AsSpan(0, offset))
                && actual.AsSpan(offset + length).SequenceEqual(model.AsSpan(offset + length)),
                $"cut after {cut} writes (in op {interrupted}): data outside the interrupted request changed");
            if (cut % 16 == 0 || cut == total - 1)
            {
                QemuImg.AssertConsistent(path, leaksAllowed: true);
            }
        }
    }

    static long RefTableOffset(string path)
    {
        var header = new byte[56];
        using (var f = File.OpenRead(path))
        {
            f.ReadExactly(header);
        }
        return (long)System.Buffers.Binary.BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(48));
    }
}
