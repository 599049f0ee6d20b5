using Iced.Intel;
using SharpVisor.Core;
using SharpVisor.Cpu.X86.Model;
using SharpVisor.Cpu.X86.Translation;
using static Iced.Intel.AssemblerRegisters;

namespace SharpVisor.Cpu.X86.Tests.Translation;

/// <summary>The translator's policy: what becomes translated, the capacity bound, and that results
/// do not depend on it (a 64-bit guest loop over several blocks, run with and without translation).</summary>
public class TranslatorTests
{
    const ulong CodePa = 0x10_0000, DataPa = 0x20_0000, TablesPa = 0x80_0000;

    /// <summary>A loop of four blocks (a chain of jumps) summing a table: RAX is the result. With
    /// <paramref name="pagePerBlock"/> each block lies on a page of its own, so no translation can
    /// cover more than one (see <see cref="RegionBuilder"/>).</summary>
    static byte[] Program(bool pagePerBlock = false, int iterations = 5000)
    {
        byte[] gap = new byte[pagePerBlock ? 0x1000 : 0];
        var a = new Assembler(64);
        var top = a.CreateLabel();
        var second = a.CreateLabel();
        var third = a.CreateLabel();
        var fourth = a.CreateLabel();
        var done = a.CreateLabel();
        a.mov(rcx, iterations);
        a.xor(eax, eax);
        a.mov(rsi, (long)DataPa);
        a.Label(ref top);
        a.add(rax, __qword_ptr[rsi]);
        a.jmp(second);
        a.db(gap);
        a.Label(ref second);
        a.imul(rax, rax, 3);
        a.jmp(third);
        a.db(gap);
        a.Label(ref third);
        a.xor(rax, rcx);
        a.jmp(fourth);
        a.db(gap);
        a.Label(ref fourth);
        a.dec(rcx);
        a.jnz(top);
        a.Label(ref done);
        a.hlt();
        using var ms = new MemoryStream();
        a.Assemble(new StreamCodeWriter(ms), CodePa);
        return ms.ToArray();
    }

    static (Cpu Cpu, GuestMemory Ram) Machine(Translator? translator, bool pagePerBlock = false, int iterations = 5000)
    {
        var ram = new GuestMemory(16 << 20);
        var platform = new CpuPlatform { Memory = new PhysicalMemoryMap(ram), Ports = new PortBus(), Clock = new VirtualClock(ClockMode.Deterministic), Translator = translator };
        var cpu = new Cpu(0, platform);
        ram.WriteU64(TablesPa, (TablesPa + 0x1000) | 3);
        ram.WriteU64(TablesPa + 0x1000, (TablesPa + 0x2000) | 3);
        for (ulong i = 0; i < 8; i++)
        {
            ram.WriteU64(TablesPa + 0x2000 + i * 8, (i << 21) | 0x83);
        }
        CpuSetup.EnterLongMode(cpu, TablesPa);
        ram.TryWrite(CodePa, Program(pagePerBlock, iterations));
        ram.WriteU64(DataPa, 0x1234_5678_9ABC_DEF1);
        cpu.Rip = CodePa;
        return (cpu, ram);
    }

    static unsafe (ulong Rax, long Retired) RunToHlt(Cpu cpu)
    {
        for (int i = 0; i < 1000 && !cpu.Halted; i++)
        {
            cpu.Run(100_000);
        }
        Assert.True(cpu.Halted);
        return (cpu.Regs.Gpr[0], cpu.InstructionsRetired);
    }

    [Fact]
    public void HotBlocksAreTranslatedAndTheResultIsTheInterpreters()
    {
        var (reference, ram0) = Machine(null);
        using var _ = ram0;
        var expected = RunToHlt(reference);

        using var translator = new Translator(new Log(), threshold: 10, background: false);
        var (cpu, ram) = Machine(translator);
        using var __ = ram;
        Assert.Equal(expected, RunToHlt(cpu));
        // Each of the loop's blocks became hot (not the run-once prologue), and each translation is
        // a region holding the whole loop, which then ran to its end in one call: 8 instructions an
        // iteration, all translated from the 12th iteration on.
        Assert.Equal(4, translator.Counters.BlocksTranslated.Value);
        Assert.Equal(16, translator.Counters.RegionBlocks.Value);
        Assert.True(cpu.Counters.TranslatedBlockRuns.Value <= 2, $"{cpu.Counters.TranslatedBlockRuns.Value} calls of translated code");
        Assert.True(cpu.Counters.TranslatedInstructions.Value >= 8 * (5000 - 12), $"{cpu.Counters.TranslatedInstructions.Value} instructions translated");
    }

