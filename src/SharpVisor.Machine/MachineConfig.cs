using SharpVisor.Core;
using SharpVisor.Devices.Storage;

namespace SharpVisor.Machine;

/// <summary>Everything that describes one virtual machine before it is built (the CLI fills it in).</summary>
public sealed record MachineConfig
{
    public string? Kernel { get; init; }
    public string? Initrd { get; init; }
    /// <summary>The user's kernel command line (--append); see <see cref="KernelCommandLine"/> for what the kernel gets.</summary>
    public string CommandLine { get; init; } = "";
    /// <summary>Which device the terminal is connected to (--console).</summary>
    public ConsoleDevice Console { get; init; } = ConsoleDevice.Serial;
    public ulong MemoryMiB { get; init; } = 512;
    public int Cpus { get; init; } = 1;
    public IReadOnlyList<DiskSpec> Disks { get; init; } = [];
    /// <summary>Attach a virtio-rng device: fed from the host's random number generator, or with the deterministic clock from a generator seeded with <see cref="RngSeed"/>.</summary>
    public bool Rng { get; init; }
    /// <summary>The virtio-rng generator's seed with the deterministic clock (--rng-seed); null for <see cref="DefaultRngSeed"/>.</summary>
    public ulong? RngSeed { get; init; }
    public NetSpec? Net { get; init; }
    public bool Iommu { get; init; }
    public ClockMode Clock { get; init; } = ClockMode.Host;
    /// <summary>How guest code runs (--cpu): interpreted only, or hot blocks translated to .NET code
    /// (the default: faster on the boot and on every user-space workload measured, same results).</summary>
    public CpuTier Tier { get; init; } = CpuTier.Jit;
    /// <summary>
    /// Seconds after which the run stops with an error (0 = none): the whole run, every boot after a
    /// guest reset included, in wall-clock time with the host clock and guest time with the
    /// deterministic clock (so a deterministic run times out at the same point every time).
    /// </summary>
    public double TimeoutSeconds { get; init; }
    /// <summary>Print every counter at exit.</summary>
    public bool PrintStats { get; init; }
    /// <summary>
    /// How many bytes of guest console output the CLI writes when its stdout is not a terminal
    /// (--console-limit; null = no limit). Past it output is dropped and counted, so a guest that
    /// prints without pause cannot fill the host's disk with a log nobody reads.
    /// </summary>
    public long? ConsoleLimitBytes { get; init; } = DefaultConsoleLimitBytes;

    /// <summary>The seed of virtio-rng's generator with the deterministic clock when none is given: any fixed value makes runs repeat.</summary>
    public const ulong DefaultRngSeed = 0x5EED;

    /// <summary>64 MiB: a thousand Linux boot logs, reached in seconds by a guest printing in a loop.</summary>
    public const long DefaultConsoleLimitBytes = 64L << 20;

    /// <summary>
    /// The command line the kernel gets: <see cref="CommandLine"/>, plus <c>console=ttyS0</c>
    /// (serial) or <c>console=hvc0</c> (virtio) when it names no console itself, so the kernel's
    /// console is the device the terminal shows.
    /// </summary>
    public string KernelCommandLine
    {
        get
        {
            if (CommandLine.Split(' ', '\t').Any(p => p.StartsWith("console=", StringComparison.Ordinal)))
            {
                return CommandLine;
            }
            string console = Console == ConsoleDevice.Virtio ? "console=hvc0" : "console=ttyS0";
            return CommandLine.Trim().Length == 0 ? console : $"{CommandLine.Trim()} {console}";
        }
    }

    public const ulong MinMemoryMiB = 16;
    public const ulong MaxMemoryMiB = 1 << 20;
    public const int MaxCpus = 64;

    /// <summary>
    /// The largest kernel or initrd accepted (1 GiB), besides having to fit in guest RAM: the file is
    /// read whole into host memory before it is copied into the guest, and Linux places an initrd
    /// below 2 GiB (initrd_addr_max) anyway.
    /// </summary>
    public const long MaxBootFileBytes = 1L << 30;

