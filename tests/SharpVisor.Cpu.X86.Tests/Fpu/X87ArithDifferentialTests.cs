using SharpVisor.Cpu.X86.Fpu;
using SharpVisor.Cpu.X86.Tests.Harness;

namespace SharpVisor.Cpu.X86.Tests.Fpu;

/// <summary>
/// X87Arith against the host's x87 unit, bit for bit: result encodings, exception flags and the
/// condition codes the SDM defines for each instruction (the ones it calls undefined are masked out).
/// SV_FPU_CASES raises the number of random cases per instruction (default keeps the run ~1 s).
/// </summary>
public sealed partial class X87ArithDifferentialTests
{
    internal static readonly int Cases = int.TryParse(Environment.GetEnvironmentVariable("SV_FPU_CASES"), out int n) ? n : 2000;

    private const ushort Exceptions = 0x3F;
    private const ushort C0 = 0x100, C1 = 0x200, C2 = 0x400, C3 = 0x4000;

    [Flags]
    internal enum Outputs { None = 0, Out0 = 1, Out1 = 2, Mem = 4, MemHigh = 8 }

    internal delegate void Model(ref X87Frame frame);

    internal delegate void Generator(X87Inputs inputs, ref X87Frame frame);

    /// <summary>Runs generated cases on the host and the model and fails listing the first mismatches.</summary>
    internal static void Check(string name, int inputs, byte[] instruction, int outputs, Generator generate, Model model,
        Outputs compare, ushort swMask, int seed, int cases = 0)
    {
        Assert.True(NativeCode.IsSupported, "the x87 oracle needs an x86-64 Linux host");
        using var host = new X87Host(inputs, instruction, outputs);
        var random = new X87Inputs(seed);
        var failures = new List<string>();
        int count = cases > 0 ? cases : Cases;
        for (int i = 0; i < count; i++)
        {
            var frame = new X87Frame();
            generate(random, ref frame);
            X87Frame actual = frame;
            host.Run(ref actual);
            X87Frame expected = frame;
            model(ref expected);
            bool same = (actual.Sw & swMask) == (expected.Sw & swMask)
                && (!compare.HasFlag(Outputs.Out0) || actual.Out0 == expected.Out0)
                && (!compare.HasFlag(Outputs.Out1) || actual.Out1 == expected.Out1)
                && (!compare.HasFlag(Outputs.Mem) || actual.Mem == expected.Mem)
                && (!compare.HasFlag(Outputs.MemHigh) || actual.MemHigh == expected.MemHigh);
            if (!same && failures.Count < 12)
            {
                failures.Add($"{name} cw={frame.Cw:X4} in0={frame.In0} in1={frame.In1} mem={frame.Mem:X16}\n" +
                    $"   host  sw={actual.Sw & swMask:X4} out0={actual.Out0} out1={actual.Out1} mem={actual.Mem:X16}:{actual.MemHigh:X4}\n" +
                    $"   model sw={expected.Sw & swMask:X4} out0={expected.Out0} out1={expected.Out1} mem={expected.Mem:X16}:{expected.MemHigh:X4}");
            }
            else if (!same)
            {
                failures.Add("");
            }
        }
        Assert.True(failures.Count == 0, $"{failures.Count} of {count} differ:\n" + string.Join("\n", failures.Where(f => f.Length > 0)));
    }

    private static void Binary(X87Inputs r, ref X87Frame f, bool unmaskedPost)
    {
        f.Cw = r.Control(unmaskedPost).Word;
        f.In0 = r.Any();
        f.In1 = r.Random.Next(3) == 0 ? r.Any() : r.Near(f.In0);
    }

    private static void Unary(X87Inputs r, ref X87Frame f, bool unmaskedPost)
    {
        f.Cw = r.Control(unmaskedPost).Word;
        f.In0 = r.Any();
    }

    private static ushort Sw(X87Status flags) => (ushort)flags;

    // FADD/FSUB/FMUL/FDIV ST0,ST1: C1 is "rounded up", C0 C2 C3 undefined (SDM Vol. 2 FADD).
    private const ushort ArithMask = Exceptions | C1;

    [Fact]
    public void Add() => Check("fadd", 2, [0xD8, 0xC1], 2, (X87Inputs r, ref X87Frame f) => Binary(r, ref f, true),
        (ref X87Frame f) => { f.Out0 = X87Arith.Add(f.In0, f.In1, new X87Control(f.Cw), out var s); f.Out1 = f.In1; f.Sw = Sw(s); },
        Outputs.Out0 | Outputs.Out1, ArithMask, 1);

    [Fact]
    public void Sub() => Check("fsub", 2, [0xD8, 0xE1], 2, (X87Inputs r, ref X87Frame f) => Binary(r, ref f, true),
        (ref X87Frame f) => { f.Out0 = X87Arith.Sub(f.In0, f.In1, new X87Control(f.Cw), out var s); f.Sw = Sw(s); },
        Outputs.Out0, ArithMask, 2);

    [Fact]
    public void Mul() => Check("fmul", 2, [0xD8, 0xC9], 2, (X87Inputs r, ref X87Frame f) => Binary(r, ref f, true),
        (ref X87Frame f) => { f.Out0 = X87Arith.Mul(f.In0, f.In1, new X87Control(f.Cw), out var s); f.Sw = Sw(s); },
        Outputs.Out0, ArithMask, 3);

    [Fact]
    public void Div() => Check("fdiv", 2, [0xD8, 0xF1], 2, (X87Inputs r, ref X87Frame f) => Binary(r, ref f, true),
        (ref X87Frame f) => { f.Out0 = X87Arith.Div(f.In0, f.In1, new X87Control(f.Cw), out var s); f.Sw = Sw(s); },
        Outputs.Out0, ArithMask, 4);

    [Fact]
    public void Sqrt() => Check("fsqrt", 1, [0xD9, 0xFA], 1, (X87Inputs r, ref X87Frame f) => Unary(r, ref f, true),
        (ref X87Frame f) => { f.Out0 = X87Arith.Sqrt(f.In0, new X87Control(f.Cw), out var s); f.Sw = Sw(s); },
        Outputs.Out0, ArithMask, 5);
}