    [Fact]
    public void BlocksOnPagesOfTheirOwnAreTranslatedOneByOne()
    {
        var (reference, ram0) = Machine(null, pagePerBlock: true);
        using var _ = ram0;
        var expected = RunToHlt(reference);

        using var translator = new Translator(new Log(), threshold: 10, background: false);
        var (cpu, ram) = Machine(translator, pagePerBlock: true);
        using var __ = ram;
        Assert.Equal(expected, RunToHlt(cpu));
        Assert.Equal(4, translator.Counters.BlocksTranslated.Value);
        Assert.Equal(4, translator.Counters.RegionBlocks.Value);
        // Each loop block runs 5000 times, translated from its 11th run (the first pass through the
        // first one is part of the prologue's block): everything after the threshold ran translated,
        // and the translations went on from one to the next themselves: the run loop entered
        // translated code once (nothing else happens in the loop: no event, budget left).
        Assert.Equal(3 * (5000 - 10) + (4999 - 10), cpu.Counters.TranslatedBlockRuns.Value + cpu.Counters.ChainedTransitions.Value);
        Assert.Equal(1, cpu.Counters.TranslatedBlockRuns.Value);
    }

    /// <summary>
    /// Translations go on to the next one with a tail call (<see cref="Cpu.ChainFrom"/>): four
    /// million transitions in one run take no stack (as nested calls they would overflow it many
    /// times over), and the result is the interpreter's.
    /// </summary>
    [Fact]
    public unsafe void ChainingFromTranslationToTranslationTakesNoStack()
    {
        const int Iterations = 1_000_000;
        var (reference, ram0) = Machine(null, pagePerBlock: true, Iterations);
        using var _ = ram0;
        var expected = RunToHlt(reference);

        using var translator = new Translator(new Log(), threshold: 10, background: false);
        var (cpu, ram) = Machine(translator, pagePerBlock: true, Iterations);
        using var __ = ram;
        while (!cpu.Halted)
        {
            cpu.Run(100_000_000);
        }
        Assert.Equal(expected, (cpu.Regs.Gpr[0], cpu.InstructionsRetired));
        Assert.True(cpu.Counters.ChainedTransitions.Value > 4 * (Iterations - 20), $"{cpu.Counters.ChainedTransitions.Value} chained transitions");
    }

    /// <summary>The runtime's stub in front of a dynamic method is the one CompiledRegion knows how
    /// to read, so translated code is called at its native entry point (else through the delegate:
    /// correct, and slower — this fails when a runtime update changes the stub).</summary>
    [Fact]
    public void TranslatedCodeIsCalledAtItsNativeEntryPoint()
    {
        using var translator = new Translator(new Log(), threshold: 10, background: false);
        var (cpu, ram) = Machine(translator, pagePerBlock: true);
        using var _ = ram;
        cpu.Run(1_000);
        var translated = cpu.BlocksForTest().Where(b => b.Compiled != null).ToArray();
        Assert.NotEmpty(translated);
        Assert.All(translated, b => Assert.NotEqual(0, b.Compiled!.Entry));
    }

    /// <summary>Chained translations stop where the run loop would: a run's budget is overshot by at
    /// most the translation running when it was reached.</summary>
    [Fact]
    public void ChainedTranslationsKeepToTheRunsBudget()
    {
        using var translator = new Translator(new Log(), threshold: 10, background: false);
        var (cpu, ram) = Machine(translator, pagePerBlock: true);
        using var _ = ram;
        cpu.Run(1_000); // every loop block translated
        long chained = cpu.Counters.ChainedTransitions.Value;
        for (int budget = 1; budget < 200; budget += 7)
        {
            long before = cpu.InstructionsRetired;
            Assert.Equal(CpuExit.BudgetExhausted, cpu.Run(budget));
            long retired = cpu.InstructionsRetired - before;
            Assert.InRange(retired, budget, budget + 1); // each translation is one 2-instruction block
        }
        Assert.True(cpu.Counters.ChainedTransitions.Value > chained + 1000);
    }

    [Fact]
    public void AtMostCapacityBlocksHoldTranslatedCode()
    {
        var (reference, ram0) = Machine(null, pagePerBlock: true);
        using var _ = ram0;
        var expected = RunToHlt(reference);

        using var translator = new Translator(new Log(), threshold: 10, capacity: 2, background: false);
        var (cpu, ram) = Machine(translator, pagePerBlock: true);
        using var __ = ram;
        Assert.Equal(expected, RunToHlt(cpu));
        Assert.True(cpu.BlocksForTest().Count(b => b.Compiled != null) <= 2);
        Assert.True(translator.Counters.Evictions.Value > 0);
        Assert.True(translator.Counters.BlocksTranslated.Value > 4); // evicted blocks became hot again
    }

    [Fact]
    public void BlocksBelowTheThresholdStayInterpreted()
    {
        using var translator = new Translator(new Log(), threshold: 100_000, background: false);
        var (cpu, ram) = Machine(translator);
        using var _ = ram;
        RunToHlt(cpu);
        Assert.Equal(0, translator.Counters.BlocksTranslated.Value);
        Assert.Equal(0, cpu.Counters.TranslatedBlockRuns.Value);
    }
}
