using CsCheck;
using SharpVisor.Cpu.X86.Decode;
using Xunit.Abstractions;

namespace SharpVisor.Cpu.X86.Tests.Translation;

/// <summary>
/// Generated multi-block programs (<see cref="RandomProgram"/>) run block by block on two identical
/// vCPUs, one interpreting and one translated (<see cref="TierPair"/>), with the whole state compared
/// after every block exit. CI runs a fixed set (the same programs every time, from a fixed seed); a
/// failure is shrunk by CsCheck to a small program, printed with its disassembly.
/// </summary>
/// <remarks>
/// Locally: <c>SV_RANDPROG_SEED</c> (a number) picks other programs and <c>SV_RANDPROG_COUNT</c>
/// runs more of them, e.g. <c>SV_RANDPROG_SEED=7 SV_RANDPROG_COUNT=5000 dotnet test --filter RandomProgram</c>;
/// <c>SV_RANDPROG_REPLAY</c> runs the one program a CsCheck seed names (as a failure prints it) and
/// prints it whole (CsCheck cuts long programs short).
/// </remarks>
public sealed unsafe class RandomProgramTests(ITestOutputHelper output)
{
    const ulong DefaultSeed = 10;
    /// <summary>Sized for about 10 s on the project's 2-core machine.</summary>
    const int DefaultCount = 150;
    const int MaxBlocks = 20_000;

    /// <summary>What one run saw, for the coverage check and the log.</summary>
    sealed class Tally
    {
        public long CodeWrites;
        public int Programs, Completed, Blocks, BlocksAtMaxOps, BlocksEndingAtPageEnd, TimedOut;
        public readonly Dictionary<int, int> EndVectors = [];
    }

    [Fact]
    public void Random_programs_run_the_same_translated_as_interpreted()
    {
        ulong seed = ulong.TryParse(Environment.GetEnvironmentVariable("SV_RANDPROG_SEED"), out ulong s) ? s : DefaultSeed;
        int count = int.TryParse(Environment.GetEnvironmentVariable("SV_RANDPROG_COUNT"), out int n) ? n : DefaultCount;
        output.WriteLine($"random programs: SV_RANDPROG_SEED={seed} SV_RANDPROG_COUNT={count}");
        var tally = new Tally();
        if (Environment.GetEnvironmentVariable("SV_RANDPROG_REPLAY") is { Length: > 0 } replay)
        {
            // Programs by their CsCheck seeds (as a failure prints them), shown whole.
            foreach (string one in replay.Split(','))
            {
                var replayed = RandomProgram.Programs.Generate(PCG.Parse(one), null, out _);
                output.WriteLine(replayed.ToString());
                Run(replayed, tally);
            }
            return;
        }
        var random = new PCG(1, seed);
        for (int i = 0; i < count; i++)
        {
            string programSeed = random.ToString(random.State); // CsCheck's seed for the program generated next
            var program = RandomProgram.Programs.Generate(random, null, out _);
            try
            {
                Run(program, tally);
            }
            catch (Exception e)
            {
                output.WriteLine($"program {i} (CsCheck seed {programSeed}) failed: {e.Message}\n{program}");
                // Let CsCheck look for a smaller failing program, starting from this one.
                RandomProgram.Programs.Sample(p => Run(p, new Tally()), seed: programSeed, time: 30, threads: 1, print: p => p.ToString());
                throw;
            }
        }
        output.WriteLine($"{tally.Programs} programs ({tally.Completed} ran to their end), {tally.Blocks} blocks ({tally.BlocksAtMaxOps} cut at {Block.MaxOps} instructions, "
            + $"{tally.BlocksEndingAtPageEnd} at a page end, {tally.CodeWrites} writes into code), {tally.TimedOut} stopped at {MaxBlocks} blocks; ended by "
            + string.Join(", ", tally.EndVectors.OrderBy(v => v.Key).Select(v => $"#{v.Key} {v.Value}")));
        if (seed == DefaultSeed && count == DefaultCount)
        {
            // The fixed programs must keep covering what the test is for (a generator change could lose it).
            Assert.True(tally.BlocksAtMaxOps > 0, "no block was cut at Block.MaxOps");
            Assert.True(tally.BlocksEndingAtPageEnd > 0, "no block was cut at a page end");
            Assert.True(tally.CodeWrites > 0, "no program wrote into its code");
            Assert.All(new[] { (int)Vector.DE, Vector.UD, Vector.PF }, v => Assert.True(tally.EndVectors.GetValueOrDefault(v) > 0, $"no program ended with #{v}"));
        }
    }

    /// <summary>Runs <paramref name="program"/> on a fresh <see cref="TierPair"/> until an exception ends it.</summary>
    static void Run(RandomProgram program, Tally tally)
    {
        using var pair = new TierPair();
        byte[] code = program.MachineCode;
        byte[] data = new byte[RandomProgram.DataBytes];
        new Random((int)program.DataSeed ^ (int)(program.DataSeed >> 32)).NextBytes(data);
        pair.Write(program.CodeAddress, code);
        pair.Write(RandomProgram.DataAddress, data);
        pair.Both(m =>
        {
            m.Unmap(RandomProgram.UnmappedPage);
            var c = m.Cpu;
            for (int i = 0; i < RandomProgram.Pool.Length; i++)
            {
                c.Regs.Gpr[RandomProgram.Pool[i]] = program.Registers[i];
            }
            c.Regs.Gpr[13] = 0;
            c.Regs.Gpr[14] = 0;
            c.Regs.Gpr[15] = RandomProgram.DataAddress;
            c.Rsp = RandomProgram.StackTop;
            c.SetFlags(program.Flags);
            c.Rip = program.CodeAddress;
        });
        pair.Compare(RandomProgram.DataAddress, RandomProgram.DataBytes);
        pair.Compare(RandomProgram.StackTop - 0x2000, 0x4000);
        pair.Compare(program.CodeAddress, code.Length);

        tally.Programs++;
        try
        {
            RunBlocks(pair, program, code, tally);
        }
        finally
        {
            tally.CodeWrites += pair.Interpreted.Cpu.Counters.CodeInvalidations.Value;
        }
    }

    static void RunBlocks(TierPair pair, RandomProgram program, byte[] code, Tally tally)
    {
        var cpu = pair.Interpreted.Cpu;
        ulong codeEnd = program.CodeAddress + (ulong)code.Length;
        for (int block = 0; block < MaxBlocks; block++)
        {
            long retired = cpu.InstructionsRetired;
            int? vector = pair.RunBlock();
            tally.Blocks++;
            if (vector is int v)
            {
                tally.EndVectors[v] = tally.EndVectors.GetValueOrDefault(v) + 1;
                if (v == Vector.UD && cpu.Rip == codeEnd - 2)
                {
                    tally.Completed++; // the UD2 after the last piece
                }
                return;
            }
            if (cpu.InstructionsRetired - retired == Block.MaxOps)
            {
                tally.BlocksAtMaxOps++;
            }
            if ((cpu.Rip & 0xFFF) == 0 && cpu.Rip > program.CodeAddress && cpu.Rip < codeEnd)
            {
                tally.BlocksEndingAtPageEnd++;
            }
        }
        tally.TimedOut++;
    }
}
