using SharpVisor.Cpu.X86.Model;
using static Iced.Intel.AssemblerRegisters;

namespace SharpVisor.Cpu.X86.Tests.SystemInstructions;

/// <summary>
/// The counters of refused system operations belong to the vCPU (and so to its VM): one machine's
/// guest faults do not show in another's statistics.
/// </summary>
public class CpuCounterTests
{
    const ulong Code = 0x10000;

    [Fact]
    public void RefusedSystemOperationsAreCountedPerCpu()
    {
        using var a = new SysMachine();
        using var b = new SysMachine();
        a.EnterLongMode();
        b.EnterLongMode();
        var c = a.Cpu;
        a.Asm(Code, 64, x => { x.mov(cr4, rax); x.rdmsr(); x.wrmsr(); });

        c.Rip = Code;
        c.Rax = c.Cr4Value | Cr4.VMXE; // VMX is not advertised: #GP (SDM Vol. 3A 2.5)
        Assert.Equal(Vector.GP, c.StepForTest());
        c.Rip = Code + 3;
        c.Rcx = 0x1234_5678;
        Assert.Equal(Vector.GP, c.StepForTest());
        c.Rip = Code + 5;
        c.Rcx = MsrIndex.McgCap; // read-only
        Assert.Equal(Vector.GP, c.StepForTest());

        Assert.Equal(1, c.Counters.CrWriteFaults.Value);
        Assert.Equal(1, c.Counters.UnknownMsrAccesses.Value);
        Assert.Equal(1, c.Counters.RefusedMsrWrites.Value);
        Assert.Equal(0, b.Cpu.Counters.CrWriteFaults.Value + b.Cpu.Counters.UnknownMsrAccesses.Value + b.Cpu.Counters.RefusedMsrWrites.Value);
        Assert.Contains(c.Counters.CrWriteFaults, c.Counters.All);
        Assert.Contains(c.Counters.IoPermissionFaults, c.Counters.All);
    }

    /// <summary>IN at CPL 3 with IOPL 0 and the TSS I/O map beyond its limit: #GP (SDM Vol. 1 19.5), counted on that vCPU; INS uses the same check.</summary>
    [Fact]
    public void IoPermissionFaultsAreCountedPerCpu()
    {
        using var m = new SysMachine();
        using var other = new SysMachine();
        m.EnterLongMode(cpl: 3);
        m.Ram.WriteU32(SysMachine.Tss + 0x64, 0x68u << 16); // I/O map base = 68H, past the limit 67H
        m.Asm(Code, 64, x => { x.@in(al, dx); x.insb(); });
        var c = m.Cpu;
        c.Rdx = 0x80;
        c.Rdi = 0x50000;
        c.Rip = Code;
        Assert.Equal(Vector.GP, c.StepForTest());
        c.Rip = Code + 1;
        Assert.Equal(Vector.GP, c.StepForTest());
        Assert.Equal(2, c.Counters.IoPermissionFaults.Value);
        Assert.Equal(0, other.Cpu.Counters.IoPermissionFaults.Value);
    }

    /// <summary>
    /// REP INS and REP OUTS check I/O permission before the count: with RCX = 0 a ring-3 process
    /// without permission still gets #GP, as on the Intel host (found by the ring-3 instruction test).
    /// </summary>
    [Fact]
    public void RepInsAndOutsWithAZeroCountStillCheckIoPermission()
    {
        using var m = new SysMachine();
        m.EnterLongMode(cpl: 3);
        m.Ram.WriteU32(SysMachine.Tss + 0x64, 0x68u << 16); // no I/O map: IOPL 0 < CPL 3 denies every port
        m.Asm(Code, 64, x => { x.rep.insb(); x.rep.outsb(); });
        var c = m.Cpu;
        c.Rcx = 0;
        c.Rdx = 0x80;
        c.Rip = Code;
        Assert.Equal(Vector.GP, c.StepForTest());
        c.Rip = Code + 2;
        Assert.Equal(Vector.GP, c.StepForTest());
    }
}
