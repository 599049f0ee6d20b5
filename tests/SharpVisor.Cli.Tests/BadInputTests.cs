using System.Diagnostics;
using SharpVisor.Core;
using SharpVisor.Devices.Storage;
using SharpVisor.Machine;

namespace SharpVisor.Cli.Tests;

/// <summary>
/// Files and device lists a user can get wrong: each is refused with one line before anything is
/// opened or read, never a stack trace, a hang or an out-of-memory abort (issue 16 defect 4).
/// </summary>
public sealed class BadInputTests : IDisposable
{
    readonly TempFile _kernel = TestGuests.Write(TestGuests.PrintThenHalt("ok"));
    readonly TempFile _fifo = new();

    public BadInputTests() => MakeFifo(_fifo.Path);

    public void Dispose()
    {
        _kernel.Dispose();
        _fifo.Dispose();
    }

    static void MakeFifo(string path)
    {
        using var p = Process.Start(new ProcessStartInfo("mkfifo", [path]) { UseShellExecute = false })!;
        p.WaitForExit();
        Assert.Equal(0, p.ExitCode);
    }

    static string Refusal(MachineConfig config)
    {
        var e = Assert.Throws<UserErrorException>(config.Validate);
        Assert.DoesNotContain("\n", e.Message);
        return e.Message;
    }

    [Fact]
    public void NonRegularFilesAreRefusedByKind()
    {
        var ok = new MachineConfig { Kernel = _kernel.Path };
        Assert.Equal($"kernel '{_fifo.Path}' is a FIFO, not a regular file", Refusal(ok with { Kernel = _fifo.Path }));
        Assert.Equal($"initrd '{_fifo.Path}' is a FIFO, not a regular file", Refusal(ok with { Initrd = _fifo.Path }));
        Assert.Equal($"disk image '{_fifo.Path}' is a FIFO, not a regular file", Refusal(ok with { Disks = [new DiskSpec(_fifo.Path, ReadOnly: true)] }));
        Assert.Equal("kernel '/dev/zero' is a character device, not a regular file", Refusal(ok with { Kernel = "/dev/zero" }));
        Assert.Equal("initrd '/dev/zero' is a character device, not a regular file", Refusal(ok with { Initrd = "/dev/zero" }));
        string directory = Path.GetTempPath().TrimEnd('/');
        Assert.Equal($"kernel '{directory}' is a directory, not a file", Refusal(ok with { Kernel = directory }));
        Assert.Equal("file not found: /no/such/initrd", Refusal(ok with { Initrd = "/no/such/initrd" }));
    }

    /// <summary>A kernel or initrd is read whole into host memory and copied into guest RAM: it must fit there, and under the documented cap.</summary>
    [Fact]
    public void BootFilesLargerThanGuestRamOrTheCapAreRefused()
    {
        using var big = new TempFile();
        using (var f = File.Create(big.Path))
        {
            f.SetLength((512L << 20) + 1); // sparse: no disk space used
        }
        var ok = new MachineConfig { Kernel = _kernel.Path, MemoryMiB = 512 };
        Assert.Equal($"kernel '{big.Path}' is 536870913 bytes, more than the 512 MiB of guest RAM can hold", Refusal(ok with { Kernel = big.Path }));
        Assert.Equal($"initrd '{big.Path}' is 536870913 bytes, more than the 512 MiB of guest RAM can hold", Refusal(ok with { Initrd = big.Path }));
        ok.Validate();
        (ok with { Initrd = big.Path, MemoryMiB = 1024 }).Validate();
        using (var f = File.OpenWrite(big.Path))
        {
            f.SetLength(MachineConfig.MaxBootFileBytes + 1);
        }
        Assert.Equal($"initrd '{big.Path}' is 1073741825 bytes, more than the limit of 1024 MiB for kernel and initrd files",
            Refusal(ok with { Initrd = big.Path, MemoryMiB = 4096 }));
    }

    /// <summary>Every virtio device takes a PCI slot of bus 0 (4 to 30; 31 is the LPC bridge as on q35): 27 fit, 28 do not.</summary>
    [Fact]
    public void DevicesBeyondThePciSlotsAreRefused()
    {
        var disks = Enumerable.Range(0, 28).Select(_ => new DiskSpec(_kernel.Path, ReadOnly: true)).ToArray();
        var config = new MachineConfig { Kernel = _kernel.Path };
        (config with { Disks = disks[..27] }).Validate();
        Assert.Equal("too many devices: 28 disks need 28 PCI slots, at most 27 are available", Refusal(config with { Disks = disks }));
        Assert.Equal("too many devices: 25 disks, --rng, --console virtio and --net need 28 PCI slots, at most 27 are available",
            Refusal(config with { Disks = disks[..25], Rng = true, Console = ConsoleDevice.Virtio, Net = NetSpec.Parse("stream,listen=127.0.0.1:1") }));
    }

    /// <summary>The whole command: one line on stderr and exit status 1, quickly, for each of the inputs that crashed or hung it.</summary>
    [Theory]
    [InlineData("--disk", "FIFO")]
    [InlineData("--disk", "FIFO,readonly")]
    [InlineData("--kernel", "FIFO")]
    [InlineData("--initrd", "FIFO")]
    [InlineData("--kernel", "/dev/zero")]
    [InlineData("--initrd", "/dev/zero")]
    [InlineData("--disk", "28")]
    public void TheCommandRefusesWithOneLine(string option, string value)
    {
        var args = new List<string> { "run", "--kernel", _kernel.Path, "--timeout", "20" };
        var disks = new List<TempFile>();
        try
        {
            if (value == "28")
            {
                for (int i = 0; i < 28; i++)
                {
                    disks.Add(TestGuests.Write(new byte[512], ".img"));
                    args.AddRange(["--disk", disks[^1].Path + ",readonly"]);
                }
            }
            else
            {
                args.AddRange([option, value.Replace("FIFO", _fifo.Path, StringComparison.Ordinal)]);
            }
            var run = CliProcess.Run(TimeSpan.FromSeconds(30), [.. args]);
            Assert.Equal(1, run.ExitCode);
            var lines = run.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            Assert.True(lines.Length == 1 && lines[0].StartsWith("sharpvisor: ", StringComparison.Ordinal), run.ToString());
            Assert.True(run.Elapsed < TimeSpan.FromSeconds(15), run.ToString());
        }
        finally
        {
            disks.ForEach(d => d.Dispose());
        }
    }
}
