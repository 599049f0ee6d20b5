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
            "--timeout", "2.5", "--stats", "--rng", "--rng-seed", "42", "--net", "stream,connect=127.0.0.1:5555,mac=52:54:00:12:34:56", "--cpu", "jit"]);
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
        Assert.Equal(42UL, cfg.RngSeed);
        Assert.Equal(CpuTier.Jit, cfg.Tier);
        Assert.Equal(NetBackendKind.StreamConnect, cfg.Net!.Backend);
        Assert.Equal(5555, cfg.Net.EndPoint!.Port);
        Assert.Equal(new byte[] { 0x52, 0x54, 0, 0x12, 0x34, 0x56 }, cfg.Net.Mac);
    }

    [Theory]
    [InlineData("unknown option '--bogus'", "--bogus")]
    [InlineData("option --memory needs a value", "--memory")]
    [InlineData("option --memory needs a whole number (got 'lots')", "--memory", "lots")]
    [InlineData("option --iommu takes 'on' or 'off' (got 'yes')", "--iommu", "yes")]
    [InlineData("option --console takes 'serial' or 'virtio' (got 'hvc0')", "--console", "hvc0")]
    [InlineData("option --clock takes 'host' or 'deterministic' (got 'fast')", "--clock", "fast")]
    [InlineData("option --cpu takes 'interp' or 'jit' (got 'kvm')", "--cpu", "kvm")]
    [InlineData("option --timeout needs a positive number of seconds (got '-1')", "--timeout", "-1")]
    [InlineData("unknown --disk format 'vmdk' (expected raw or qcow2)", "--disk", "x.vmdk,format=vmdk")]
    [InlineData("unknown --disk option 'cache=none'", "--disk", "x.img,cache=none")]
    [InlineData("--net takes stream,listen=HOST:PORT", "--net", "user")]
    [InlineData("--net stream needs listen=HOST:PORT or connect=HOST:PORT", "--net", "stream")]
    [InlineData("--net listen= needs HOST:PORT with a numeric address (got 'localhost:5')", "--net", "stream,listen=localhost:5")]
    [InlineData("unknown --net stream option 'ifname'", "--net", "stream,ifname=tap0")]
    [InlineData("--net tap needs ifname=NAME", "--net", "tap")]
    [InlineData("--net tap,ifname= needs an interface name of 1 to 15 characters", "--net", "tap,ifname=a-very-long-interface")]
    [InlineData("unknown --net tap option 'listen'", "--net", "tap,listen=127.0.0.1:5")]
    [InlineData("--net mac= needs a unicast MAC", "--net", "stream,listen=127.0.0.1:1,mac=52:54:00:12:34")]
    [InlineData("--net mac= needs a unicast MAC", "--net", "stream,listen=127.0.0.1:1,mac=01:00:00:00:00:01")]
    public void MistakesGiveOneClearLine(string expected, params string[] args)
    {
        var e = Assert.Throws<UserErrorException>(() => Options.ParseRun(args));
        Assert.Contains(expected, e.Message);
        Assert.DoesNotContain("\n", e.Message);
    }

    [Theory]
    [InlineData(new string[0], "console=ttyS0")]
    [InlineData(new[] { "--console", "serial" }, "console=ttyS0")]
    [InlineData(new[] { "--console", "virtio" }, "console=hvc0")]
    [InlineData(new[] { "--console", "virtio", "--append", "quiet" }, "quiet console=hvc0")]
    [InlineData(new[] { "--append", "quiet loglevel=3" }, "quiet loglevel=3 console=ttyS0")]
    [InlineData(new[] { "--console", "virtio", "--append", "console=ttyS0 quiet" }, "console=ttyS0 quiet")] // the user's choice stands
    [InlineData(new[] { "--append", "earlyprintk=serial console=tty0" }, "earlyprintk=serial console=tty0")]
    public void TheKernelConsoleFollowsTheConsoleDeviceUnlessAppendNamesOne(string[] args, string expected)
    {
        var cfg = Options.ParseRun(args);
        Assert.Equal(expected, cfg.KernelCommandLine);
        Assert.Equal(args.Contains("virtio") ? ConsoleDevice.Virtio : ConsoleDevice.Serial, cfg.Console);
    }

    [Fact]
    public void NetTapTakesAnInterfaceName()
    {
        var cfg = Options.ParseRun(["--net", "tap,ifname=tap7,mac=52:54:00:aa:bb:cc"]);
        Assert.Equal(NetBackendKind.Tap, cfg.Net!.Backend);
        Assert.Equal("tap7", cfg.Net.InterfaceName);
        Assert.Equal(new byte[] { 0x52, 0x54, 0, 0xAA, 0xBB, 0xCC }, cfg.Net.Mac);
    }

    /// <summary>
    /// Two VMs on one stream link never share a MAC by default (a shared MAC makes each guest drop
    /// the other's frames as its own); QEMU's default 52:54:00:12:34:56 is never chosen either.
    /// </summary>
    [Fact]
    public void DefaultMacsDifferBetweenTheEndsOfALinkAndBetweenTapNics()
    {
        var listen = Options.ParseRun(["--net", "stream,listen=127.0.0.1:4660"]).Net!;
        var connect = Options.ParseRun(["--net", "stream,connect=127.0.0.1:4660"]).Net!;
        Assert.NotEqual(listen.Mac, connect.Mac);
        Assert.Equal(listen.Mac, Options.ParseRun(["--net", "stream,listen=127.0.0.1:4660"]).Net!.Mac); // stable from run to run
        byte[] qemuDefault = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        var taps = Enumerable.Range(0, 500).Select(i => Options.ParseRun(["--net", "tap,ifname=tap0"]).Net!.Mac).ToList();
        foreach (var mac in taps.Append(listen.Mac).Append(connect.Mac))
        {
            Assert.Equal(new byte[] { 0x52, 0x54, 0x00 }, mac[..3]); // locally administered unicast, QEMU's range
            Assert.NotEqual(qemuDefault, mac);
        }
        Assert.Equal(taps.Count, taps.Select(Convert.ToHexString).Distinct().Count());
        var spec = Options.ParseRun(["--net", "tap,ifname=tap0"]).Net!;
        Assert.Same(spec.Mac, spec.Mac); // fixed for the VM's life, reboots included
    }

    [Fact]
    public void DiskFormatIsProbedUnlessGiven()
    {
        var cfg = Options.ParseRun(["--disk", "a.img", "--disk", "b.qcow2,format=qcow2,readonly", "--disk", "c.img,format=raw"]);
        Assert.Equal([new DiskSpec("a.img", false, DiskFormat.Auto), new DiskSpec("b.qcow2", true, DiskFormat.Qcow2),
            new DiskSpec("c.img", false, DiskFormat.Raw)], cfg.Disks);
    }

    [Theory]
    [InlineData("65536", 65536L)]
    [InlineData("64K", 64L << 10)]
    [InlineData("64m", 64L << 20)]
    [InlineData("2G", 2L << 30)]
    [InlineData("none", null)]
    public void ConsoleLimitTakesASizeOrNone(string value, long? expected)
    {
        Assert.Equal(MachineConfig.DefaultConsoleLimitBytes, Options.ParseRun([]).ConsoleLimitBytes);
        Assert.Equal(expected, Options.ParseRun(["--console-limit", value]).ConsoleLimitBytes);
    }

    [Theory]
    [InlineData("0")]
    [InlineData("-1")]
    [InlineData("64T")]
    [InlineData("K")]
    [InlineData("99999999999G")]
    public void ConsoleLimitRefusesWhatIsNotASize(string value)
    {
        var e = Assert.Throws<UserErrorException>(() => Options.ParseRun(["--console-limit", value]));
        Assert.Equal($"option --console-limit needs a size in bytes like 65536, 64K, 64M or 1G, or 'none' (got '{value}')", e.Message);
    }

    /// <summary>The limits the help states are the ones Validate enforces.</summary>
    [Fact]
    public void HelpStatesTheLimitsInForce()
    {
        Assert.Contains($"at most {MachineConfig.MaxBootFileBytes >> 30} GiB", Options.RunUsage);
        Assert.Contains($"At most {MachineConfig.MaxPciDevices} virtio devices", Options.RunUsage);
        Assert.Contains($"(default {MachineConfig.DefaultConsoleLimitBytes >> 20}M;", Options.RunUsage);
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
        // A seed only means something for the deterministic clock's generator: elsewhere it would be ignored silently.
        Assert.Contains("--rng-seed needs --rng and --clock deterministic",
            Assert.Throws<UserErrorException>(() => Options.ParseRun(["--kernel", "k", "--rng", "--rng-seed", "1"]).Validate()).Message);
        Assert.Contains("--rng-seed needs --rng and --clock deterministic",
            Assert.Throws<UserErrorException>(() => Options.ParseRun(["--kernel", "k", "--clock", "deterministic", "--rng-seed", "1"]).Validate()).Message);
    }
}
