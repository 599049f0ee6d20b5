using SharpVisor.Core;
using SharpVisor.Devices.Storage;
using SharpVisor.Machine;

namespace SharpVisor.Cli.Tests;

/// <summary>What a user types on the command line and the one-line errors they get back.</summary>
public class OptionsTests
{
    [Fact]
    public void ParsesEveryRunOption()
    {
        var cfg = Options.ParseRun(["--kernel", "k", "--initrd", "i", "--append", "console=ttyS0 quiet", "--memory", "1024",
            "--cpus", "2", "--disk", "a.img", "--disk", "b.img,readonly", "--iommu", "on", "--clock", "deterministic",
            "--timeout", "2.5", "--stats", "--rng", "--net", "stream,connect=127.0.0.1:5555,mac=52:54:00:12:34:56"]);
        Assert.Equal("k", cfg.Kernel);
        Assert.Equal("i", cfg.Initrd);
        Assert.Equal("console=ttyS0 quiet", cfg.CommandLine);
        Assert.Equal(1024UL, cfg.MemoryMiB);
        Assert.Equal(2, cfg.Cpus);
        Assert.Equal([new DiskSpec("a.img"), new DiskSpec("b.img", ReadOnly: true)], cfg.Disks);
        Assert.True(cfg.Iommu);
        Assert.Equal(ClockMode.Deterministic, cfg.Clock);
        Assert.Equal(2.5, cfg.TimeoutSeconds);
        Assert.True(cfg.PrintStats);
        Assert.True(cfg.Rng);
        Assert.False(cfg.Net!.Listen);
        Assert.Equal(5555, cfg.Net.EndPoint.Port);
        Assert.Equal(new byte[] { 0x52, 0x54, 0, 0x12, 0x34, 0x56 }, cfg.Net.Mac);
    }

    [Theory]
    [InlineData("unknown option '--bogus'", "--bogus")]
    [InlineData("option --memory needs a value", "--memory")]
    [InlineData("option --memory needs a whole number (got 'lots')", "--memory", "lots")]
    [InlineData("option --iommu takes 'on' or 'off' (got 'yes')", "--iommu", "yes")]
    [InlineData("option --clock takes 'host' or 'deterministic' (got 'fast')", "--clock", "fast")]
    [InlineData("option --timeout needs a positive number of seconds (got '-1')", "--timeout", "-1")]
    [InlineData("unknown --disk format 'vmdk' (expected raw or qcow2)", "--disk", "x.vmdk,format=vmdk")]
    [InlineData("unknown --disk option 'cache=none'", "--disk", "x.img,cache=none")]
    [InlineData("--net takes stream,listen=HOST:PORT", "--net", "tap,ifname=tap0")]
    [InlineData("--net mac= needs a unicast MAC", "--net", "stream,listen=127.0.0.1:1,mac=01:00:00:00:00:01")]
    public void MistakesGiveOneClearLine(string expected, params string[] args)
    {
        var e = Assert.Throws<UserErrorException>(() => Options.ParseRun(args));
        Assert.Contains(expected, e.Message);
        Assert.DoesNotContain("\n", e.Message);
    }

    [Fact]
    public void DiskFormatIsProbedUnlessGiven()
    {
        var cfg = Options.ParseRun(["--disk", "a.img", "--disk", "b.qcow2,format=qcow2,readonly", "--disk", "c.img,format=raw"]);
        Assert.Equal([new DiskSpec("a.img", false, DiskFormat.Auto), new DiskSpec("b.qcow2", true, DiskFormat.Qcow2),
            new DiskSpec("c.img", false, DiskFormat.Raw)], cfg.Disks);
    }

    [Fact]
    public void ValidationNamesAMissingDisk()
    {
        var e = Assert.Throws<UserErrorException>(() => Options.ParseRun(["--kernel", typeof(OptionsTests).Assembly.Location, "--disk", "/no/such/disk.qcow2"]).Validate());
        Assert.Equal("file not found: /no/such/disk.qcow2", e.Message);
    }

    [Fact]
    public void ValidationNamesTheMissingFileAndTheBadSizes()
    {
        Assert.Contains("file not found: /no/such/kernel", Assert.Throws<UserErrorException>(() => new MachineConfig { Kernel = "/no/such/kernel" }.Validate()).Message);
        Assert.Contains("--memory must be between", Assert.Throws<UserErrorException>(() => new MachineConfig { Kernel = "k", MemoryMiB = 4 }.Validate()).Message);
        Assert.Contains("--cpus must be between", Assert.Throws<UserErrorException>(() => new MachineConfig { Kernel = "k", Cpus = 0 }.Validate()).Message);
        Assert.Contains("no kernel given", Assert.Throws<UserErrorException>(() => new MachineConfig().Validate()).Message);
    }
}
