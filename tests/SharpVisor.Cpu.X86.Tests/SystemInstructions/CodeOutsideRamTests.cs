using SharpVisor.Cpu.X86.Tests.Harness;

namespace SharpVisor.Cpu.X86.Tests.SystemInstructions;

/// <summary>
/// Code runs only from RAM (issue 16 defect 8). A fetch whose bytes lie outside RAM — a device's
/// MMIO page, or an address nothing claims — raises #UD at the instruction, counted, instead of
/// stopping the VM: the guest sees a fault it can handle (Linux sends SIGILL or oopses), never a
/// misleading VMM stop.
/// </summary>
public class CodeOutsideRamTests
{
    /// <summary>A physical address above the harness's 8 MiB of RAM (the HPET's page on a PC).</summary>
    const ulong OutsideRam = 0xFED0_0000;
    const ulong Page = 0x30000;

    [Fact]
    public void FetchFromAPageOutsideRamRaisesInvalidOpcode()
    {
        using var m = new InterpreterMachine();
        m.Remap(Page, OutsideRam);
        m.Cpu.Rip = Page + 0x10;
        Assert.Equal((int)Vector.UD, m.Cpu.StepForTest());
        Assert.Equal(Page + 0x10, m.Cpu.Rip); // a fault: RIP stays on the instruction
        Assert.Equal(1, m.Cpu.Counters.FetchesOutsideRam.Value);
    }

    [Fact]
    public void AnInstructionRunningOntoAPageOutsideRamRaisesInvalidOpcode()
    {
        using var m = new InterpreterMachine();
        ulong start = Page - 2;
        m.Ram.TryWrite(start, [0xB8, 0x11]); // MOV EAX, imm32 whose last three bytes would be on the next page
        m.Remap(Page, OutsideRam);
        m.Cpu.Rip = start;
        Assert.Equal((int)Vector.UD, m.Cpu.StepForTest());
        Assert.Equal(start, m.Cpu.Rip);
    }

    [Fact]
    public void APageFaultOnTheFetchStillComesFirst()
    {
        using var m = new InterpreterMachine();
        m.Unmap(Page);
        m.Cpu.Rip = Page;
        Assert.Equal((int)Vector.PF, m.Cpu.StepForTest());
        Assert.Equal(0, m.Cpu.Counters.FetchesOutsideRam.Value);
    }
}
