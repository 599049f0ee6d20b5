using SharpVisor.Core;

namespace SharpVisor.Fuzz;

/// <summary>What one input did: the parser took it, or refused it with its documented one-line error.</summary>
public readonly record struct FuzzOutcome(bool Accepted, string? Error)
{
    public static FuzzOutcome Ok => new(true, null);
}

/// <summary>
/// The parser broke a promise without throwing (a multi-line error, data that does not read back as
/// written): a crash like any unexpected exception.
/// </summary>
public sealed class FuzzOracleException(string message) : Exception(message);

/// <summary>
/// One host-side parser of untrusted bytes. <see cref="Run"/> feeds it one input and returns how it
/// answered; the "bad input" answers the parser documents (for the loaders and the qcow2 open a
/// <see cref="UserErrorException"/>, for a qcow2 access an <see cref="IOException"/>) are outcomes,
/// and any other exception escaping <see cref="Run"/> is a crash: a VMM bug to fix.
/// </summary>
public abstract class FuzzTarget : IDisposable
{
    /// <summary>The log parsers write to: discarded, or their warnings would be written once per input.</summary>
    public static readonly Log Quiet = new(TextWriter.Null);

    /// <summary>Every target, by the name run.sh and the replay mode take.</summary>
    public static readonly IReadOnlyDictionary<string, string> All = new SortedDictionary<string, string>
    {
        ["kernel"] = "whatever --kernel gets: Board's choice of Multiboot or Linux loader, loaded into a 2.75 GiB guest with an initrd",
        ["bzimage"] = "BzImage.Parse (Linux boot protocol setup header), then the payload's decompression and ELF parse",
        ["payload"] = "KernelDecompressor.Decompress (gzip, XZ, zstd, bzip2, LZMA) of a bzImage payload, then ElfImage.Parse",
        ["elf"] = "ElfImage.Parse (ELF32/ELF64, PT_LOAD, PVH note), entry translation and loading into guest RAM",
        ["multiboot"] = "MultibootLoader: header search, a.out kludge or ELF32 load, one module",
        ["qcow2"] = "DiskImage.Open of a qcow2 file, then reads, writes, discards and write-zeroes checked by reading back",
    };

    public static FuzzTarget Create(string name) => name switch
    {
        "kernel" => new KernelTarget(),
        "bzimage" => new BzImageTarget(),
        "payload" => new PayloadTarget(),
        "elf" => new ElfTarget(),
        "multiboot" => new MultibootTarget(),
        "qcow2" => new Qcow2Target(),
        _ => throw new ArgumentException($"unknown fuzz target '{name}' (targets: {string.Join(", ", All.Keys)})", nameof(name)),
    };

    /// <summary>Runs one input; an exception escaping is a crash.</summary>
    public abstract FuzzOutcome Run(byte[] input);

    public virtual void Dispose()
    {
    }

    /// <summary>
    /// A documented rejection, as long as it is the one line the user is promised: no line breaks, and
    /// no other control characters either (bytes from a hostile file must not reach the terminal as
    /// escape sequences).
    /// </summary>
    protected static FuzzOutcome Rejected(Exception e)
    {
        if (string.IsNullOrWhiteSpace(e.Message) || e.Message.Any(char.IsControl))
        {
            throw new FuzzOracleException($"{e.GetType().Name} without a one-line printable message: \"{e.Message}\"");
        }
        return new FuzzOutcome(false, e.Message);
    }
}