    /// <summary>
    /// PCI slots on bus 0 the board gives to virtio devices, one each: 0 is the host bridge, 3 the
    /// edu device and 31 the LPC bridge, as on QEMU's q35.
    /// </summary>
    public const int FirstDeviceSlot = 4, LastDeviceSlot = 30;
    public const int MaxPciDevices = LastDeviceSlot - FirstDeviceSlot + 1;

    /// <summary>What takes a PCI slot: each --disk, --rng, --console virtio and --net.</summary>
    IEnumerable<string> PciDevices()
    {
        if (Disks.Count > 0)
        {
            yield return Disks.Count == 1 ? "1 disk" : $"{Disks.Count} disks";
        }
        if (Rng)
        {
            yield return "--rng";
        }
        if (Console == ConsoleDevice.Virtio)
        {
            yield return "--console virtio";
        }
        if (Net is not null)
        {
            yield return "--net";
        }
    }

    int PciDeviceCount => Disks.Count + (Rng ? 1 : 0) + (Console == ConsoleDevice.Virtio ? 1 : 0) + (Net is null ? 0 : 1);

    /// <summary>Checks what can be checked without touching the host; throws <see cref="UserErrorException"/>.</summary>
    public void Validate()
    {
        if (MemoryMiB < MinMemoryMiB || MemoryMiB > MaxMemoryMiB)
        {
            throw new UserErrorException($"--memory must be between {MinMemoryMiB} and {MaxMemoryMiB} MiB (got {MemoryMiB})");
        }
        if (Cpus < 1 || Cpus > MaxCpus)
        {
            throw new UserErrorException($"--cpus must be between 1 and {MaxCpus} (got {Cpus})");
        }
        if (Kernel is null)
        {
            throw new UserErrorException("no kernel given (use --kernel FILE, or run through ./sharpvisor for the default guest)");
        }
        if (RngSeed is not null && !(Rng && Clock == ClockMode.Deterministic))
        {
            // With the host clock the device gives host randomness: a seed there would be silently ignored.
            throw new UserErrorException("--rng-seed needs --rng and --clock deterministic");
        }
        if (PciDeviceCount > MaxPciDevices)
        {
            var devices = PciDevices().ToList();
            string list = devices.Count == 1 ? devices[0] : $"{string.Join(", ", devices[..^1])} and {devices[^1]}";
            throw new UserErrorException($"too many devices: {list} need {PciDeviceCount} PCI slots, at most {MaxPciDevices} are available");
        }
        // The kernel and initrd are read whole and copied into guest RAM; a disk is read and written
        // at any offset. Only regular files can be used that way: a FIFO would block the open, a
        // device like /dev/zero never ends, and either would make the qcow2 probe fail.
        long bootFileLimit = (long)Math.Min((ulong)MaxBootFileBytes, MemoryMiB << 20);
        CheckFile(Kernel, "kernel", bootFileLimit);
        CheckFile(Initrd, "initrd", bootFileLimit);
        foreach (var d in Disks)
        {
            CheckFile(d.Path, "disk image", long.MaxValue);
        }
    }

    void CheckFile(string? path, string what, long maxBytes)
    {
        if (path is null)
        {
            return;
        }
        HostFileInfo file;
        try
        {
            file = HostFile.Stat(path);
        }
        catch (IOException e)
        {
            throw new UserErrorException($"cannot read {what} '{path}': {e.Message}");
        }
        switch (file.Kind)
        {
            case HostFileKind.Missing:
                throw new UserErrorException($"file not found: {path}");
            case HostFileKind.Directory:
                throw new UserErrorException($"{what} '{path}' is a directory, not a file");
            case not HostFileKind.Regular:
                throw new UserErrorException($"{what} '{path}' is {HostFile.Describe(file.Kind)}, not a regular file");
        }
        if (file.Size > maxBytes)
        {
            throw new UserErrorException(maxBytes == MaxBootFileBytes
                ? $"{what} '{path}' is {file.Size} bytes, more than the limit of {MaxBootFileBytes >> 20} MiB for kernel and initrd files"
                : $"{what} '{path}' is {file.Size} bytes, more than the {MemoryMiB} MiB of guest RAM can hold");
        }
    }
}

/// <summary>The guest device the terminal is connected to.</summary>
public enum ConsoleDevice
{
    /// <summary>COM1, the 16550A UART (Linux: ttyS0).</summary>
    Serial,
    /// <summary>A virtio-console device (Linux: hvc0); COM1 still exists, its output is discarded.</summary>
    Virtio,
}

