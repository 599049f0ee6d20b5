using CsCheck;
using SharpVisor.Core;
using SharpVisor.Cpu.X86.Decode;
using SharpVisor.Cpu.X86.Translation;
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
        public long Translations, RegionBlocks, ChainedRegions;
        public readonly Dictionary<CpuExit, int> Exits = [];
    }

    [Fact]
    public void Random_programs_run_the_same_translated_as_interpreted()
    {
        var tally = RunPrograms(Run, DefaultCount, out bool fixedSet);
        output.WriteLine($"{tally.Programs} programs ({tally.Completed} ran to their end), {tally.Blocks} blocks ({tally.BlocksAtMaxOps} cut at {Block.MaxOps} instructions, "
            + $"{tally.BlocksEndingAtPageEnd} at a page end, {tally.CodeWrites} writes into code), {tally.TimedOut} stopped at {MaxBlocks} blocks; ended by "
            + string.Join(", ", tally.EndVectors.OrderBy(v => v.Key).Select(v => $"#{v.Key} {v.Value}")));
        if (fixedSet)
        {
            // The fixed programs must keep covering what the test is for (a generator change could lose it).
            Assert.True(tally.BlocksAtMaxOps > 0, "no block was cut at Block.MaxOps");
            Assert.True(tally.BlocksEndingAtPageEnd > 0, "no block was cut at a page end");
            Assert.True(tally.CodeWrites > 0, "no program wrote into its code");
            Assert.All(new[] { (int)Vector.DE, Vector.UD, Vector.PF }, v => Assert.True(tally.EndVectors.GetValueOrDefault(v) > 0, $"no program ended with #{v}"));
        }
    }

    /// <summary>
    /// The same programs under the run loop (<see cref="Cpu.Run"/>) in slices of varying budgets, the
    /// translated side with a translator that translates a block on its second run: so translations
    /// are made as in a VM, regions of several blocks (loops within a page) included, and each slice
    /// must stop at the same block boundary with the same state and instruction count. Guest
    /// exceptions are delivered here (no IDT: they end in a shutdown).
    /// </summary>
    [Fact]
    public void Random_programs_run_the_same_under_the_run_loop_with_translated_regions()
    {
        var tally = RunPrograms(RunUnderRunLoop, DefaultCount / 2, out bool fixedSet);
        output.WriteLine($"{tally.Programs} programs, {tally.Blocks} slices, {tally.CodeWrites} writes into code; {tally.Translations} translations holding {tally.RegionBlocks} blocks, "
            + $"{tally.ChainedRegions} of them regions that go from block to block; runs ended by " + string.Join(", ", tally.Exits.OrderBy(v => v.Key).Select(v => $"{v.Key} {v.Value}")));
        if (fixedSet)
        {
            Assert.True(tally.ChainedRegions > 0, "no translation held a loop of blocks");
            Assert.True(tally.Exits.GetValueOrDefault(CpuExit.Shutdown) > 0, "no program faulted");
            Assert.True(tally.CodeWrites > 0, "no program wrote into its code");
        }
    }

    Tally RunPrograms(Action<RandomProgram, Tally> run, int defaultCount, out bool fixedSet)
    {
        ulong seed = ulong.TryParse(Environment.GetEnvironmentVariable("SV_RANDPROG_SEED"), out ulong s) ? s : DefaultSeed;
        int count = int.TryParse(Environment.GetEnvironmentVariable("SV_RANDPROG_COUNT"), out int n) ? n : defaultCount;
        fixedSet = false;
        output.WriteLine($"random programs: SV_RANDPROG_SEED={seed} SV_RANDPROG_COUNT={count}");
        var tally = new Tally();
        if (Environment.GetEnvironmentVariable("SV_RANDPROG_REPLAY") is { Length: > 0 } replay)
        {
            // Programs by their CsCheck seeds (as a failure prints them), shown whole.
            foreach (string one in replay.Split(','))
            {
                var replayed = RandomProgram.Programs.Generate(PCG.Parse(one), null, out _);
                output.WriteLine(replayed.ToString());
                run(replayed, tally);
            }
            return tally;
        }
        var random = new PCG(1, seed);
        for (int i = 0; i < count; i++)
        {
            string programSeed = random.ToString(random.State); // CsCheck's seed for the program generated next
            var program = RandomProgram.Programs.Generate(random, null, out _);
            try
            {
                run(program, tally);
            }
            catch (Exception e)
            {
                output.WriteLine($"program {i} (CsCheck seed {programSeed}) failed: {e.Message}\n{program}");
                // Let CsCheck look for a smaller failing program, starting from this one.
                RandomProgram.Programs.Sample(p => run(p, new Tally()), seed: programSeed, time: 30, threads: 1, print: p => p.ToString());
                throw;
            }
        }
        fixedSet = seed == DefaultSeed && count == defaultCount;
        return tally;
    }

    /// <summary>Runs <paramref name="program"/> on a fresh <see cref="TierPair"/> until an exception ends it.</summary>
    static void Run(RandomProgram program, Tally tally)
    {
        using var pair = Load(new TierPair(), program);
        tally.Programs++;
        try
        {
            RunBlocks(pair, program, program.MachineCode, tally);
        }
        finally
        {
            tally.CodeWrites += pair.Interpreted.Cpu.Counters.CodeInvalidations.Value;
        }
    }

    /// <summary>Runs <paramref name="program"/> under the run loop until it shuts down (a fault), halts or has run long enough.</summary>
    static void RunUnderRunLoop(RandomProgram program, Tally tally)
    {
        using var translator = new Translator(new Log(), threshold: 2, background: false);
        using var pair = Load(new TierPair(translator), program);
        tally.Programs++;
        try
        {
            for (int slice = 0; slice < MaxSlices; slice++)
            {
                // Budgets from 1 to 199 instructions: slices end inside loops, at varying points.
                CpuExit exit = pair.RunSlice(1 + (slice * 37 + (int)(program.DataSeed & 0xFF)) % 199);
                tally.Blocks++;
                if (exit != CpuExit.BudgetExhausted)
                {
                    tally.Exits[exit] = tally.Exits.GetValueOrDefault(exit) + 1;
                    return;
                }
            }
            tally.TimedOut++;
        }
        finally
        {
            tally.CodeWrites += pair.Interpreted.Cpu.Counters.CodeInvalidations.Value;
            tally.Translations += translator.Counters.BlocksTranslated.Value;
            tally.RegionBlocks += translator.Counters.RegionBlocks.Value;
            tally.ChainedRegions += translator.Counters.ChainedRegions.Value;
        }
    }

    const int MaxSlices = 2_000;

    /// <summary>Puts <paramref name="program"/>, its data and its registers on both sides of <paramref name="pair"/>.</summary>
    static TierPair Load(TierPair pair, RandomProgram program)
    {
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
        return pair;
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
