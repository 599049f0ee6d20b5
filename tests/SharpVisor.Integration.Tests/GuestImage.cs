using System.Diagnostics;
using System.Text;

namespace SharpVisor.Integration.Tests;

/// <summary>
/// The default guest (Debian kernel + busybox initramfs) as tools/guest-image.sh builds it, plus
/// a way to add a test layer: Linux unpacks concatenated cpio archives in order, so appending an
/// uncompressed archive with /test/run makes the guest's init run that script.
/// </summary>
public sealed class GuestImage
{
    public required string Kernel { get; init; }
    public required string Initrd { get; init; }
    /// <summary>The guest's busybox binary, to run the same applets on the host.</summary>
    public required string Busybox { get; init; }

    static readonly Lazy<GuestImage> s_default = new(Prepare);
    public static GuestImage Default => s_default.Value;

    static GuestImage Prepare()
    {
        string root = RepoRoot();
        var psi = new ProcessStartInfo(Path.Combine(root, "tools", "guest-image.sh")) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var p = Process.Start(psi)!;
        string stdout = p.StandardOutput.ReadToEnd();
        string stderr = p.StandardError.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0)
        {
            throw new InvalidOperationException($"tools/guest-image.sh failed ({p.ExitCode}): {stderr}");
        }
        var parts = stdout.Trim().Split('\n')[^1].Split(' ');
        return new GuestImage { Kernel = parts[0], Initrd = parts[1], Busybox = Path.Combine(Path.GetDirectoryName(parts[0])!, "busybox") };
    }

    public static string RepoRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "SharpVisor.slnx")))
        {
            dir = dir.Parent;
        }
        return dir?.FullName ?? throw new InvalidOperationException("cannot find the repository root");
    }

    /// <summary>
    /// Writes the default initramfs followed by a layer holding /test/run and, under /test, the
    /// <paramref name="programs"/> (name, executable bytes; see <see cref="GuestProgram"/>).
    /// </summary>
    public string WithTestScript(string script, params (string Name, byte[] Bytes)[] programs)
    {
        string path = Path.Combine(Path.GetTempPath(), $"sv-test-{Guid.NewGuid():N}.cpio");
        using var f = File.Create(path);
        using (var baseImage = File.OpenRead(Initrd))
        {
            baseImage.CopyTo(f);
        }
        // The gzip member must end on a 4-byte boundary before the next archive (initramfs rules).
        while (f.Length % 4 != 0)
        {
            f.WriteByte(0);
        }
        var cpio = new CpioWriter(f);
        cpio.Directory("test");
        cpio.File("test/run", Encoding.UTF8.GetBytes(script), mode: 0x1ED); // 0755
        foreach (var (name, bytes) in programs)
        {
            cpio.File($"test/{name}", bytes, mode: 0x1ED);
        }
        cpio.Trailer();
        return path;
    }
}

/// <summary>The "newc" cpio format the kernel's initramfs unpacker reads (Documentation/driver-api/early-userspace/buffer-format.rst).</summary>
public sealed class CpioWriter(Stream output)
{
    int _ino = 1000;

    public void Directory(string name) => Entry(name, 0x41ED, []);                // drwxr-xr-x
    public void File(string name, byte[] data, int mode = 0x1A4) => Entry(name, 0x8000 | mode, data);
    public void Trailer() => Entry("TRAILER!!!", 0, []);

    void Entry(string name, int mode, byte[] data)
    {
        byte[] nameBytes = Encoding.ASCII.GetBytes(name + "\0");
        var header = new StringBuilder("070701");
        foreach (long v in new long[] { _ino++, mode, 0, 0, 1, 0, data.Length, 0, 0, 0, 0, nameBytes.Length, 0 })
        {
            header.Append(v.ToString("X8"));
        }
        Write(Encoding.ASCII.GetBytes(header.ToString()));
        Write(nameBytes);
        Pad();
        Write(data);
        Pad();
    }

    void Write(byte[] b) => output.Write(b);

    void Pad()
    {
        while (output.Position % 4 != 0)
        {
            output.WriteByte(0);
        }
    }
}
