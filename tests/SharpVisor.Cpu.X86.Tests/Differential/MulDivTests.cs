using Iced.Intel;
using SharpVisor.Cpu.X86.Tests.Harness;
using static SharpVisor.Cpu.X86.Tests.Differential.AluTests;

namespace SharpVisor.Cpu.X86.Tests.Differential;

/// <summary>
/// MUL, IMUL (one, two and three operands), DIV, IDIV against the host CPU in every width.
/// MUL/IMUL: only CF and OF are defined. DIV/IDIV: no flag is defined. Divisions that would raise
/// #DE are never generated for the host; they are covered by interpreter-only tests below.
/// </summary>
public unsafe class MulDivTests : IClassFixture<RunnerFixture>
{
    const ulong CF = 1, OF = 0x800;
    readonly DifferentialRunner _runner;
    public MulDivTests(RunnerFixture f) => _runner = f.Runner;

    static int Iterations => int.TryParse(Environment.GetEnvironmentVariable("SV_DIFF_ITERATIONS"), out int n) ? n : 40;

    static ulong WidthMask(int bits) => bits == 64 ? ulong.MaxValue : (1UL << bits) - 1;

    /// <summary>A source register that is not an implicit operand (rAX, rDX), so inputs stay under control.</summary>
    static Register Source(DiffCase t, int bits)
    {
        Register r;
        do
        {
            r = Pick(t, bits);
        }
        while (r.GetFullRegister() is Register.RAX or Register.RDX || r is Register.AH or Register.CH or Register.DH or Register.BH);
        return r;
    }

