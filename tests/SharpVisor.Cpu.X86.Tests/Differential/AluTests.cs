using Iced.Intel;
using SharpVisor.Cpu.X86.Tests.Harness;

namespace SharpVisor.Cpu.X86.Tests.Differential;

/// <summary>
/// ADD/OR/ADC/SBB/AND/SUB/XOR/CMP/TEST/INC/DEC/NEG/NOT in every form and width, against the host
/// CPU. Flags are compared except those the SDM leaves undefined (AF after logical operations).
/// </summary>
public class AluTests : IClassFixture<RunnerFixture>
{
    readonly DifferentialRunner _runner;
    public AluTests(RunnerFixture f) => _runner = f.Runner;

    // Registers used as operands: everything but RBX (data base) and RSP (stack). AH/CH/DH test the high-byte forms.
    static readonly Register[] s_r8High = [Register.AL, Register.CL, Register.DL, Register.AH, Register.CH, Register.DH];
    static readonly Register[] s_r8Rex = [Register.AL, Register.CL, Register.DL, Register.SIL, Register.DIL, Register.BPL, Register.R8L, Register.R15L];
    static readonly Register[] s_r16 = [Register.AX, Register.CX, Register.DX, Register.SI, Register.DI, Register.BP, Register.R9W, Register.R14W];
    static readonly Register[] s_r32 = [Register.EAX, Register.ECX, Register.EDX, Register.ESI, Register.EDI, Register.EBP, Register.R10D, Register.R13D];
    static readonly Register[] s_r64 = [Register.RAX, Register.RCX, Register.RDX, Register.RSI, Register.RDI, Register.RBP, Register.R11, Register.R12];

    public static Register[] Regs(int bits, bool highBytes = false) => bits switch { 8 => highBytes ? s_r8High : s_r8Rex, 16 => s_r16, 32 => s_r32, _ => s_r64 };

    [Theory]
    [InlineData("Add"), InlineData("Or"), InlineData("Adc"), InlineData("Sbb"), InlineData("And"), InlineData("Sub"), InlineData("Xor"), InlineData("Cmp")]
    public void BinaryOperationsMatchTheHost(string name)
    {
        bool logic = name is "And" or "Or" or "Xor";
        ulong mask = logic ? DiffCase.ArithFlags & ~0x10UL : DiffCase.ArithFlags;
        var t = new DiffCase(_runner, name);
        var failures = new List<string>();
        foreach (int bits in new[] { 8, 16, 32, 64 })
        {
            string w = bits.ToString();
            var forms = new List<(string Label, Func<Instruction>)>
            {
                ($"{name} r{w},r{w}", () => Instruction.Create(Parse($"{name}_rm{w}_r{w}"), Pick(t, bits), Pick(t, bits))),
                ($"{name} r{w},m{w}", () => Instruction.Create(Parse($"{name}_r{w}_rm{w}"), Pick(t, bits), Mem(t, bits))),
                ($"{name} m{w},r{w}", () => Instruction.Create(Parse($"{name}_rm{w}_r{w}"), Mem(t, bits), Pick(t, bits))),
                ($"{name} r{w},imm", () => Instruction.Create(Parse($"{name}_rm{w}_imm{(bits == 64 ? 32 : bits)}"), Pick(t, bits), Imm(t, bits))),
                ($"{name} m{w},imm", () => Instruction.Create(Parse($"{name}_rm{w}_imm{(bits == 64 ? 32 : bits)}"), Mem(t, bits), Imm(t, bits))),
            };
            if (bits > 8)
            {
                forms.Add(($"{name} r{w},imm8", () => Instruction.Create(Parse($"{name}_rm{w}_imm8"), Pick(t, bits), (int)(sbyte)t.Rng.Next())));
            }
            foreach (var (label, make) in forms)
            {
                for (int i = 0; i < 40; i++)
                {
                    string diff = t.Check(t.Encode(make()), t.RandomContext(), t.RandomData(), mask, label);
                    if (diff.Length > 0) failures.Add(diff);
                }
            }
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures.Take(10)));
    }

    [Theory]
    [InlineData("Inc"), InlineData("Dec"), InlineData("Neg"), InlineData("Not")]
    public void UnaryOperationsMatchTheHost(string name)
    {
        var t = new DiffCase(_runner, name);
        var failures = new List<string>();
        foreach (int bits in new[] { 8, 16, 32, 64 })
        {
            for (int i = 0; i < 60; i++)
            {
                var code = Parse($"{name}_rm{bits}");
                var ins = i % 2 == 0 ? Instruction.Create(code, Pick(t, bits)) : Instruction.Create(code, Mem(t, bits));
                string diff = t.Check(t.Encode(ins), t.RandomContext(), t.RandomData(), DiffCase.ArithFlags, $"{name}{bits}");
                if (diff.Length > 0) failures.Add(diff);
            }
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures.Take(10)));
    }

    [Fact]
    public void TestMatchesTheHost()
    {
        var t = new DiffCase(_runner, 7);
        var failures = new List<string>();
        foreach (int bits in new[] { 8, 16, 32, 64 })
        {
            for (int i = 0; i < 60; i++)
            {
                var ins = (i % 3) switch
                {
                    0 => Instruction.Create(Parse($"Test_rm{bits}_r{bits}"), Pick(t, bits), Pick(t, bits)),
                    1 => Instruction.Create(Parse($"Test_rm{bits}_r{bits}"), Mem(t, bits), Pick(t, bits)),
                    _ => Instruction.Create(Parse($"Test_rm{bits}_imm{(bits == 64 ? 32 : bits)}"), Pick(t, bits), Imm(t, bits)),
                };
                string diff = t.Check(t.Encode(ins), t.RandomContext(), t.RandomData(), DiffCase.ArithFlags & ~0x10UL, $"test{bits}");
                if (diff.Length > 0) failures.Add(diff);
            }
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures.Take(10)));
    }

    [Fact]
    public void LockedReadModifyWriteMatchesTheHost()
    {
        var t = new DiffCase(_runner, 11);
        var failures = new List<string>();
        foreach (var name in new[] { "Add", "Sub", "And", "Or", "Xor", "Adc", "Sbb" })
        {
            foreach (int bits in new[] { 8, 16, 32, 64 })
            {
                var ins = Instruction.Create(Parse($"{name}_rm{bits}_r{bits}"), Mem(t, bits), Pick(t, bits));
                ins.HasLockPrefix = true;
                string diff = t.Check(t.Encode(ins), t.RandomContext(), t.RandomData(), DiffCase.ArithFlags & ~0x10UL, $"lock {name}{bits}");
                if (diff.Length > 0) failures.Add(diff);
            }
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures.Take(10)));
    }

    public static Code Parse(string name) => Enum.Parse<Code>(name);

    public static Register Pick(DiffCase t, int bits)
    {
        var set = Regs(bits, t.HighByteCase);
        return set[t.Rng.Next(set.Length)];
    }

    /// <summary>[rbx + disp] inside the data window, sometimes unaligned, sometimes near its end.</summary>
    public static MemoryOperand Mem(DiffCase t, int bits) => new(Register.RBX, t.Rng.Next(DifferentialRunner.DataSize - 16));

    public static int Imm(DiffCase t, int bits) => bits switch
    {
        8 => (sbyte)t.Value(),
        16 => (short)t.Value(),
        _ => (int)t.Value(),
    };
}

/// <summary>One native/emulated runner per test class (it owns executable pages and guest RAM).</summary>
public sealed class RunnerFixture : IDisposable
{
    public DifferentialRunner Runner { get; } = new();
    public void Dispose() => Runner.Dispose();
}