/// <summary>
/// A disk: <c>--disk PATH[,format=raw|qcow2][,readonly][,locking=off]</c>. Without <c>format=</c> the image is
/// probed: a file starting with the qcow2 magic is qcow2, anything else raw (as QEMU probes). The image is
/// locked as QEMU locks it unless <c>locking=off</c> (QEMU's option of that name).
/// </summary>
public sealed record DiskSpec(string Path, bool ReadOnly = false, DiskFormat Format = DiskFormat.Auto, bool Locking = true)
{
    public static DiskSpec Parse(string text)
    {
        var parts = text.Split(',');
        if (parts[0].Length == 0)
        {
            throw new UserErrorException($"--disk needs a file path (got '{text}')");
        }
        var spec = new DiskSpec(parts[0]);
        foreach (var p in parts.Skip(1))
        {
            spec = p switch
            {
                "readonly" or "readonly=on" => spec with { ReadOnly = true },
                "format=raw" => spec with { Format = DiskFormat.Raw },
                "format=qcow2" => spec with { Format = DiskFormat.Qcow2 },
                "locking=on" => spec with { Locking = true },
                "locking=off" => spec with { Locking = false },
                _ when p.StartsWith("format=", StringComparison.Ordinal) =>
                    throw new UserErrorException($"unknown --disk format '{p["format=".Length..]}' (expected raw or qcow2)"),
                _ when p.StartsWith("locking=", StringComparison.Ordinal) =>
                    throw new UserErrorException($"unknown --disk locking mode '{p["locking=".Length..]}' (expected locking=on or locking=off)"),
                _ => throw new UserErrorException($"unknown --disk option '{p}' (expected format=raw, format=qcow2, readonly or locking=off)"),
            };
        }
        return spec;
    }
}

/// <summary>Where a virtio-net NIC's frames go.</summary>
public enum NetBackendKind
{
    /// <summary>A TCP stream; this VM listens for its peer.</summary>
    StreamListen,
    /// <summary>A TCP stream; this VM connects to a listening peer.</summary>
    StreamConnect,
    /// <summary>A host TAP interface.</summary>
    Tap,
}

/// <summary>
/// A network interface: <c>--net stream,listen=HOST:PORT</c>, <c>stream,connect=HOST:PORT</c> or
/// <c>tap,ifname=NAME</c>, each with an optional <c>mac=XX:XX:XX:XX:XX:XX</c>.
/// </summary>
public sealed record NetSpec
{
    public required NetBackendKind Backend { get; init; }
    /// <summary>The stream backends' address.</summary>
    public System.Net.IPEndPoint? EndPoint { get; init; }
    /// <summary>The TAP backend's interface name.</summary>
    public string? InterfaceName { get; init; }
    byte[]? _mac;

    /// <summary>The NIC's MAC address; by default <see cref="DefaultMac"/> of this spec, fixed for the VM's life (reboots included).</summary>
    public byte[] Mac
    {
        get => _mac ??= DefaultMac(this);
        init => _mac = value;
    }

    public bool Listen => Backend == NetBackendKind.StreamListen;

    public static NetSpec StreamListen(System.Net.IPEndPoint endPoint) => new() { Backend = NetBackendKind.StreamListen, EndPoint = endPoint };
    public static NetSpec StreamConnect(System.Net.IPEndPoint endPoint) => new() { Backend = NetBackendKind.StreamConnect, EndPoint = endPoint };
    public static NetSpec Tap(string interfaceName) => new() { Backend = NetBackendKind.Tap, InterfaceName = interfaceName };

    public const string Syntax = "stream,listen=HOST:PORT | stream,connect=HOST:PORT | tap,ifname=NAME (each with optional ,mac=XX:XX:XX:XX:XX:XX)";