    [Theory]
    [InlineData("Mul"), InlineData("Imul")]
    public void OneOperandMultipliesMatchTheHost(string name)
    {
        var t = new DiffCase(_runner, name);
        var failures = new List<string>();
        foreach (int bits in new[] { 8, 16, 32, 64 })
        {
            for (int i = 0; i < Iterations; i++)
            {
                var ins = i % 2 == 0
                    ? Instruction.Create(Parse($"{name}_rm{bits}"), Pick(t, bits))
                    : Instruction.Create(Parse($"{name}_rm{bits}"), Mem(t, bits));
                string diff = t.Check(t.Encode(ins), t.RandomContext(), t.RandomData(), CF | OF, $"{name}{bits}");
                if (diff.Length > 0) failures.Add(diff);
            }
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures.Take(10)));
    }

    [Fact]
    public void TwoAndThreeOperandImulMatchTheHost()
    {
        var t = new DiffCase(_runner, 77);
        var failures = new List<string>();
        foreach (int bits in new[] { 16, 32, 64 })
        {
            string immName = bits == 16 ? "imm16" : "imm32";
            for (int i = 0; i < Iterations * 2; i++)
            {
                var ins = (i % 6) switch
                {
                    0 => Instruction.Create(Parse($"Imul_r{bits}_rm{bits}"), Pick(t, bits), Pick(t, bits)),
                    1 => Instruction.Create(Parse($"Imul_r{bits}_rm{bits}"), Pick(t, bits), Mem(t, bits)),
                    2 => Instruction.Create(Parse($"Imul_r{bits}_rm{bits}_{immName}"), Pick(t, bits), Pick(t, bits), Imm(t, bits)),
                    3 => Instruction.Create(Parse($"Imul_r{bits}_rm{bits}_{immName}"), Pick(t, bits), Mem(t, bits), Imm(t, bits)),
                    4 => Instruction.Create(Parse($"Imul_r{bits}_rm{bits}_imm8"), Pick(t, bits), Pick(t, bits), (sbyte)t.Rng.Next()),
                    _ => Instruction.Create(Parse($"Imul_r{bits}_rm{bits}_imm8"), Pick(t, bits), Mem(t, bits), (sbyte)t.Rng.Next()),
                };
                string diff = t.Check(t.Encode(ins), t.RandomContext(), t.RandomData(), CF | OF, $"imul{bits} form {i % 6}");
                if (diff.Length > 0) failures.Add(diff);
            }
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures.Take(10)));
    }

    [Theory]
    [InlineData(false), InlineData(true)]
    public void DivisionsMatchTheHost(bool signed)
    {
        string name = signed ? "Idiv" : "Div";
        var t = new DiffCase(_runner, signed ? 5 : 6);
        var failures = new List<string>();
        foreach (int bits in new[] { 8, 16, 32, 64 })
        {
            ulong m = WidthMask(bits);
            for (int i = 0; i < Iterations * 2; i++)
            {
                var ctx = t.RandomContext();
                var data = t.RandomData();
                bool mem = i % 2 == 1;
                var src = Source(t, bits);
                int disp = t.Rng.Next(DifferentialRunner.DataSize - 8);
                ulong divisor = t.Value() & m;
                if (divisor == 0) divisor = 1;
                if (t.Rng.Next(4) == 0) divisor = signed ? m : 1; // -1 and 1
                // Build a dividend whose quotient fits by construction: dividend = q * d + r with q in
                // range and |r| < |d|, r taking the dividend's sign (truncating division, SDM IDIV).
                UInt128 un;
                if (signed)
                {
                    Int128 d = (long)Cpu.SignExtend(divisor, bits);
                    Int128 q = (long)Cpu.SignExtend(t.Value() & m, bits);
                    Int128 absD = d < 0 ? -d : d;
                    Int128 r = (Int128)(t.Value() % (ulong)absD);
                    Int128 qd = q * d;
                    if (qd < 0 || (qd == 0 && t.Rng.Next(2) == 0)) r = -r;
                    un = (UInt128)(qd + r);
                }
                else
                {
                    UInt128 q = t.Value() & m;
                    un = q * divisor + t.Value() % divisor;
                }
                ulong low = (ulong)un & m, high = (ulong)(un >> bits) & m;
                unsafe
                {
                    if (bits == 8)
                    {
                        ctx.Gpr[0] = (ctx.Gpr[0] & ~0xFFFFUL) | (high << 8) | low;
                    }
                    else
                    {
                        ulong keep = bits == 64 ? 0 : ~m;
                        ctx.Gpr[0] = (ctx.Gpr[0] & keep) | low;
                        ctx.Gpr[2] = (ctx.Gpr[2] & keep) | high;
                    }
                    if (!mem)
                    {
                        ctx.Gpr[(int)src.GetFullRegister() - (int)Register.RAX] = (ctx.Gpr[(int)src.GetFullRegister() - (int)Register.RAX] & ~m) | divisor;
                    }
                }
                if (mem)
                {
                    BitConverter.GetBytes(divisor).AsSpan(0, bits / 8).CopyTo(data.AsSpan(disp));
                }
                var ins = mem
                    ? Instruction.Create(Parse($"{name}_rm{bits}"), new MemoryOperand(Register.RBX, disp))
                    : Instruction.Create(Parse($"{name}_rm{bits}"), src);
                string diff = t.Check(t.Encode(ins), ctx, data, 0, $"{name}{bits} n=0x{un:x} d=0x{divisor:x}");
                if (diff.Length > 0) failures.Add(diff);
            }
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures.Take(10)));
    }

    // ---------------------------------------------------------------- interpreter only: #DE

    public static TheoryData<string, int, ulong, ulong, ulong> DivideErrors => new()
    {
        { "Div", 8, 0x1234, 0, 0 },                       // divide by zero
        { "Div", 8, 0x1234, 0, 0x12 },                    // AH >= divisor: quotient > 0xFF
        { "Div", 16, 0x0000, 0x0010, 0x10 },              // DX >= divisor
        { "Div", 32, 0, 0xFFFF_FFFF, 0xFFFF_FFFF },
        { "Div", 64, 5, 1, 1 },
        { "Div", 64, 5, 0, 0 },
        { "Idiv", 8, 0x8000, 0, 0xFF },                   // -32768 / -1 = 32768 does not fit
        { "Idiv", 8, 0x0100, 0, 0x02 },                   // 256 / 2 = 128 > 127
        { "Idiv", 16, 0x0000, 0x8000, 0xFFFF },
        { "Idiv", 32, 0, 0x8000_0000, 0xFFFF_FFFF },      // the host's own division would trap here
        { "Idiv", 64, 0, 0x8000_0000_0000_0000, ulong.MaxValue },
        { "Idiv", 64, 0, 1, 2 },                          // 2^64 / 2 = 2^63 > long.MaxValue
        { "Idiv", 64, 1, 0, 0 },
    };

    [Theory]
    [MemberData(nameof(DivideErrors))]
    public void DivideErrorsRaiseDeAndChangeNothing(string name, int bits, ulong rax, ulong rdx, ulong divisor)
    {
        using var m = new InterpreterMachine();
        var src = bits switch { 8 => Register.CL, 16 => Register.CX, 32 => Register.ECX, _ => Register.RCX };
        m.Load(Instruction.Create(Parse($"{name}_rm{bits}"), src));
        m.Cpu.Regs.Gpr[0] = rax;
        m.Cpu.Regs.Gpr[2] = rdx;
        m.Cpu.Regs.Gpr[1] = divisor;
        m.Cpu.SetFlags(0x202 | 0x8D5);
        Assert.Equal<int?>(Vector.DE, m.Run());
        Assert.Equal(InterpreterMachine.CodeAddress, m.Cpu.Rip);
        Assert.Equal(rax, m.Cpu.Regs.Gpr[0]);
        Assert.Equal(rdx, m.Cpu.Regs.Gpr[2]);
        Assert.Equal(0x202UL | 0x8D5, m.Cpu.GetFlags());
    }

    [Fact]
    public void LargestValidQuotientsDoNotFault()
    {
        using var m = new InterpreterMachine();
        // 0xFFFF / 1 does not fit 8 bits, but 0x7F80 / 0x80 = 0xFF does: the boundary of DIV r/m8.
        m.Load(Instruction.Create(Code.Div_rm8, Register.CL));
        m.Cpu.Regs.Gpr[0] = 0x7FFF;
        m.Cpu.Regs.Gpr[1] = 0x80;
        Assert.Null(m.Run());
        Assert.Equal(0x7FFFUL, m.Cpu.Regs.Gpr[0]); // AL = 0xFF, AH = 0x7F
        // IDIV r/m64: -2^63 / 1 is the most negative representable quotient.
        m.Load(Instruction.Create(Code.Idiv_rm64, Register.RCX));
        m.Cpu.Regs.Gpr[0] = 0x8000_0000_0000_0000;
        m.Cpu.Regs.Gpr[2] = ulong.MaxValue;
        m.Cpu.Regs.Gpr[1] = 1;
        Assert.Null(m.Run());
        Assert.Equal(0x8000_0000_0000_0000UL, m.Cpu.Regs.Gpr[0]);
        Assert.Equal(0UL, m.Cpu.Regs.Gpr[2]);
    }
}
