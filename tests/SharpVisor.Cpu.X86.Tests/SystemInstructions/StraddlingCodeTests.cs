using SharpVisor.Cpu.X86.Tests.Harness;

namespace SharpVisor.Cpu.X86.Tests.SystemInstructions;

/// <summary>
/// An instruction whose bytes continue on the next page is cached like any other block, but only
/// while both of its pages are unchanged: the cached copy must never outlive a write to either
/// page (self-modifying code, SDM Vol. 3A 11.6), a remapping of the second linear page, or its
/// unmapping (the fetch then faults on the second page, SDM Vol. 3A 4.7).
/// </summary>
public unsafe class StraddlingCodeTests
{
    /// <summary>MOV EAX, imm32 (B8 id) starting two bytes before the page boundary at 0x11000.</summary>
    const ulong Start = 0x10FFE;
    const ulong SecondPage = 0x11000;

    static InterpreterMachine MachineWithStraddlingMov(uint imm)
    {
        var m = new InterpreterMachine();
        m.Ram.TryWrite(Start, [0xB8, (byte)imm, (byte)(imm >> 8), (byte)(imm >> 16), (byte)(imm >> 24)]);
        return m;
    }

    static uint Execute(InterpreterMachine m)
    {
        m.Cpu.Regs.Gpr[0] = 0;
        m.Cpu.Rip = Start;
        Assert.Null(m.Cpu.StepForTest());
        Assert.Equal(Start + 5, m.Cpu.Rip);
        return (uint)m.Cpu.Regs.Gpr[0];
    }

    [Fact]
    public void IsDecodedOnceAndThenServedFromTheCache()
    {
        using var m = MachineWithStraddlingMov(0x44332211);
        Assert.Equal(0x44332211u, Execute(m));
        long decodes = m.Cpu.Counters.StraddlingDecodes.Value;
        Assert.Equal(0x44332211u, Execute(m));
        Assert.Equal(0x44332211u, Execute(m));
        Assert.Equal(decodes, m.Cpu.Counters.StraddlingDecodes.Value);
    }

    [Fact]
    public void AWriteToTheSecondPageIsSeen()
    {
        using var m = MachineWithStraddlingMov(0x44332211);
        Assert.Equal(0x44332211u, Execute(m));
        m.Ram.TryWrite(SecondPage, [0xCC, 0xDD, 0xEE]); // the immediate's upper three bytes
        Assert.Equal(0xEEDDCC11u, Execute(m));
    }

    [Fact]
    public void AWriteToTheFirstPageIsSeen()
    {
        using var m = MachineWithStraddlingMov(0x44332211);
        Assert.Equal(0x44332211u, Execute(m));
        m.Ram.TryWrite(Start + 1, [0x99]);
        Assert.Equal(0x44332299u, Execute(m));
    }

    [Fact]
    public void RemappingTheSecondLinearPageFetchesFromTheNewPhysicalPage()
    {
        using var m = MachineWithStraddlingMov(0x44332211);
        Assert.Equal(0x44332211u, Execute(m));
        const ulong other = 0x30000;
        m.Ram.TryWrite(other, [0x77, 0x66, 0x55]);
        m.Remap(SecondPage, other);
        Assert.Equal(0x55667711u, Execute(m));
    }

    [Fact]
    public void UnmappingTheSecondPageFaultsOnIt()
    {
        using var m = MachineWithStraddlingMov(0x44332211);
        Assert.Equal(0x44332211u, Execute(m));
        m.Unmap(SecondPage);
        m.Cpu.Rip = Start;
        Assert.Equal((int)Vector.PF, m.Cpu.StepForTest());
        Assert.Equal(SecondPage, m.Cpu.Cr2);
        Assert.Equal(Start, m.Cpu.Rip);
    }
}
