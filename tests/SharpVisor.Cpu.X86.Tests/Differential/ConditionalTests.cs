using Iced.Intel;
using SharpVisor.Cpu.X86.Tests.Harness;
using static SharpVisor.Cpu.X86.Tests.Differential.AluTests;

namespace SharpVisor.Cpu.X86.Tests.Differential;

/// <summary>
/// CMOVcc and SETcc with every condition, register and memory forms, against the host CPU (and, as
/// every differential case, translated as well as interpreted): the random flags of each case pick
/// whether the condition holds.
/// </summary>
public class ConditionalTests : IClassFixture<RunnerFixture>
{
    readonly DifferentialRunner _runner;
    public ConditionalTests(RunnerFixture f) => _runner = f.Runner;

    static readonly string[] s_conditions = ["o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g"];

    [Fact]
    public void CmovMatchesTheHost()
    {
        var t = new DiffCase(_runner, "Cmov");
        var failures = new List<string>();
        foreach (string cc in s_conditions)
        {
            foreach (int bits in new[] { 16, 32, 64 })
            {
                var code = Parse($"Cmov{cc}_r{bits}_rm{bits}");
                for (int i = 0; i < 12; i++)
                {
                    var ins = i % 3 == 2 ? Instruction.Create(code, Pick(t, bits), Mem(t, bits)) : Instruction.Create(code, Pick(t, bits), Pick(t, bits));
                    string diff = t.Check(t.Encode(ins), t.RandomContext(), t.RandomData(), DiffCase.ArithFlags, $"cmov{cc} {bits}");
                    if (diff.Length > 0) failures.Add(diff);
                }
            }
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures.Take(10)));
    }

    [Fact]
    public void SetccMatchesTheHost()
    {
        var t = new DiffCase(_runner, "Setcc");
        var failures = new List<string>();
        foreach (string cc in s_conditions)
        {
            var code = Parse($"Set{cc}_rm8");
            for (int i = 0; i < 16; i++)
            {
                var ins = i % 4 == 3 ? Instruction.Create(code, Mem(t, 8)) : Instruction.Create(code, Pick(t, 8));
                string diff = t.Check(t.Encode(ins), t.RandomContext(), t.RandomData(), DiffCase.ArithFlags, $"set{cc}");
                if (diff.Length > 0) failures.Add(diff);
            }
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures.Take(10)));
    }
}
