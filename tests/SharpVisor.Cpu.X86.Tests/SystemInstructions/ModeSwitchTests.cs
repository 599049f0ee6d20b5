using Iced.Intel;
using SharpVisor.Cpu.X86.Model;
using static Iced.Intel.AssemblerRegisters;

namespace SharpVisor.Cpu.X86.Tests.SystemInstructions;

/// <summary>Mode transitions through MOV CR0/CR3/CR4, WRMSR EFER, LGDT and far JMP (SDM Vol. 3A 10.8, 10.9).</summary>
public class ModeSwitchTests
{
    /// <summary>
    /// The path of Linux's arch/x86/realmode/rm/trampoline_64.S: real mode → LGDT, CR0.PE, far JMP to
    /// 32-bit code → CR4.PAE, CR3, EFER.LME, CR0.PG (activates IA-32e: SDM 10.8.5) → far JMP to a
    /// 64-bit code segment.
    /// </summary>
    [Fact]
    public void RealToProtectedToLongMode()
    {
        using var m = new SysMachine();
        var c = m.Cpu;
        const ulong gdtr = 0x7F00, real = 0x8000, pm = 0x9000, lm = 0xA000;
        m.Ram.TryWrite(gdtr, [.. BitConverter.GetBytes((ushort)(9 * 8 - 1)), .. BitConverter.GetBytes((uint)SysMachine.Gdt)]);
        m.Asm(real, 16, a =>
        {
            a.lgdt(__[gdtr]);
            a.mov(eax, cr0);
            a.or(eax, 1);
            a.mov(cr0, eax);
            a.jmp(SysMachine.Code32, (uint)pm);
        });
        m.Asm(pm, 32, a =>
        {
            a.mov(ax, SysMachine.Data);
            a.mov(ds, ax);
            a.mov(ss, ax);
            a.mov(eax, cr4);
            a.or(eax, 0x20); // PAE
            a.mov(cr4, eax);
            a.mov(eax, (uint)SysMachine.Pml4);
            a.mov(cr3, eax);
            a.mov(ecx, 0xC000_0080);
            a.rdmsr();
            a.or(eax, 0x100); // LME
            a.wrmsr();
            a.mov(eax, cr0);
            a.or(eax, 0x8000_0000); // PG
            a.mov(cr0, eax);
            a.jmp(SysMachine.Code64, (uint)lm);
        });
        m.Asm(lm, 64, a =>
        {
            a.mov(rax, 0x1234_5678_9ABC_DEF0);
            a.hlt();
        });
        c.SetSegmentReal(Seg.CS, 0);
        c.Rip = real;

        var exit = c.Run(1000);

        Assert.Equal(CpuExit.Halted, exit);
        Assert.Equal(CpuMode.Long64, c.Mode);
        Assert.NotEqual(0UL, c.EferValue & Efer.LMA);
        Assert.Equal(SysMachine.Code64, c.Segs[(int)Seg.CS].Selector);
        Assert.Equal(0x1234_5678_9ABC_DEF0UL, c.Rax);
        Assert.Equal(lm + 11, c.Rip); // after the HLT (mov rax, imm64 is 10 bytes)
    }

    /// <summary>SDM 10.8.5: setting CR0.PG with EFER.LME but CR4.PAE clear is #GP; nothing changes.</summary>
    [Fact]
    public void LongModeActivationWithoutPaeFaults()
    {
        using var m = new SysMachine();
        var c = m.Cpu;
        CpuSetup.EnterProtectedFlat32(c);
        c.EferValue = Efer.LME;
        c.Cr3 = SysMachine.Pml4;
        ulong end = m.Asm(0x8000, 32, a =>
        {
            a.mov(eax, 0x8000_0011);
            a.mov(cr0, eax);
        });
        c.Rip = 0x8000;
        Assert.Null(c.StepForTest());
        Assert.Equal(Vector.GP, c.StepForTest());
        Assert.Equal(0UL, c.Cr0Value & Cr0.PG);
        Assert.Equal(0UL, c.EferValue & Efer.LMA);
        Assert.Equal(CpuMode.Protected, c.Mode);
        _ = end;
    }

    /// <summary>SDM Vol. 2B MOV CR, 64-bit mode exceptions: clearing PE (PG without PE) or PG in 64-bit mode is #GP(0).</summary>
    [Theory]
    [InlineData(0x8000_0033UL & ~1UL)] // PG without PE
    [InlineData(0x0000_0033UL)]        // PG cleared in 64-bit mode
    public void ClearingPeOrPgInLongModeFaults(ulong value)
    {
        using var m = new SysMachine();
        var c = m.Cpu;
        m.EnterLongMode();
        ulong before = c.Cr0Value;
        m.Asm(0x8000, 64, a =>
        {
            a.mov(rax, cr0);
            a.mov(cr0, rax);
        });
        c.Rip = 0x8000;
        c.Rax = value;
        // Write RAX directly: run only the MOV CR0, RAX.
        c.Rip = 0x8003;
        Assert.Equal(Vector.GP, c.StepForTest());
        Assert.Equal(before, c.Cr0Value);
        Assert.Equal(CpuMode.Long64, c.Mode);
    }

