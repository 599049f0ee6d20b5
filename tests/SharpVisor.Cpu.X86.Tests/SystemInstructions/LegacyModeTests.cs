using Iced.Intel;
using SharpVisor.Cpu.X86.Model;
using static Iced.Intel.AssemblerRegisters;

namespace SharpVisor.Cpu.X86.Tests.SystemInstructions;

/// <summary>Real-mode and 32-bit protected-mode transfers, debug registers, CR8, LMSW/SMSW, SYSENTER/SYSEXIT.</summary>
public class LegacyModeTests
{
    const ulong Code = 0x10000;

    /// <summary>Real mode INT n through the IVT and IRET back (SDM Vol. 3A 20.1.4; IRET real-mode pseudo-code).</summary>
    [Fact]
    public void RealModeIntAndIret()
    {
        using var m = new SysMachine();
        var c = m.Cpu;
        // IVT entry 0x21 -> 0x0900:0x0010 (linear 0x9010).
        m.Ram.WriteU32(0x21 * 4, 0x0900_0010);
        m.Asm(0x9010, 16, a => { a.mov(bx, 0x1234); a.iret(); });
        ulong end = m.Asm(0x8000, 16, a => { a.@int(0x21); a.nop(); });
        c.SetSegmentReal(Seg.CS, 0);
        c.SetSegmentReal(Seg.SS, 0);
        c.Rsp = 0x7000;
        c.Rip = 0x8000;
        c.SetFlags(RFlags.Reserved1 | RFlags.IF | RFlags.CF);
        Assert.Null(c.StepForTest());
        Assert.Equal(0x900, c.Segs[(int)Seg.CS].Selector);
        Assert.Equal(0x10UL, c.Rip);
        Assert.False(c.IF);
        Assert.Equal(0x7000UL - 6, c.Rsp);
        Assert.Null(c.StepForTest());
        Assert.Null(c.StepForTest()); // IRET
        Assert.Equal(0, c.Segs[(int)Seg.CS].Selector);
        Assert.Equal(0x8002UL, c.Rip);
        Assert.Equal(0x7000UL, c.Rsp);
        Assert.True(c.IF);
        Assert.True(c.CF());
        Assert.Equal(0x1234UL, c.Rbx);
        Assert.Null(m.StepUntil(end));
    }

    /// <summary>
    /// 32-bit protected mode: far CALL to a code segment pushes CS:EIP and far RET returns (SDM CALL/RET
    /// far, same privilege); RETF to an RPL-3 selector is a return to an outer level that pops SS:ESP and
    /// nulls data segments ring 3 may not use (SDM RET "RETURN-TO-OUTER-PRIVILEGE-LEVEL").
    /// </summary>
    [Fact]
    public void ProtectedModeFarCallRetAndReturnToRing3()
    {
        using var m = new SysMachine();
        var c = m.Cpu;
        CpuSetup.EnterProtectedFlat32(c, SysMachine.Code32, SysMachine.Data);
        m.LoadGdtr();
        const ulong callee = 0x20000, user = 0x30000;
        m.Asm(callee, 32, a => { a.mov(ebx, 0x5A); a.retf(); });
        m.Asm(Code, 32, a =>
        {
            a.call(SysMachine.Code32, (uint)callee);
            a.push(SysMachine.UserData | 3);
            a.push(0x60000);
            a.push(SysMachine.UserCode32 | 3);
            a.push((int)user);
            a.retf();
        });
        c.Rsp = 0x70000;
        c.Rip = Code;
        Assert.Null(c.StepForTest()); // far CALL
        Assert.Equal(callee, c.Rip);
        Assert.Equal(0x70000UL - 8, c.Rsp);
        Assert.Equal((ulong)SysMachine.Code32, m.Ram.ReadU32(0x70000 - 4));
        Assert.Equal(Code + 7, m.Ram.ReadU32(0x70000 - 8));
        Assert.Null(c.StepForTest());
        Assert.Null(c.StepForTest()); // RETF
        Assert.Equal(Code + 7, c.Rip);
        Assert.Equal(0x70000UL, c.Rsp);
        Assert.Equal(0x5AUL, c.Rbx);

        for (int i = 0; i < 5; i++)
        {
            Assert.Null(c.StepForTest());
        }
        Assert.Equal(user, c.Rip);
        Assert.Equal(3, c.Cpl);
        Assert.Equal(CpuMode.Protected, c.Mode);
        Assert.Equal(SysMachine.UserData | 3, c.Segs[(int)Seg.SS].Selector);
        Assert.Equal(0x60000UL, c.Rsp);
        Assert.Equal(0, c.Segs[(int)Seg.DS].Selector); // ring-0 data segment nulled
    }

    /// <summary>Far JMP to a code segment with DPL != CPL (non-conforming) is #GP(selector) (SDM JMP far).</summary>
    [Fact]
    public void FarJumpToMorePrivilegedCodeFaults()
    {
        using var m = new SysMachine();
        var c = m.Cpu;
        CpuSetup.EnterProtectedFlat32(c, SysMachine.UserCode32 | 3, SysMachine.UserData | 3);
        m.LoadGdtr();
        m.Asm(Code, 32, a => a.jmp(SysMachine.Code32, 0x20000));
        c.Rip = Code;
        Assert.Equal(3, c.Cpl);
        Assert.Equal(Vector.GP, c.StepForTest());
        Assert.Equal(Code, c.Rip);
    }