    public static NetSpec Parse(string text)
    {
        var parts = text.Split(',');
        NetSpec spec = parts[0] switch
        {
            "stream" => new NetSpec { Backend = NetBackendKind.StreamListen },
            "tap" => new NetSpec { Backend = NetBackendKind.Tap },
            _ => throw new UserErrorException($"--net takes {Syntax} (got '{text}')"),
        };
        bool haveAddress = false;
        foreach (var p in parts.Skip(1))
        {
            int eq = p.IndexOf('=');
            string key = eq < 0 ? p : p[..eq], value = eq < 0 ? "" : p[(eq + 1)..];
            switch (key)
            {
                case "listen" or "connect" when spec.Backend != NetBackendKind.Tap:
                    if (!System.Net.IPEndPoint.TryParse(value, out var ep) || ep.Port == 0)
                    {
                        throw new UserErrorException($"--net {key}= needs HOST:PORT with a numeric address (got '{value}')");
                    }
                    spec = spec with { Backend = key == "listen" ? NetBackendKind.StreamListen : NetBackendKind.StreamConnect, EndPoint = ep };
                    haveAddress = true;
                    break;
                case "ifname" when spec.Backend == NetBackendKind.Tap:
                    // IFNAMSIZ is 16 with the terminating NUL (linux/if.h).
                    if (value.Length is 0 or > 15 || value.Any(c => c is '/' or ':' || char.IsWhiteSpace(c) || c > 0x7E))
                    {
                        throw new UserErrorException($"--net tap,ifname= needs an interface name of 1 to 15 characters (got '{value}')");
                    }
                    spec = spec with { InterfaceName = value };
                    haveAddress = true;
                    break;
                case "mac":
                    spec = spec with { Mac = ParseMac(value) };
                    break;
                default:
                    throw new UserErrorException($"unknown --net {parts[0]} option '{key}' (--net takes {Syntax})");
            }
        }
        if (!haveAddress)
        {
            throw new UserErrorException(spec.Backend == NetBackendKind.Tap
                ? "--net tap needs ifname=NAME"
                : "--net stream needs listen=HOST:PORT or connect=HOST:PORT");
        }
        return spec;
    }

    /// <summary>
    /// The MAC a NIC gets when none is given: in 52:54:00, the locally administered unicast range
    /// QEMU and libvirt use for guests. A stream NIC's is derived from its link, 52:54:00:PP:PP:RR
    /// with PP the port and RR 0x10 when listening, 0x20 when connecting, so the two ends of one
    /// link always differ (and stay the same from run to run). A TAP NIC's last three bytes are
    /// random, never repeated within one process. Neither ever equals QEMU's default
    /// 52:54:00:12:34:56 (the usual peer of a stream link).
    /// </summary>
    public static byte[] DefaultMac(NetSpec spec)
    {
        if (spec.Backend != NetBackendKind.Tap && spec.EndPoint is { } ep)
        {
            return [0x52, 0x54, 0x00, (byte)(ep.Port >> 8), (byte)ep.Port, spec.Backend == NetBackendKind.StreamListen ? (byte)0x10 : (byte)0x20];
        }
        lock (s_issuedGate)
        {
            while (true)
            {
                var mac = new byte[] { 0x52, 0x54, 0x00, 0, 0, 0 };
                System.Security.Cryptography.RandomNumberGenerator.Fill(mac.AsSpan(3));
                int low = mac[3] << 16 | mac[4] << 8 | mac[5];
                if ((low & ~0xF) != 0x12_34_50 && s_issued.Add(low))
                {
                    return mac;
                }
            }
        }
    }

    static readonly Lock s_issuedGate = new();
    static readonly HashSet<int> s_issued = [];

    static byte[] ParseMac(string s)
    {
        var parts = s.Split(':');
        var mac = new byte[6];
        if (parts.Length != 6 || !parts.Select((p, i) => p.Length is 1 or 2 && byte.TryParse(p, System.Globalization.NumberStyles.HexNumber, null, out mac[i])).All(ok => ok) || (mac[0] & 1) != 0)
        {
            throw new UserErrorException($"--net mac= needs a unicast MAC like 52:54:00:12:34:56 (got '{s}')");
        }
        return mac;
    }
}

/// <summary>The execution tiers a vCPU may use (--cpu).</summary>
public enum CpuTier
{
    /// <summary>Every instruction interpreted: the reference tier.</summary>
    Interpreter,
    /// <summary>The interpreter first, and blocks that run often translated to .NET code (Cpu.X86/Translation).</summary>
    Jit,
}
