using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace SharpVisor.Cpu.X86.Tests.SystemInstructions;

/// <summary>SYSCALL/SYSRET, IRETQ to ring 3, interrupt delivery through an IST stack, SWAPGS, LTR.</summary>
public unsafe class PrivilegeTransferTests
{
    const ulong KernelEntry = 0x10000, UserCode = 0x20000;

    /// <summary>
    /// SDM Vol. 2B SYSCALL/SYSRET: CS/SS from STAR, RIP from LSTAR, RCX/R11 hold the return RIP and
    /// RFLAGS, RFLAGS is masked by SFMASK; SYSRETQ returns to STAR[63:48]+16 | 3 with RFLAGS from R11.
    /// (Linux: entry_SYSCALL_64 with STAR = __USER32_CS << 48 | __KERNEL_CS << 32.)
    /// </summary>
    [Fact]
    public void SyscallSysretRoundTrip()
    {
        using var m = new SysMachine();
        var c = m.Cpu;
        m.EnterLongMode(cpl: 3);
        c.Msr.Star = (0x23UL << 48) | (0x10UL << 32);
        c.Msr.Lstar = KernelEntry;
        c.Msr.Sfmask = RFlags.IF | RFlags.DF | RFlags.TF | RFlags.AC;
        m.Asm(KernelEntry, 64, a =>
        {
            a.mov(rbx, 0x77);
            a.sysretq();
        });
        ulong userEnd = m.Asm(UserCode, 64, a =>
        {
            a.syscall();
            a.nop();
        });
        c.SetFlags(RFlags.Reserved1 | RFlags.IF | RFlags.DF | RFlags.CF);
        c.Rip = UserCode;

        Assert.Null(c.StepForTest()); // SYSCALL
        Assert.Equal(KernelEntry, c.Rip);
        Assert.Equal(0, c.Cpl);
        Assert.Equal(0x10, c.Segs[(int)Seg.CS].Selector);
        Assert.Equal(0x18, c.Segs[(int)Seg.SS].Selector);
        Assert.Equal(CpuMode.Long64, c.Mode);
        Assert.Equal(UserCode + 2, c.Rcx);
        Assert.Equal(RFlags.Reserved1 | RFlags.IF | RFlags.DF | RFlags.CF, c.Regs.Gpr[11]);
        Assert.Equal(RFlags.Reserved1 | RFlags.CF, c.GetFlags()); // IF and DF masked off

        Assert.Null(c.StepForTest()); // mov rbx
        Assert.Null(c.StepForTest()); // SYSRETQ
        Assert.Equal(UserCode + 2, c.Rip);
        Assert.Equal(3, c.Cpl);
        Assert.Equal(0x33, c.Segs[(int)Seg.CS].Selector);
        Assert.Equal(0x2B, c.Segs[(int)Seg.SS].Selector);
        Assert.Equal(CpuMode.Long64, c.Mode);
        Assert.Equal(RFlags.Reserved1 | RFlags.IF | RFlags.DF | RFlags.CF, c.GetFlags());
        Assert.Null(m.StepUntil(userEnd));
    }

    /// <summary>SDM SYSRET: a non-canonical RCX raises #GP(0) while still in ring 0 (Intel behaviour).</summary>
    [Fact]
    public void SysretWithNonCanonicalRcxFaultsInRing0()
    {
        using var m = new SysMachine();
        var c = m.Cpu;
        m.EnterLongMode();
        c.Msr.Star = 0x23UL << 48;
        m.Asm(KernelEntry, 64, a => a.sysretq());
        c.Rip = KernelEntry;
        c.Rcx = 0x0000_8000_0000_0000;
        Assert.Equal(Vector.GP, c.StepForTest());
        Assert.Equal(0, c.Cpl);
        Assert.Equal(0x10, c.Segs[(int)Seg.CS].Selector);
    }

    /// <summary>SYSCALL with EFER.SCE clear is #UD (SDM SYSCALL).</summary>
    [Fact]
    public void SyscallWithoutSceIsUd()
    {
        using var m = new SysMachine();
        var c = m.Cpu;
        m.EnterLongMode(cpl: 3);
        c.EferValue &= ~Efer.SCE;
        m.Asm(UserCode, 64, a => a.syscall());
        c.Rip = UserCode;
        Assert.Equal(Vector.UD, c.StepForTest());
    }