    /// <summary>SYSENTER/SYSEXIT in 32-bit protected mode (SDM SYSENTER, SYSEXIT): flat segments from IA32_SYSENTER_CS.</summary>
    [Fact]
    public void SysenterSysexit()
    {
        using var m = new SysMachine();
        var c = m.Cpu;
        CpuSetup.EnterProtectedFlat32(c, SysMachine.UserCode32 | 3, SysMachine.UserData | 3);
        m.LoadGdtr();
        c.Msr.SysenterCs = SysMachine.Code32;
        c.Msr.SysenterEsp = 0x80000;
        c.Msr.SysenterEip = 0x20000;
        m.Asm(0x20000, 32, a => a.sysexit());
        m.Asm(Code, 32, a => a.sysenter());
        c.Rip = Code;
        c.SetFlags(RFlags.Reserved1 | RFlags.IF);
        Assert.Null(c.StepForTest());
        Assert.Equal(0, c.Cpl);
        Assert.Equal(0x20000UL, c.Rip);
        Assert.Equal(0x80000UL, c.Rsp);
        Assert.Equal(SysMachine.Code32, c.Segs[(int)Seg.CS].Selector);
        Assert.Equal(SysMachine.Code32 + 8, c.Segs[(int)Seg.SS].Selector); // SYSENTER_CS + 8
        Assert.False(c.IF);
        c.Rdx = 0x12345;
        c.Rcx = 0x54321;
        Assert.Null(c.StepForTest());
        Assert.Equal(3, c.Cpl);
        Assert.Equal(0x12345UL, c.Rip);
        Assert.Equal(0x54321UL, c.Rsp);
        Assert.Equal((SysMachine.Code32 + 16) | 3, c.Segs[(int)Seg.CS].Selector); // SYSENTER_CS + 16
        Assert.Equal((SysMachine.Code32 + 24) | 3, c.Segs[(int)Seg.SS].Selector); // SYSENTER_CS + 24
        Assert.Equal(CpuMode.Protected, c.Mode);
    }

    /// <summary>DR4/DR5 alias DR6/DR7 unless CR4.DE (then #UD); DR6/DR7 keep their fixed bits (SDM Vol. 3B 18.2).</summary>
    [Fact]
    public void DebugRegisters()
    {
        using var m = new SysMachine();
        var c = m.Cpu;
        m.EnterLongMode();
        m.Asm(Code, 64, a => { a.mov(dr7, rax); a.mov(rbx, dr5); a.mov(dr6, rax); a.mov(rbx, dr6); });
        c.Rip = Code;
        c.Rax = 0;
        Assert.Null(c.StepForTest());
        Assert.Null(c.StepForTest());
        Assert.Equal(0x400UL, c.Rbx); // DR5 reads DR7
        Assert.Null(c.StepForTest());
        Assert.Null(c.StepForTest());
        Assert.Equal(0xFFFF_0FF0UL, c.Rbx);
        c.Cr4Value |= Cr4.DE;
        c.Rip = Code + 3;
        Assert.Equal(Vector.UD, c.StepForTest());
        c.Rax = 1UL << 32;
        c.Rip = Code;
        Assert.Equal(Vector.GP, c.StepForTest()); // DR7[63:32] must be 0
    }

    /// <summary>CR8 is TPR[7:4] (SDM Vol. 3A 11.8.6.1); reserved bits of CR8 are #GP.</summary>
    [Fact]
    public void Cr8IsTaskPriority()
    {
        using var m = new SysMachine();
        var c = m.Cpu;
        m.EnterLongMode();
        var apic = new FakeApic();
        c.Apic = apic;
        m.Asm(Code, 64, a => { a.mov(cr8, rax); a.mov(rbx, cr8); });
        c.Rip = Code;
        c.Rax = 0xA;
        Assert.Null(c.StepForTest());
        Assert.Equal(0xA0u, apic.Tpr);
        Assert.Null(c.StepForTest());
        Assert.Equal(0xAUL, c.Rbx);
        c.Rip = Code;
        c.Rax = 0x10;
        Assert.Equal(Vector.GP, c.StepForTest());
        Assert.Equal(0xA0u, apic.Tpr);
    }

    /// <summary>LMSW changes MP/EM/TS and can set but never clear PE; SMSW stores CR0[15:0] (SDM LMSW, SMSW); CLTS clears TS.</summary>
    [Fact]
    public void LmswSmswClts()
    {
        using var m = new SysMachine();
        var c = m.Cpu;
        CpuSetup.EnterProtectedFlat32(c);
        m.Asm(Code, 32, a => { a.lmsw(ax); a.smsw(__word_ptr[0x50000]); a.clts(); });
        c.Rip = Code;
        c.Rax = 0x8; // TS, PE clear
        Assert.Null(c.StepForTest());
        Assert.Equal(Cr0.PE | Cr0.TS, c.Cr0Value & 0xF);
        Assert.Null(c.StepForTest());
        Assert.Equal((uint)(c.Cr0Value & 0xFFFF), m.Ram.ReadU32(0x50000) & 0xFFFF);
        Assert.Null(c.StepForTest());
        Assert.Equal(0UL, c.Cr0Value & Cr0.TS);
    }
}
