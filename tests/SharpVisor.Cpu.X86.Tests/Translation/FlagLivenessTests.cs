using Iced.Intel;
using SharpVisor.Cpu.X86.Tests.Differential;
using SharpVisor.Cpu.X86.Tests.Harness;

namespace SharpVisor.Cpu.X86.Tests.Translation;

/// <summary>
/// Translated blocks skip the flag computation of an ALU instruction whose flags nothing observes
/// (BlockCompiler.LiveFlagsAfter). Random register-only sequences mixing flag writers with
/// instructions that read some flags (ADC/SBB read CF, SETcc/CMOVcc read their condition's flags,
/// INC/DEC keep CF) run on the host and both tiers: the interpreter must match the host, and the
/// translated block the interpreter exactly (DifferentialRunner checks every case both ways).
/// </summary>
public class FlagLivenessTests : IClassFixture<RunnerFixture>
{
    readonly DifferentialRunner _runner;
    public FlagLivenessTests(RunnerFixture f) => _runner = f.Runner;

    static readonly Code[] s_binary64 = [Code.Add_rm64_r64, Code.Adc_rm64_r64, Code.Sub_rm64_r64, Code.Sbb_rm64_r64, Code.And_rm64_r64,
        Code.Or_rm64_r64, Code.Xor_rm64_r64, Code.Cmp_rm64_r64, Code.Test_rm64_r64];
    static readonly Code[] s_binary32 = [Code.Add_rm32_r32, Code.Adc_rm32_r32, Code.Sub_rm32_r32, Code.Sbb_rm32_r32, Code.And_rm32_r32,
        Code.Or_rm32_r32, Code.Xor_rm32_r32, Code.Cmp_rm32_r32, Code.Test_rm32_r32];
    static readonly Code[] s_immediate = [Code.Add_rm64_imm8, Code.Adc_rm64_imm8, Code.Sub_rm32_imm8, Code.And_rm32_imm8, Code.Or_rm64_imm8, Code.Cmp_rm64_imm8];
    static readonly Code[] s_unary = [Code.Inc_rm64, Code.Dec_rm32, Code.Neg_rm64, Code.Not_rm32, Code.Inc_rm32, Code.Dec_rm64];
    static readonly Code[] s_readers = [Code.Setb_rm8, Code.Sete_rm8, Code.Setl_rm8, Code.Setp_rm8, Code.Seto_rm8, Code.Cmovbe_r64_rm64, Code.Cmovs_r32_rm32];

    [Fact]
    public void SkippedFlagComputationsAreNeverObservable()
    {
        var t = new DiffCase(_runner, nameof(SkippedFlagComputationsAreNeverObservable));
        var failures = new List<string>();
        for (int n = 0; n < 400; n++)
        {
            int length = 2 + t.Rng.Next(11);
            var sequence = new Instruction[length];
            for (int i = 0; i < length; i++)
            {
                sequence[i] = Random(t);
            }
            // AF is undefined after the logical operations: the host may differ there, the tiers may not.
            string diff = t.Check(t.Encode(sequence), t.RandomContext(), t.RandomData(), DiffCase.ArithFlags & ~0x10UL, $"sequence {n}");
            if (diff.Length > 0) failures.Add(diff);
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures.Take(10)));
    }

    static Instruction Random(DiffCase t)
    {
        var r64 = AluTests.Regs(64);
        var r32 = AluTests.Regs(32);
        Register R64() => r64[t.Rng.Next(r64.Length)];
        Register R32() => r32[t.Rng.Next(r32.Length)];
        switch (t.Rng.Next(10))
        {
            case < 4:
                return Instruction.Create(s_binary64[t.Rng.Next(s_binary64.Length)], R64(), R64());
            case 4:
                return Instruction.Create(s_binary32[t.Rng.Next(s_binary32.Length)], R32(), R32());
            case 5:
                var code = s_immediate[t.Rng.Next(s_immediate.Length)];
                return Instruction.Create(code, code.ToString().Contains("rm64") ? R64() : R32(), (int)(sbyte)t.Rng.Next());
            case 6:
            case 7:
                var unary = s_unary[t.Rng.Next(s_unary.Length)];
                return Instruction.Create(unary, unary.ToString().Contains("rm64") ? R64() : R32());
            default:
                var reader = s_readers[t.Rng.Next(s_readers.Length)];
                return reader.ToString().StartsWith("Set", StringComparison.Ordinal)
                    ? Instruction.Create(reader, AluTests.Regs(8)[t.Rng.Next(4)])
                    : Instruction.Create(reader, reader.ToString().Contains("r64") ? R64() : R32(), reader.ToString().Contains("r64") ? R64() : R32());
        }
    }
}
