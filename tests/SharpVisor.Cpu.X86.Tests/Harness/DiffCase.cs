using System.Text;
using Iced.Intel;

namespace SharpVisor.Cpu.X86.Tests.Harness;

/// <summary>
/// Builds random differential cases and checks them. Conventions every family test shares:
/// RBX points into the data window (memory operands are [rbx+disp]), RSP points at the stack
/// window's top, every other GPR and the arithmetic flags are random (edge values mixed in).
/// </summary>
public sealed class DiffCase(DifferentialRunner runner, int seed)
{
    /// <summary>
    /// A case seeded from its test's name (plus <paramref name="salt"/>), the same in every process:
    /// string.GetHashCode is randomised per process, so a failure seeded from it would not reproduce.
    /// </summary>
    public DiffCase(DifferentialRunner runner, string name, int salt = 0) : this(runner, StableSeed(name) ^ salt) { }

    /// <summary>The seed of the random inputs; every difference reported names it.</summary>
    public int Seed => seed;

    /// <summary>FNV-1a over the UTF-16 code units: stable across processes and runtimes.</summary>
    public static int StableSeed(string name)
    {
        uint h = 2166136261;
        foreach (char ch in name)
        {
            h = (h ^ ch) * 16777619;
        }
        return (int)h;
    }

