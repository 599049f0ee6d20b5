using CsCheck;
using SharpVisor.Core;
using SharpVisor.Devices.Storage;

namespace SharpVisor.Devices.Tests.Storage;

/// <summary>
/// A qcow2 file is untrusted input. With random bytes of its metadata overwritten, opening either works
/// or is a one-line <see cref="UserErrorException"/>, and every access either works or is an
/// <see cref="IOException"/> (the guest's I/O error) — never another exception, never a hang.
/// </summary>
public sealed class Qcow2CorruptionPropertyTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("sv-qcow2-fuzz-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void Random_metadata_damage_gives_only_clean_errors()
    {
        const int clusterSize = 4096, size = 512 * 1024;
        string pristine = Path.Combine(_dir, "pristine.qcow2");
        Qcow2Image.Create(pristine, size, clusterBits: 12);
        using (var d = DiskImage.Open(pristine))
        {
            var data = new byte[size / 2];
            new Random(1).NextBytes(data);
            d.Write(clusterSize / 2, data);
            d.Discard(64 * 1024, 32 * 1024);
        }
        var image = File.ReadAllBytes(pristine);
        int metadataBytes = 6 * clusterSize; // header, refcount table and block, L1, the first L2 tables
        int run = 0;

        // Damage: (position, value) pairs; positions mostly in metadata, some anywhere in the file.
        var damage = Gen.Select(Gen.Int[0, metadataBytes - 1], Gen.Int[0, image.Length - 1], Gen.Bool, Gen.Byte).Array[1, 12];
        var ops = Gen.Select(Gen.Int[0, 3], Gen.Int[0, size - 1], Gen.Int[1, 3 * clusterSize]).Array[1, 10];
        Gen.Select(damage, ops).Sample((flips, accesses) =>
        {
            var bytes = (byte[])image.Clone();
            foreach (var (meta, anywhere, inMeta, value) in flips)
            {
                bytes[inMeta ? meta : anywhere] = value;
            }
            string path = Path.Combine(_dir, $"f{run++}.qcow2");
            File.WriteAllBytes(path, bytes);
            IDiskImage disk;
            try
            {
                disk = DiskImage.Open(path, DiskFormat.Qcow2);
            }
            catch (UserErrorException e)
            {
                Assert.DoesNotContain('\n', e.Message);
                File.Delete(path);
                return;
            }
            using (disk)
            {
                var buffer = new byte[3 * clusterSize];
                foreach (var (kind, offset, requested) in accesses)
                {
                    long at = Math.Min(offset, disk.Length);
                    int length = (int)Math.Min(requested, disk.Length - at);
                    try
                    {
                        switch (kind)
                        {
                            case 0:
                                disk.Read(at, buffer.AsSpan(0, length));
                                break;
                            case 1:
                                disk.Write(at, buffer.AsSpan(0, length));
                                break;
                            case 2:
                                disk.Discard(at, length);
                                break;
                            default:
                                disk.WriteZeroes(at, length, mayUnmap: false);
                                break;
                        }
                    }
                    catch (IOException)
                    {
                        // the guest gets VIRTIO_BLK_S_IOERR
                    }
                }
                disk.Flush();
            }
            File.Delete(path);
        }, iter: 400, threads: 1);
    }
}
