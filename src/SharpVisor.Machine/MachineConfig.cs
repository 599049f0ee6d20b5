using SharpVisor.Core;

namespace SharpVisor.Machine;

/// <summary>Everything that describes one virtual machine before it is built (the CLI fills it in).</summary>
public sealed record MachineConfig
{
    public string? Kernel { get; init; }
    public string? Initrd { get; init; }
    public string CommandLine { get; init; } = "console=ttyS0";
    public ulong MemoryMiB { get; init; } = 512;
    public int Cpus { get; init; } = 1;
    public IReadOnlyList<string> Disks { get; init; } = [];
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
        foreach (var f in new[] { Kernel, Initrd }.Concat(Disks))
        {
            if (f is not null && !File.Exists(f))
            {
                throw new UserErrorException($"file not found: {f}");
            }
        }
    }
}
