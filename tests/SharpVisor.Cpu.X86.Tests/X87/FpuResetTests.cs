using System.Runtime.Intrinsics;
using SharpVisor.Cpu.X86.Fpu;
using SharpVisor.Cpu.X86.Tests.SystemInstructions;
using static Iced.Intel.AssemblerRegisters;

namespace SharpVisor.Cpu.X86.Tests.X87;

/// <summary>
/// x87/SSE state at power-up, RESET and INIT (SDM Vol. 3A 9.1.1, Table 9-1): FCW 0040H (FNINIT gives
/// 037FH), FSW 0, FTW 5555H, MXCSR 1F80H; INIT leaves the x87 and SSE state unchanged.
/// </summary>
public sealed class FpuResetTests
{
    const ulong Code = 0x10000, Image = 0x50000;

    /// <summary>The FXSAVE image (SDM Vol. 2A FXSAVE, Table 3-43) at power-on, then after FNINIT.</summary>
    [Fact]
    public void FxsaveImageAtPowerOnAndAfterFninit()
    {
        using var m = new SysMachine();
        var c = m.Cpu;
        m.EnterLongMode(); // CR4.OSFXSR set; the FPU state is the power-on one
        m.Asm(Code, 64, a =>
        {
            a.fxsave(__[Image]);
            a.fninit();
            a.fxsave(__[Image + 512]);
        });
        c.Rip = Code;
        Assert.Null(c.StepForTest());
        Assert.Equal(0x0040u, m.Ram.ReadU32(Image) & 0xFFFF);         // FCW
        Assert.Equal(0u, m.Ram.ReadU32(Image) >> 16);                 // FSW
        Assert.Equal(0xFFu, m.Ram.ReadU32(Image + 4) & 0xFF);         // abridged FTW: 5555H = all non-empty
        Assert.Equal(0x1F80u, m.Ram.ReadU32(Image + 24));             // MXCSR
        Assert.Equal(0UL, m.Ram.ReadU64(Image + 32) | m.Ram.ReadU64(Image + 160)); // ST0 and XMM0 are +0

        Assert.Null(c.StepForTest());
        Assert.Null(c.StepForTest());
        Assert.Equal(0x037Fu, m.Ram.ReadU32(Image + 512) & 0xFFFF);
        Assert.Equal(0u, m.Ram.ReadU32(Image + 512 + 4) & 0xFF);      // all empty after FNINIT
        Assert.Equal(0x1F80u, m.Ram.ReadU32(Image + 512 + 24));       // FNINIT leaves MXCSR alone
    }

    /// <summary>INIT keeps x87 and SSE state (Table 9-1 footnote); RESET restores the power-on values.</summary>
    [Fact]
    public void InitKeepsFpuStateResetDoesNot()
    {
        using var m = new SysMachine(cpuIndex: 1); // an AP: after INIT it waits for SIPI
        var c = m.Cpu;
        c.Fpu.Control = 0x027F;
        c.Fpu.Mxcsr = 0x9FC0;
        c.Fpu.Xmm[3] = System.Runtime.Intrinsics.Vector128.Create((byte)0x5A);
        c.Fpu.Tag = 0x0FFF;
        c.RaiseInit();
        Assert.Equal(CpuExit.WaitForSipi, c.Run(10));
        Assert.Equal(0x027F, c.Fpu.Control);
        Assert.Equal(0x9FC0u, c.Fpu.Mxcsr);
        Assert.Equal(0x0FFF, c.Fpu.Tag);
        Assert.Equal((byte)0x5A, c.Fpu.Xmm[3].GetElement(0));
        Assert.Equal(0xFFF0UL, c.Rip); // the rest did reset

        c.Reset();
        Assert.Equal(FpuState.PowerOnControl, c.Fpu.Control);
        Assert.Equal(0x5555, c.Fpu.Tag);
        Assert.Equal(FpuState.DefaultMxcsr, c.Fpu.Mxcsr);
        Assert.Equal((byte)0, c.Fpu.Xmm[3].GetElement(0));
    }
}
