using System.Text;
using Iced.Intel;
using SharpVisor.Cpu.X86.Tests.Harness;
using SharpVisor.Cpu.X86.Translation;

namespace SharpVisor.Cpu.X86.Tests.Translation;

/// <summary>
/// Two vCPUs built identically over identical RAM (<see cref="InterpreterMachine"/>: 64-bit mode,
/// the first 4 MiB identity-mapped with 4 KiB pages, no IDT): one runs every block interpreted, the
/// other translated (<see cref="Cpu.RunBlockForTest"/>), and after each block the whole state the
/// guest can see is compared. A guest exception is not delivered: it is the vector the block returns,
/// with RIP left on the faulting instruction.
/// </summary>
public sealed unsafe class TierPair : IDisposable
{
    readonly List<(ulong Address, int Length)> _compared = [];

    readonly Translator? _translator;

    /// <param name="translator">With one, the translated side runs under the run loop
    /// (<see cref="RunSlice"/>) with this translator, so translations are made as a VM makes them —
    /// regions of blocks included.</param>
    public TierPair(Translator? translator = null)
    {
        _translator = translator;
        Interpreted = new InterpreterMachine();
        Translated = new InterpreterMachine(translator: translator);
    }

    public InterpreterMachine Interpreted { get; }
    public InterpreterMachine Translated { get; }

    /// <summary>Blocks run on each side so far.</summary>
    public int Blocks { get; private set; }

    /// <summary>Applies <paramref name="change"/> to both machines.</summary>
    public void Both(Action<InterpreterMachine> change)
    {
        change(Interpreted);
        change(Translated);
    }

    /// <summary>Writes the same bytes into both RAMs (the host's write path: it invalidates code there).</summary>
    public void Write(ulong address, ReadOnlySpan<byte> bytes)
    {
        Assert.True(Interpreted.Ram.TryWrite(address, bytes));
        Assert.True(Translated.Ram.TryWrite(address, bytes));
    }

    /// <summary>Adds a range of guest RAM to what is compared after every block.</summary>
    public void Compare(ulong address, int length) => _compared.Add((address, length));

    /// <summary>
    /// Runs the block at RIP on both vCPUs, then compares them; throws <see cref="TierMismatchException"/>
    /// naming the first field that differs. Returns the exception vector the block raised, if any.
    /// </summary>
    public int? RunBlock()
    {
        ulong rip = Interpreted.Cpu.Rip;
        int? interpreted = Interpreted.Cpu.RunBlockForTest(translated: false);
        int? translated = Translated.Cpu.RunBlockForTest(translated: true);
        Blocks++;
        if (FirstDifference(interpreted, translated) is { } difference)
        {
            throw new TierMismatchException($"after block {Blocks} (entered at 0x{rip:x}): {difference}");
        }
        return interpreted;
    }

    /// <summary>
    /// Both vCPUs run <see cref="Cpu.Run"/> with <paramref name="budget"/>, the second with its
    /// translator (see the constructor), then they are compared, how the run ended included: the
    /// run loop stops at the same block boundary on both sides. Guest exceptions are delivered
    /// (with no IDT they end in a shutdown).
    /// </summary>
    public CpuExit RunSlice(long budget)
    {
        Assert.NotNull(_translator);
        ulong rip = Interpreted.Cpu.Rip;
        CpuExit interpreted = Interpreted.Cpu.Run(budget);
        CpuExit translated = Translated.Cpu.Run(budget);
        Blocks++;
        string? difference = interpreted != translated ? $"run ended: interpreter {interpreted}, translated {translated}" : FirstDifference(null, null);
        if (difference is not null)
        {
            throw new TierMismatchException($"after slice {Blocks} of {budget} instructions (entered at 0x{rip:x}): {difference}");
        }
        return interpreted;
    }

    /// <summary>
    /// Runs block after block until one raises an exception (its vector is returned) or RIP reaches
    /// <paramref name="end"/>, at most <paramref name="maxBlocks"/> blocks (null then).
    /// </summary>
    public int? Run(ulong end, int maxBlocks = 10_000)
    {
        for (int i = 0; i < maxBlocks && Interpreted.Cpu.Rip != end; i++)
        {
            if (RunBlock() is int vector)
            {
                return vector;
            }
        }
        return null;
    }

    /// <summary>The first field in which the translated vCPU differs from the interpreting one, or null.</summary>
    public string? FirstDifference(int? interpretedVector, int? translatedVector)
    {
        Cpu a = Interpreted.Cpu, b = Translated.Cpu;
        if (interpretedVector != translatedVector)
        {
            return $"exception vector: interpreter {Show(interpretedVector)}, translated {Show(translatedVector)}";
        }
        if (a.Rip != b.Rip)
        {
            return $"RIP: interpreter 0x{a.Rip:x}, translated 0x{b.Rip:x}";
        }
        for (int r = 0; r < 16; r++)
        {
            if (a.Regs.Gpr[r] != b.Regs.Gpr[r])
            {
                return $"{(Register)((int)Register.RAX + r)}: interpreter 0x{a.Regs.Gpr[r]:x}, translated 0x{b.Regs.Gpr[r]:x}";
            }
        }
        if (a.GetFlags() != b.GetFlags())
        {
            return $"RFLAGS: interpreter 0x{a.GetFlags():x}, translated 0x{b.GetFlags():x}";
        }
        if (a.InstructionsRetired != b.InstructionsRetired)
        {
            return $"InstructionsRetired: interpreter {a.InstructionsRetired}, translated {b.InstructionsRetired}";
        }
        if (a.Cr2 != b.Cr2)
        {
            return $"CR2: interpreter 0x{a.Cr2:x}, translated 0x{b.Cr2:x}";
        }
        foreach (var (address, length) in _compared)
        {
            var x = Interpreted.Ram.GetSpan(address, length);
            var y = Translated.Ram.GetSpan(address, length);
            int at = x.CommonPrefixLength(y);
            if (at < length)
            {
                return $"memory at 0x{address + (ulong)at:x}: interpreter 0x{x[at]:x2}, translated 0x{y[at]:x2}";
            }
        }
        return null;
    }

    static string Show(int? vector) => vector is int v ? $"#{v}" : "none";

    public void Dispose()
    {
        Interpreted.Dispose();
        Translated.Dispose();
    }

    /// <summary>Encodes <paramref name="assemble"/>'s code for <paramref name="address"/>.</summary>
    public static byte[] Assemble(ulong address, Action<Assembler> assemble)
    {
        var a = new Assembler(64);
        assemble(a);
        var stream = new MemoryStream();
        a.Assemble(new StreamCodeWriter(stream), address);
        return stream.ToArray();
    }

    /// <summary>One line per instruction: address, bytes, Intel syntax.</summary>
    public static string Disassemble(ulong address, byte[] code)
    {
        var decoder = Iced.Intel.Decoder.Create(64, new ByteArrayCodeReader(code), address);
        var formatter = new IntelFormatter();
        var output = new StringOutput();
        var text = new StringBuilder();
        while (decoder.IP < address + (ulong)code.Length)
        {
            decoder.Decode(out var instruction);
            formatter.Format(instruction, output);
            int offset = (int)(instruction.IP - address);
            string bytes = Convert.ToHexString(code, offset, Math.Min(instruction.Length, code.Length - offset));
            text.Append($"{instruction.IP:x6}  {bytes,-30} {output.ToStringAndReset()}\n");
        }
        return text.ToString();
    }
}
