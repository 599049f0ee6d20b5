using System.Globalization;
using SharpVisor.Core;
using SharpVisor.Machine;

namespace SharpVisor.Cli;

/// <summary>Parses `sharpvisor run` options into a <see cref="MachineConfig"/>; every mistake is one clear line.</summary>
public static class Options
{
    public const string RunUsage = """
        usage: sharpvisor run [options]
          --kernel FILE        Linux bzImage, vmlinux (PVH) or multiboot kernel
          --initrd FILE        initial ramdisk
          --append STRING      kernel command line; console=ttyS0 (console=hvc0 with --console virtio)
                               is added unless it names a console itself
          --memory MIB         guest RAM in MiB (default 512)
          --cpus N             number of vCPUs (default 1)
          --disk PATH[,format=raw|qcow2][,readonly][,locking=off]
                               a virtio-blk disk on a raw or qcow2 image (repeatable;
                               the format is probed when not given; locked like QEMU locks it)
          --rng                a virtio-rng device fed from the host's RNG (with --clock
                               deterministic: from a seeded generator, so runs repeat)
          --rng-seed N         the seed of that generator (default 24301)
          --net stream,listen=HOST:PORT | stream,connect=HOST:PORT[,mac=XX:..]
                               a virtio-net NIC on a stream socket (QEMU's socket framing); the
                               connecting side retries until the listener is up
          --net tap,ifname=NAME[,mac=XX:..]
                               a virtio-net NIC on host TAP interface NAME (attached if it exists,
                               else created: that needs root)
          --console serial|virtio
                               the guest device the terminal is connected to: the serial port
                               (ttyS0, default) or a virtio console (hvc0)
          --iommu on|off       Intel VT-d IOMMU (default off)
          --cpu interp|jit     interpret every instruction, or also translate blocks that run often
                               to .NET code (default jit: same results, faster)
          --clock host|deterministic
                               guest time follows the host, or advances with executed instructions
                               so that runs repeat exactly (default host)
          --timeout SEC        stop with an error after SEC seconds of the whole run, guest resets
                               included (guest time with --clock deterministic; default: none)
          --stats              print every counter when the VM stops
          --console-limit SIZE|none
                               when stdout is not a terminal, write at most SIZE bytes (K, M, G
                               suffixes) of guest console output, then drop the rest and count it in
                               console.dropped_bytes (default 64M; a terminal is never limited)
        Kernel, initrd and disk images must be regular files; a kernel or initrd must fit in guest
        RAM and be at most 1 GiB. At most 27 virtio devices (disks, rng, virtio console, NIC) fit.
        The guest's console is the terminal. Press Ctrl-A then x to quit, Ctrl-A Ctrl-A to send Ctrl-A.
        """;

    public static MachineConfig ParseRun(IReadOnlyList<string> args)
    {
        var cfg = new MachineConfig();
        var disks = new List<DiskSpec>();
        for (int i = 0; i < args.Count; i++)
        {
            string a = args[i];
            string Value()
            {
                if (i + 1 >= args.Count)
                {
                    throw new UserErrorException($"option {a} needs a value");
                }
                return args[++i];
            }
            cfg = a switch
            {
                "--kernel" => cfg with { Kernel = Value() },
                "--initrd" => cfg with { Initrd = Value() },
                "--append" => cfg with { CommandLine = Value() },
                "--memory" => cfg with { MemoryMiB = ParseULong(a, Value()) },
                "--cpus" => cfg with { Cpus = (int)Math.Min(int.MaxValue, ParseULong(a, Value())) },
                "--disk" => AddDisk(cfg, disks, DiskSpec.Parse(Value())),
                "--rng" => cfg with { Rng = true },
                "--rng-seed" => cfg with { RngSeed = ParseULong(a, Value()) },
                "--net" => cfg with { Net = NetSpec.Parse(Value()) },
                "--console" => cfg with { Console = ParseConsole(Value()) },
                "--iommu" => cfg with { Iommu = ParseOnOff(a, Value()) },
                "--clock" => cfg with { Clock = ParseClock(Value()) },
                "--cpu" => cfg with { Tier = ParseTier(Value()) },
                "--timeout" => cfg with { TimeoutSeconds = ParseSeconds(a, Value()) },
                "--stats" => cfg with { PrintStats = true },
                "--console-limit" => cfg with { ConsoleLimitBytes = ParseSizeOrNone(a, Value()) },
                _ => throw new UserErrorException($"unknown option '{a}' (see 'sharpvisor run --help')"),
            };
        }
        return cfg with { Disks = disks };
    }

    static MachineConfig AddDisk(MachineConfig cfg, List<DiskSpec> disks, DiskSpec disk)
    {
        disks.Add(disk);
        return cfg;
    }

    static ulong ParseULong(string option, string v) =>
        ulong.TryParse(v, NumberStyles.None, CultureInfo.InvariantCulture, out ulong n)
            ? n
            : throw new UserErrorException($"option {option} needs a whole number (got '{v}')");

    /// <summary>A byte count with an optional binary suffix (64K, 64M, 1G), or "none".</summary>
    static long? ParseSizeOrNone(string option, string v)
    {
        if (v == "none")
        {
            return null;
        }
        int shift = v.Length == 0 ? 0 : char.ToUpperInvariant(v[^1]) switch { 'K' => 10, 'M' => 20, 'G' => 30, _ => 0 };
        string digits = shift == 0 ? v : v[..^1];
        if (long.TryParse(digits, NumberStyles.None, CultureInfo.InvariantCulture, out long n) && n > 0 && n <= long.MaxValue >> shift)
        {
            return n << shift;
        }
        throw new UserErrorException($"option {option} needs a size in bytes like 65536, 64K, 64M or 1G, or 'none' (got '{v}')");
    }

    static double ParseSeconds(string option, string v) =>
        double.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out double s) && s > 0 && double.IsFinite(s)
            ? s
            : throw new UserErrorException($"option {option} needs a positive number of seconds (got '{v}')");

    static bool ParseOnOff(string option, string v) => v switch
    {
        "on" => true,
        "off" => false,
        _ => throw new UserErrorException($"option {option} takes 'on' or 'off' (got '{v}')"),
    };

    static ConsoleDevice ParseConsole(string v) => v switch
    {
        "serial" => ConsoleDevice.Serial,
        "virtio" => ConsoleDevice.Virtio,
        _ => throw new UserErrorException($"option --console takes 'serial' or 'virtio' (got '{v}')"),
    };

    static CpuTier ParseTier(string v) => v switch
    {
        "interp" => CpuTier.Interpreter,
        "jit" => CpuTier.Jit,
        _ => throw new UserErrorException($"option --cpu takes 'interp' or 'jit' (got '{v}')"),
    };

    static ClockMode ParseClock(string v) => v switch
    {
        "host" => ClockMode.Host,
        "deterministic" => ClockMode.Deterministic,
        _ => throw new UserErrorException($"option --clock takes 'host' or 'deterministic' (got '{v}')"),
    };
}