    /// <summary>
    /// IRETQ from ring 0 to ring 3 pops RIP, CS, RFLAGS, RSP, SS (SDM IRET, IA-32e mode); INT 0x80
    /// from ring 3 through a DPL-3 interrupt gate with IST1 switches to the IST stack and pushes
    /// SS, RSP, RFLAGS, CS, RIP (SDM Vol. 3A 6.14.2, 6.14.5). LTR marks the TSS busy (7.2.4).
    /// </summary>
    [Fact]
    public void IretqToRing3AndBackThroughIstGate()
    {
        using var m = new SysMachine();
        var c = m.Cpu;
        m.EnterLongMode();
        c.Tr = default;
        const ulong istTop = 0x90000, rsp0 = 0x80000, userStack = 0x60000, handler = 0x30000;
        m.Ram.WriteU64(SysMachine.Tss + 4, rsp0);
        m.Ram.WriteU64(SysMachine.Tss + 36, istTop);
        m.SetGate(0x80, handler, dpl: 3, ist: 1);
        m.Asm(handler, 64, a => a.hlt());
        ulong intAt = UserCode;
        m.Asm(UserCode, 64, a => a.@int(0x80));
        m.Asm(KernelEntry, 64, a =>
        {
            a.mov(ax, SysMachine.TssSel);
            a.ltr(ax);
            a.push(SysMachine.UserData | 3);
            a.push((int)userStack);
            a.push(0x202);
            a.push(SysMachine.UserCode64 | 3);
            a.push((int)UserCode);
            a.iretq();
        });
        c.Rsp = 0x70000;
        c.Rip = KernelEntry;

        Assert.Null(m.StepUntil(UserCode));
        Assert.Equal(3, c.Cpl);
        Assert.Equal(SysMachine.UserCode64 | 3, c.Segs[(int)Seg.CS].Selector);
        Assert.Equal(SysMachine.UserData | 3, c.Segs[(int)Seg.SS].Selector);
        Assert.Equal(userStack, c.Rsp);
        Assert.True(c.IF);
        Assert.Equal(0xB, (int)(m.Ram.ReadU64(SysMachine.Gdt + SysMachine.TssSel) >> 40) & 0xF); // busy TSS

        var exit = c.Run(10);
        Assert.Equal(CpuExit.Halted, exit);
        Assert.Equal(0, c.Cpl);
        Assert.Equal(handler + 1, c.Rip);
        Assert.Equal(istTop - 40, c.Rsp);
        Assert.Equal(intAt + 2, m.Ram.ReadU64(istTop - 40));                       // RIP after INT
        Assert.Equal((ulong)(SysMachine.UserCode64 | 3), m.Ram.ReadU64(istTop - 32)); // CS
        Assert.Equal((ulong)(SysMachine.UserData | 3), m.Ram.ReadU64(istTop - 8));    // SS
        Assert.Equal(userStack, m.Ram.ReadU64(istTop - 16));                          // RSP
        Assert.False(c.IF);                                                            // interrupt gate
    }

    /// <summary>IRET clears NMI blocking (SDM Vol. 3A 6.7.1).</summary>
    [Fact]
    public void IretUnblocksNmi()
    {
        using var m = new SysMachine();
        var c = m.Cpu;
        m.EnterLongMode();
        m.Asm(KernelEntry, 64, a =>
        {
            a.mov(rax, rsp);
            a.push(SysMachine.Data);
            a.push(rax);
            a.pushfq();
            a.push(SysMachine.Code64);
            a.push((int)(KernelEntry + 0x100));
            a.iretq();
        });
        c.Rsp = 0x70000;
        c.Rip = KernelEntry;
        c.NmiBlocked = true;
        Assert.Null(m.StepUntil(KernelEntry + 0x100));
        Assert.False(c.NmiBlocked);
        Assert.Equal(0x70000UL, c.Rsp);
    }

    /// <summary>SWAPGS exchanges GS.base and IA32_KERNEL_GS_BASE; CPL 0 only (SDM Vol. 2B SWAPGS).</summary>
    [Fact]
    public void SwapgsExchangesBases()
    {
        using var m = new SysMachine();
        var c = m.Cpu;
        m.EnterLongMode();
        m.Asm(KernelEntry, 64, a =>
        {
            a.swapgs();
            a.mov(rax, __qword_ptr.gs[8]);
        });
        c.Segs[(int)Seg.GS].Base = 0x1111;
        c.UpdateMode();
        c.Msr.KernelGsBase = 0x40000;
        m.Ram.WriteU64(0x40008, 0xFEED);
        c.Rip = KernelEntry;
        Assert.Null(c.StepForTest());
        Assert.Null(c.StepForTest());
        Assert.Equal(0xFEEDUL, c.Rax);
        Assert.Equal(0x1111UL, c.Msr.KernelGsBase);

        m.EnterLongMode(cpl: 3);
        c.Rip = KernelEntry;
        Assert.Equal(Vector.GP, c.StepForTest());
    }
}
