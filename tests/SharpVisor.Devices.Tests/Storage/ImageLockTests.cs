using System.Diagnostics;
using SharpVisor.Core;
using SharpVisor.Devices.Storage;

namespace SharpVisor.Devices.Tests.Storage;

/// <summary>
/// Image locking (issue 16 defect 10): SharpVisor takes the OFD byte-range locks QEMU takes, so two
/// SharpVisor processes, or SharpVisor and QEMU, never write one image at once. OFD locks belong to an
/// open file description, so two opens in this one process conflict just as two processes do.
/// </summary>
public sealed class ImageLockTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("sv-lock-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    string MakeImage(string format)
    {
        string path = Path.Combine(_dir, $"disk.{format}");
        QemuImg.Run("qemu-img", "create", "-q", "-f", format, path, "1M");
        return path;
    }

    static string Refusal(string path, bool readOnly)
    {
        var e = Assert.Throws<UserErrorException>(() => DiskImage.Open(path, DiskFormat.Auto, readOnly).Dispose());
        Assert.Contains("is locked by another process", e.Message);
        Assert.Contains("locking=off", e.Message);
        Assert.DoesNotContain('\n', e.Message);
        return e.Message;
    }

    [Theory]
    [InlineData("qcow2")]
    [InlineData("raw")]
    public void A_writer_excludes_every_other_open_until_it_closes(string format)
    {
        string path = MakeImage(format);
        using (var writer = DiskImage.Open(path))
        {
            Refusal(path, readOnly: false);
            Refusal(path, readOnly: true); // a reader needs the image unchanging, as QEMU's guest devices do
            writer.Write(0, new byte[512]); // the refusals left the writer's locks alone
        }
        using var again = DiskImage.Open(path); // closing the file released the locks
    }

    [Theory]
    [InlineData("qcow2")]
    [InlineData("raw")]
    public void Readers_share_an_image_and_exclude_a_writer(string format)
    {
        string path = MakeImage(format);
        using var first = DiskImage.Open(path, readOnly: true);
        using var second = DiskImage.Open(path, readOnly: true);
        Refusal(path, readOnly: false);
    }

    [Fact]
    public async Task A_closed_image_opens_again_at_once_while_the_process_starts_programs()
    {
        // A child being forked holds a copy of every descriptor until its exec: the locks must be dropped
        // explicitly at close, not left to the last descriptor's close (which then comes too late).
        string path = MakeImage("qcow2");
        using var stop = new CancellationTokenSource();
        var spawner = Task.Run(() =>
        {
            while (!stop.IsCancellationRequested)
            {
                using var p = Process.Start(new ProcessStartInfo("true") { RedirectStandardOutput = true })!;
                p.WaitForExit();
            }
        });
        try
        {
            for (int i = 0; i < 500; i++)
            {
                DiskImage.Open(path).Dispose();
            }
        }
        finally
        {
            stop.Cancel();
            await spawner;
        }
    }

    [Fact]
    public void Locking_off_opens_a_locked_image()
    {
        string path = MakeImage("qcow2");
        using var writer = DiskImage.Open(path);
        using var other = DiskImage.Open(path, DiskFormat.Auto, readOnly: true, locking: false);
        Assert.Equal(1 << 20, other.Length);
    }

    [Theory]
    [InlineData("qcow2")]
    [InlineData("raw")]
    public void Qemu_cannot_write_an_image_sharpvisor_has_open(string format)
    {
        string path = MakeImage(format);
        using (var d = DiskImage.Open(path))
        {
            var e = Assert.Throws<InvalidOperationException>(() => QemuImg.Run("qemu-io", "-f", format, "-c", "write -P 0x11 0 4k", path));
            Assert.Contains("Failed to get \"write\" lock", e.Message);
            if (format == "qcow2")
            {
                // qemu-img's read-only open of a qcow2 file does not share writing either; -U (force share) does.
                e = Assert.Throws<InvalidOperationException>(() => QemuImg.Run("qemu-img", "info", path));
                Assert.Contains("Failed to get shared \"write\" lock", e.Message);
                QemuImg.Run("qemu-img", "info", "-U", path);
            }
        }
        QemuImg.Run("qemu-io", "-f", format, "-c", "write -P 0x11 0 4k", path); // free again once closed
    }

    [Theory]
    [InlineData("qcow2")]
    [InlineData("raw")]
    public async Task Sharpvisor_refuses_an_image_qemu_has_open(string format)
    {
        string path = MakeImage(format);
        var psi = new ProcessStartInfo("qemu-io")
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (var a in new[] { "-f", format, path })
        {
            psi.ArgumentList.Add(a);
        }
        using var qemu = Process.Start(psi)!;
        try
        {
            // Once qemu-io answers a read, it has the image open (and locked).
            qemu.StandardInput.WriteLine("read 0 512");
            qemu.StandardInput.Flush();
            string? answer = await qemu.StandardOutput.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(30));
            Assert.Contains("read 512/512 bytes", answer);

            string m = Refusal(path, readOnly: false);
            Assert.Contains(path, m);
            Refusal(path, readOnly: true);
        }
        finally
        {
            qemu.StandardInput.WriteLine("quit");
            qemu.StandardInput.Close();
            if (!qemu.WaitForExit(30_000))
            {
                qemu.Kill();
            }
        }
        using var d = DiskImage.Open(path);
    }
}
