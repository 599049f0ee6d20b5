using Iced.Intel;
using SharpVisor.Cpu.X86.Tests.Harness;

namespace SharpVisor.Cpu.X86.Tests.SystemInstructions;

/// <summary>
/// ENTER probes the byte at its new stack pointer for a write: a frame that reaches an unmapped page
/// faults on the ENTER, with RSP and RBP unchanged (the Intel host does this; the ring-3 instruction
/// test of issue 16 found that SharpVisor did not).
/// </summary>
public unsafe class EnterFrameProbeTests
{
    const ulong StackPage = 0x30000, BelowStack = 0x2F000;

    static int? RunEnter(ushort frameSize)
    {
        using var m = new InterpreterMachine();
        m.Unmap(BelowStack);
        m.Load(Instruction.Create(Code.Enterq_imm16_imm8, frameSize, 0));
        m.Cpu.Regs.Gpr[4] = StackPage + 0x10;
        m.Cpu.Regs.Gpr[5] = 0x1234;
        int? fault = m.Run();
        if (fault is not null)
        {
            Assert.Equal(StackPage + 0x10, m.Cpu.Regs.Gpr[4]);
            Assert.Equal(0x1234UL, m.Cpu.Regs.Gpr[5]);
        }
        return fault;
    }

    [Fact]
    public void AFrameEndingOnTheMappedPageRuns() => Assert.Null(RunEnter(0x8)); // new RSP = 0x30000

    [Fact]
    public void AFrameReachingAnUnmappedPageFaultsOnEnter() => Assert.Equal<int?>(Vector.PF, RunEnter(0x9)); // new RSP = 0x2FFFF
}