    /// <summary>CR4 bits of features CPUID does not advertise (OSXSAVE, PCIDE, SMEP, VMXE...) are reserved: #GP (SDM 2.5).</summary>
    [Theory]
    [InlineData(Cr4.OSXSAVE)]
    [InlineData(Cr4.PCIDE)]
    [InlineData(Cr4.SMEP)]
    [InlineData(Cr4.VMXE)]
    [InlineData(Cr4.UMIP)]
    public void UnadvertisedCr4BitsFault(ulong bit)
    {
        using var m = new SysMachine();
        var c = m.Cpu;
        m.EnterLongMode();
        ulong before = c.Cr4Value;
        m.Asm(0x8000, 64, a => a.mov(cr4, rax));
        c.Rip = 0x8000;
        c.Rax = before | bit;
        Assert.Equal(Vector.GP, c.StepForTest());
        Assert.Equal(before, c.Cr4Value);

        // The same write without the bit succeeds (the check is about that bit).
        c.Rax = before | Cr4.PCE;
        Assert.Null(c.StepForTest());
        Assert.Equal(before | Cr4.PCE, c.Cr4Value);
    }

    /// <summary>CR3 bits above MAXPHYADDR (and bit 63 without PCIDE) are reserved in IA-32e mode (SDM 4.5.4).</summary>
    [Fact]
    public void Cr3ReservedBitsFault()
    {
        using var m = new SysMachine();
        var c = m.Cpu;
        m.EnterLongMode();
        m.Asm(0x8000, 64, a => a.mov(cr3, rax));
        c.Rip = 0x8000;
        c.Rax = SysMachine.Pml4 | (1UL << 63);
        Assert.Equal(Vector.GP, c.StepForTest());
        c.Rax = SysMachine.Pml4 | (1UL << Cpu.PhysAddrBits);
        Assert.Equal(Vector.GP, c.StepForTest());
        c.Rax = SysMachine.Pml4;
        Assert.Null(c.StepForTest());
        Assert.Equal(SysMachine.Pml4, c.Cr3);
    }

    /// <summary>SDM 2.2.1 / 10.8.5: EFER.LMA is read-only and EFER.LME cannot change while paging is on.</summary>
    [Fact]
    public void EferLmeLockedWhilePaging()
    {
        using var m = new SysMachine();
        var c = m.Cpu;
        m.EnterLongMode();
        m.Asm(0x8000, 64, a => a.wrmsr());
        c.Rcx = MsrIndex.Efer;
        c.Rip = 0x8000;
        c.Rax = Efer.SCE | Efer.NXE; // LME cleared
        c.Rdx = 0;
        Assert.Equal(Vector.GP, c.StepForTest());
        Assert.NotEqual(0UL, c.EferValue & Efer.LME);
        // Clearing SCE and writing LMA = 0 with LME kept: accepted, LMA unchanged (read-only).
        c.Rax = Efer.LME | Efer.NXE;
        Assert.Null(c.StepForTest());
        Assert.Equal(Efer.LME | Efer.LMA | Efer.NXE, c.EferValue);
    }

    /// <summary>Far RETQ to a 64-bit code segment at the same privilege (SDM RET, "RETURN-TO-SAME-PRIVILEGE-LEVEL").</summary>
    [Fact]
    public void FarReturnToSamePrivilege()
    {
        using var m = new SysMachine();
        var c = m.Cpu;
        m.EnterLongMode();
        const ulong target = 0x9000;
        m.Asm(0x8000, 64, a =>
        {
            a.push(SysMachine.Code64);
            a.push(rax);
            a.AddInstruction(Instruction.Create(Code.Retfq));
        });
        c.Rax = target;
        c.Rsp = 0x70000;
        c.Rip = 0x8000;
        for (int i = 0; i < 3; i++)
        {
            Assert.Null(c.StepForTest());
        }
        Assert.Equal(target, c.Rip);
        Assert.Equal(0x70000UL, c.Rsp);
        Assert.Equal(CpuMode.Long64, c.Mode);

        // A return to a data segment selector is #GP(selector).
        c.Rip = 0x8000;
        m.Asm(0x8000, 64, a =>
        {
            a.push(SysMachine.Data);
            a.push(rax);
            a.AddInstruction(Instruction.Create(Code.Retfq));
        });
        Assert.Null(c.StepForTest());
        Assert.Null(c.StepForTest());
        Assert.Equal(Vector.GP, c.StepForTest());
        Assert.Equal(0x8000UL + 3, c.Rip); // push imm8 (2) + push rax (1): still at the RETF
    }
}
