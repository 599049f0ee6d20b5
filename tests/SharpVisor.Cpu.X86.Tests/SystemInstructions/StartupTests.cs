using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace SharpVisor.Cpu.X86.Tests.SystemInstructions;

/// <summary>Application-processor start-up and shutdown reporting.</summary>
public class StartupTests
{
    /// <summary>
    /// An AP after INIT waits for a SIPI, starts in real mode at vector * 4 KiB (SDM Vol. 3A 9.4.4,
    /// 11.6.1) and runs the trampoline sequence of Linux's trampoline_64.S to 64-bit mode:
    /// LIDT/LGDT (32-bit operand size), CR0.PE, far JMP ptr16:32, CR4 (PAE|PGE), CR3, EFER via WRMSR,
    /// CR0 with PG|WP|NE|ET|MP|PE, far JMP to the 64-bit code segment.
    /// </summary>
    [Fact]
    public void ApFromSipiThroughTrampolineToLongMode()
    {
        using var m = new SysMachine(cpuIndex: 1);
        var c = m.Cpu;
        const ulong tramp = 0x9A000, gdtr = 0x9A800, pm = 0x9B000, lm = 0x9C000;
        m.Ram.TryWrite(gdtr, [.. BitConverter.GetBytes((ushort)(9 * 8 - 1)), .. BitConverter.GetBytes((uint)SysMachine.Gdt)]);
        m.Asm(tramp, 16, a =>
        {
            a.cli();
            a.wbinvd();
            a.mov(ax, cs);
            a.mov(ds, ax);
            a.mov(ss, ax);
            a.mov(esp, 0x700);
            a.lidt(__dword_ptr[0x800]); // DS-relative: 0x9A800 (0x66-prefixed: 32-bit base)
            a.lgdt(__dword_ptr[0x800]);
            a.mov(dx, SysMachine.Data);
            a.mov(eax, 1);
            a.mov(cr0, eax);
            a.AddInstruction(Instruction.CreateBranch(Code.Jmp_ptr1632, SysMachine.Code32, (uint)pm));
        });
        m.Asm(pm, 32, a =>
        {
            a.mov(ss, dx);
            a.mov(ds, dx);
            a.mov(eax, 0xA0); // PAE | PGE
            a.mov(cr4, eax);
            a.mov(eax, (uint)SysMachine.Pml4);
            a.mov(cr3, eax);
            a.mov(ecx, 0xC000_0080);
            a.mov(eax, 0xD01); // SCE | LME | LMA (ignored) | NXE
            a.xor(edx, edx);
            a.wrmsr();
            a.mov(eax, 0x8005_0033);
            a.mov(cr0, eax);
            a.jmp(SysMachine.Code64, (uint)lm);
        });
        m.Asm(lm, 64, a => { a.mov(rax, 0x600D); a.hlt(); });

        c.RaiseInit();
        Assert.Equal(CpuExit.WaitForSipi, c.Run(100));
        c.RaiseStartup((byte)(tramp >> 12));
        Assert.Equal(CpuExit.Halted, c.Run(1000));
        Assert.Equal(CpuMode.Long64, c.Mode);
        Assert.Equal(0x600DUL, c.Rax);
        Assert.Equal(Efer.SCE | Efer.LME | Efer.LMA | Efer.NXE, c.EferValue);
        Assert.Equal((ulong)SysMachine.Gdt, c.IdtBase & 0xFFFF_FFFF);
    }

    /// <summary>
    /// INIT to the bootstrap processor (issue 16 defect 8): after the INIT reset (SDM Vol. 3A Table
    /// 9-1) the BSP goes back to the reset vector to run firmware, not to wait-for-SIPI (SDM Vol. 3A
    /// 8.4.2: each processor examines its BSP flag). Run reports that so the board can act on it,
    /// instead of the CPU fetching from an address with no firmware behind it.
    /// </summary>
    [Fact]
    public void InitOnTheBootstrapProcessorReturnsToTheResetVector()
    {
        using var m = new SysMachine(cpuIndex: 0);
        var c = m.Cpu;
        m.EnterLongMode();
        m.Asm(0x10000, 64, a => a.hlt());
        c.Rip = 0x10000;
        c.RaiseInit();
        Assert.Equal(CpuExit.BootstrapInit, c.Run(100));
        Assert.Equal(CpuMode.Real, c.Mode);
        Assert.Equal(0xFFFF_0000UL, c.Segs[1].Base);
        Assert.Equal(0xFFF0UL, c.Rip);
        Assert.False(c.WaitingForSipi);
    }

    /// <summary>
    /// With an unusable IDT every exception escalates to #DF and then a triple fault (SDM Vol. 3A 6.15,
    /// interrupt 8): Run returns Shutdown and says why in plain text.
    /// </summary>
    [Fact]
    public void TripleFaultIsReportedAsShutdownWithReason()
    {
        using var m = new SysMachine();
        var c = m.Cpu;
        m.EnterLongMode();
        c.IdtLimit = 0;
        m.Asm(0x10000, 64, a => a.ud2());
        c.Rip = 0x10000;
        Assert.Equal(CpuExit.Shutdown, c.Run(100));
        Assert.Contains("triple fault", c.ShutdownReason);
    }
}
