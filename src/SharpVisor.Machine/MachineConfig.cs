using SharpVisor.Core;
using SharpVisor.Devices.Storage;

namespace SharpVisor.Machine;

/// <summary>Everything that describes one virtual machine before it is built (the CLI fills it in).</summary>
public sealed record MachineConfig
{
    public string? Kernel { get; init; }
    public string? Initrd { get; init; }
    public string CommandLine { get; init; } = "console=ttyS0";
    public ulong MemoryMiB { get; init; } = 512;
    public int Cpus { get; init; } = 1;
    public IReadOnlyList<DiskSpec> Disks { get; init; } = [];
    /// <summary>Attach a virtio-rng device fed from the host's random number generator.</summary>
    public bool Rng { get; init; }
    public NetSpec? Net { get; init; }
    public bool Iommu { get; init; }
    public ClockMode Clock { get; init; } = ClockMode.Host;
    /// <summary>Guest seconds after which the run stops with an error (0 = none).</summary>
    public double TimeoutSeconds { get; init; }
    /// <summary>Print every counter at exit.</summary>
    public bool PrintStats { get; init; }

    public const ulong MinMemoryMiB = 16;
    public const ulong MaxMemoryMiB = 1 << 20;
    public const int MaxCpus = 64;

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
        foreach (var f in new[] { Kernel, Initrd }.Concat(Disks.Select(d => d.Path)))
        {
            if (f is not null && !File.Exists(f))
            {
                throw new UserErrorException($"file not found: {f}");
            }
        }
    }
}

/// <summary>
/// A disk: <c>--disk PATH[,format=raw|qcow2][,readonly]</c>. Without <c>format=</c> the image is probed:
/// a file starting with the qcow2 magic is qcow2, anything else raw (as QEMU probes).
/// </summary>
public sealed record DiskSpec(string Path, bool ReadOnly = false, DiskFormat Format = DiskFormat.Auto)
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
                _ when p.StartsWith("format=", StringComparison.Ordinal) =>
                    throw new UserErrorException($"unknown --disk format '{p["format=".Length..]}' (expected raw or qcow2)"),
                _ => throw new UserErrorException($"unknown --disk option '{p}' (expected format=raw, format=qcow2 or readonly)"),
            };
        }
        return spec;
    }
}

/// <summary>A network backend: <c>--net stream,listen=HOST:PORT</c> or <c>--net stream,connect=HOST:PORT</c>.</summary>
public sealed record NetSpec(bool Listen, System.Net.IPEndPoint EndPoint, byte[] Mac)
{
    public static NetSpec Parse(string text)
    {
        var parts = text.Split(',');
        if (parts[0] != "stream" || parts.Length < 2)
        {
            throw new UserErrorException($"--net takes stream,listen=HOST:PORT or stream,connect=HOST:PORT (got '{text}')");
        }
        bool? listen = null;
        System.Net.IPEndPoint? ep = null;
        byte[] mac = RandomMac();
        foreach (var p in parts.Skip(1))
        {
            int eq = p.IndexOf('=');
            string key = eq < 0 ? p : p[..eq], value = eq < 0 ? "" : p[(eq + 1)..];
            switch (key)
            {
                case "listen" or "connect":
                    listen = key == "listen";
                    if (!System.Net.IPEndPoint.TryParse(value, out ep) || ep.Port == 0)
                    {
                        throw new UserErrorException($"--net {key}= needs HOST:PORT with a numeric address (got '{value}')");
                    }
                    break;
                case "mac":
                    mac = ParseMac(value);
                    break;
                default:
                    throw new UserErrorException($"unknown --net option '{key}'");
            }
        }
        if (listen is null || ep is null)
        {
            throw new UserErrorException("--net stream needs listen=HOST:PORT or connect=HOST:PORT");
        }
        return new NetSpec(listen.Value, ep, mac);
    }

    /// <summary>A locally administered unicast MAC in QEMU's 52:54:00 range, random per VM.</summary>
    static byte[] RandomMac()
    {
        var mac = new byte[] { 0x52, 0x54, 0x00, 0, 0, 0 };
        System.Security.Cryptography.RandomNumberGenerator.Fill(mac.AsSpan(3));
        return mac;
    }

    static byte[] ParseMac(string s)
    {
        var parts = s.Split(':');
        var mac = new byte[6];
        if (parts.Length != 6 || !parts.Select((p, i) => byte.TryParse(p, System.Globalization.NumberStyles.HexNumber, null, out mac[i])).All(ok => ok) || (mac[0] & 1) != 0)
        {
            throw new UserErrorException($"--net mac= needs a unicast MAC like 52:54:00:12:34:56 (got '{s}')");
        }
        return mac;
    }
}