    public const ulong ArithFlags = 0x8D5; // CF PF AF ZF SF OF
    readonly Random _rng = new(seed);
    static readonly ulong[] s_edges = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF,
        0x7FFF_FFFF_FFFF_FFFF, 0x8000_0000_0000_0000, ulong.MaxValue, ulong.MaxValue - 1];

    public Random Rng => _rng;

    /// <summary>Use the data window below 4 GiB (<see cref="DifferentialRunner.LowDataAddress"/>): RBX points there and it is compared.</summary>
    public bool LowData { get; init; }

    /// <summary>The data window's address (the same on both sides).</summary>
    public ulong DataAddress => LowData ? DifferentialRunner.LowDataAddress : runner.DataAddress;

    /// <summary>Whether 8-bit operands of the next instruction come from AH..DH (no REX) or SIL/DIL/R8L.. (REX).</summary>
    public bool HighByteCase { get; private set; }

    /// <summary>A random 64-bit value, an edge value a quarter of the time.</summary>
    public ulong Value() => _rng.Next(4) == 0 ? s_edges[_rng.Next(s_edges.Length)] : (ulong)_rng.NextInt64() ^ ((ulong)_rng.Next() << 63);

    public unsafe X86Context RandomContext()
    {
        var ctx = default(X86Context);
        for (int i = 0; i < 16; i++)
        {
            ctx.Gpr[i] = Value();
        }
        ctx.Gpr[3] = DataAddress;             // RBX: data base
        ctx.Gpr[4] = runner.StackTop - 64;    // RSP: room above for POP tests
        ctx.Rflags = 0x202 | ((ulong)_rng.Next() & ArithFlags);
        ctx.Mxcsr = 0x1F80;
        return ctx;
    }

    public byte[] RandomData()
    {
        var d = new byte[DifferentialRunner.DataSize];
        _rng.NextBytes(d);
        return d;
    }

    /// <summary>Encodes instructions at the runner's code address.</summary>
    public byte[] Encode(params Instruction[] instructions)
    {
        var writer = new CodeWriterImpl();
        var encoder = Iced.Intel.Encoder.Create(64, writer);
        ulong ip = runner.CodeAddress;
        foreach (var ins in instructions)
        {
            encoder.Encode(ins, ip);
            ip = runner.CodeAddress + (ulong)writer.Bytes.Count;
        }
        HighByteCase = _rng.Next(2) == 0;
        return [.. writer.Bytes];
    }

    /// <summary>Runs one case and returns a description of every difference (empty when equal).</summary>
    public unsafe string Check(byte[] code, X86Context input, byte[] data, ulong flagsMask = ArithFlags, string? label = null) =>
        Check(code, input, data, flagsMask, label, 0xFFFF_FFFF, null);

    /// <summary>
    /// As above, also comparing MXCSR under <paramref name="mxcsrMask"/>; <paramref name="xmmCompare"/>
    /// (register index, native, emulated) may accept an XMM difference (approximation instructions);
    /// <paramref name="maskData"/> (native, emulated data window) may clear, on both sides, fields
    /// whose content the architecture leaves to the implementation.
    /// </summary>
    public unsafe string Check(byte[] code, X86Context input, byte[] data, ulong flagsMask, string? label, uint mxcsrMask,
        Func<int, X86Context, X86Context, bool>? xmmCompare, Action<byte[], byte[]>? maskData = null)
    {
        var o = runner.Run(code, input, data, LowData);
        maskData?.Invoke(o.NativeData, o.EmulatedData);
        var sb = new StringBuilder();
        var inXmm = new StringBuilder();
        if (o.EmulatedException is int v)
        {
            sb.Append($" exception {v} raised by the interpreter;");
        }
        else if (o.EmulatedRip != runner.CodeAddress + (ulong)code.Length)
        {
            sb.Append($" rip 0x{o.EmulatedRip:x} != 0x{runner.CodeAddress + (ulong)code.Length:x};");
        }
        var n = o.Native;
        var e = o.Emulated;
        for (int i = 0; i < 16; i++)
        {
            if (n.Gpr[i] != e.Gpr[i])
            {
                sb.Append($" {X86Context.Names[i]} native=0x{n.Gpr[i]:x} emulated=0x{e.Gpr[i]:x};");
            }
        }
        ulong mask = flagsMask | 0x400; // DF always compared
        if ((n.Rflags & mask) != (e.Rflags & mask))
        {
            sb.Append($" rflags native=0x{n.Rflags & mask:x} emulated=0x{e.Rflags & mask:x} (mask 0x{mask:x});");
        }
        for (int i = 0; i < o.NativeData.Length; i++)
        {
            if (o.NativeData[i] != o.EmulatedData[i])
            {
                sb.Append($" data[{i}] native=0x{o.NativeData[i]:x2} emulated=0x{o.EmulatedData[i]:x2};");
                break;
            }
        }
        for (int i = 0; i < 16; i++)
        {
            if (n.XmmLow(i) != e.XmmLow(i) || n.XmmHigh(i) != e.XmmHigh(i))
            {
                if (xmmCompare is null || !xmmCompare(i, n, e))
                {
                    sb.Append($" xmm{i} native={n.XmmHigh(i):x16}_{n.XmmLow(i):x16} emulated={e.XmmHigh(i):x16}_{e.XmmLow(i):x16};");
                }
            }
        }
        for (int i = 0; i < 8; i++)
        {
            if (n.Mm[i] != e.Mm[i])
            {
                sb.Append($" mm{i} native=0x{n.Mm[i]:x} emulated=0x{e.Mm[i]:x};");
            }
        }
        if ((n.Mxcsr & mxcsrMask) != (e.Mxcsr & mxcsrMask))
        {
            sb.Append($" mxcsr native=0x{n.Mxcsr:x} emulated=0x{e.Mxcsr:x} (mask 0x{mxcsrMask:x});");
        }
        if (sb.Length == 0)
        {
            return "";
        }
        for (int i = 0; i < 16; i++)
        {
            if (input.XmmLow(i) != 0 || input.XmmHigh(i) != 0)
            {
                inXmm.Append($"xmm{i}={input.XmmHigh(i):x16}_{input.XmmLow(i):x16} ");
            }
        }
        for (int i = 0; i < 8; i++)
        {
            if (input.Mm[i] != 0)
            {
                inXmm.Append($"mm{i}=0x{input.Mm[i]:x} ");
            }
        }
        var inRegs = new StringBuilder();
        inRegs.Append(inXmm);
        inRegs.Append($"mxcsr=0x{DifferentialRunner.EffectiveMxcsr(input.Mxcsr):x} ");
        for (int i = 0; i < 16; i++)
        {
            inRegs.Append($"{X86Context.Names[i]}=0x{input.Gpr[i]:x} ");
        }
        return $"{label} [{Convert.ToHexString(code)}] (case seed {seed}) in: {inRegs}rflags=0x{input.Rflags:x} =>{sb}";
    }

    sealed class CodeWriterImpl : CodeWriter
    {
        public readonly List<byte> Bytes = [];
        public override void WriteByte(byte value) => Bytes.Add(value);
    }
}
