using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace SharpVisor.Cpu.X86.Tests.SystemInstructions;

/// <summary>
/// Debug exceptions (SDM Vol. 3B 18.2 debug registers, 18.3 debug exceptions; priorities from
/// Vol. 3A 6.9 Table 6-2). Linux relies on these for ptrace single-step (gdb stepi: TF, DR6.BS)
/// and hw_breakpoint (gdb watch, perf mem breakpoints: DR0-DR3, DR7, DR6.B0-B3).
/// The #DB handler is a HLT at CPL 0, so <see cref="Cpu.Run"/> returns Halted with the #DB frame
/// (RIP, CS, RFLAGS, RSP, SS) on top of the stack.
/// </summary>
public unsafe class DebugExceptionTests
{
    const ulong Code = 0x10000, DbHandler = 0x20000, OtherHandler = 0x21000, Counter = 0x30000, Watched = 0x40000, Stack = 0x70000;

    sealed class Fixture : IDisposable
    {
        public readonly SysMachine M = new();
        public Cpu C => M.Cpu;

        public Fixture(bool countingDbHandler = false)
        {
            M.EnterLongMode();
            C.Rsp = Stack;
            M.SetGate(Vector.DB, DbHandler);
            M.Asm(DbHandler, 64, a =>
            {
                if (countingDbHandler)
                {
                    // Count, set RF in the frame (as Linux does for instruction breakpoints) and return.
                    a.inc(__qword_ptr[Counter]);
                    a.or(__qword_ptr[rsp + 16], 0x10000);
                    a.iretq();
                }
                else
                {
                    a.hlt();
                }
            });
            C.Rip = Code;
        }

        public ulong FrameRip => M.Ram.ReadU64(C.Rsp);
        public ulong FrameFlags => M.Ram.ReadU64(C.Rsp + 16);
        public ulong Dr6 => C.Dr[6];

        /// <summary>Runs until the #DB handler's HLT (or another HLT): the vCPU must halt.</summary>
        public void RunToHalt() => Assert.Equal(CpuExit.Halted, C.Run(10_000));

        public void SetTf() => C.SetFlags(C.GetFlags() | RFlags.TF);

        /// <summary>Writes DRn through MOV DRn, r64 (so the CPU's own path is exercised).</summary>
        public void MovToDr(int dr, ulong value)
        {
            ulong at = 0x50000;
            M.Asm(at, 64, a =>
            {
                a.mov(rax, value);
                a.mov(new[] { dr0, dr1, dr2, dr3, dr4, dr5, dr6, dr7 }[dr], rax);
            });
            ulong rip = C.Rip, rax0 = C.Rax;
            C.Rip = at;
            Assert.Null(C.StepForTest());
            Assert.Null(C.StepForTest());
            C.Rip = rip;
            C.Rax = rax0;
        }

        public void Dispose() => M.Dispose();
    }

    static ulong Dr7Enable(int n, int rw, int lenCode) => (1UL << (2 * n)) | ((ulong)rw << (16 + 4 * n)) | ((ulong)lenCode << (18 + 4 * n));

    /// <summary>
    /// SDM 18.3.1.4: the single-step trap is decided by TF as an instruction begins — none after the
    /// POPF that sets TF, one after the next instruction, with DR6.BS and RIP at the instruction after it;
    /// the handler runs with TF clear.
    /// </summary>
    [Fact]
    public void SingleStepTrapsAfterTheInstructionFollowingPopfThatSetsTf()
    {
        using var f = new Fixture();
        ulong afterPopf = f.M.Asm(Code, 64, a =>
        {
            a.pushfq();
            a.or(__qword_ptr[rsp], 0x100);
            a.popfq();
        });
        ulong afterNop = f.M.Asm(afterPopf, 64, a => a.mov(eax, 7));
        f.M.Asm(afterNop, 64, a => { a.nop(); a.hlt(); });

        f.RunToHalt();
        Assert.Equal(DbHandler + 1, f.C.Rip);
        Assert.Equal(afterNop, f.FrameRip);
        Assert.Equal(7UL, f.C.Rax); // the instruction after POPF ran before the trap
        Assert.NotEqual(0UL, f.FrameFlags & RFlags.TF);
        Assert.Equal(0UL, f.C.GetFlags() & RFlags.TF);
        Assert.Equal(Cpu.Dr6BS, f.Dr6 & (Cpu.Dr6BS | Cpu.Dr6B0to3 | Cpu.Dr6BD));
    }

    /// <summary>SDM 18.3.1.4: an instruction that clears TF (POPF) is still followed by the trap, since TF was set as it began.</summary>
    [Fact]
    public void PopfClearingTfStillTraps()
    {
        using var f = new Fixture();
        ulong afterPopf = f.M.Asm(Code, 64, a => a.popfq());
        f.M.Asm(afterPopf, 64, a => { a.nop(); a.hlt(); });
        f.M.Ram.WriteU64(Stack - 8, RFlags.Reserved1);
        f.C.Rsp = Stack - 8;
        f.SetTf();

        f.RunToHalt();
        Assert.Equal(DbHandler + 1, f.C.Rip);
        Assert.Equal(afterPopf, f.FrameRip);
        Assert.Equal(0UL, f.FrameFlags & RFlags.TF);
    }

    /// <summary>SDM Vol. 3A 6.8.3: after MOV SS the single-step trap is held until after the next instruction.</summary>
    [Fact]
    public void MovSsDelaysTheSingleStepTrap()
    {
        using var f = new Fixture();
        ulong afterMovSs = f.M.Asm(Code, 64, a => a.mov(ss, ax));
        ulong afterNext = f.M.Asm(afterMovSs, 64, a => a.mov(ebx, 5));
        f.M.Asm(afterNext, 64, a => a.hlt());
        f.C.Rax = SysMachine.Data;
        f.SetTf();

        f.RunToHalt();
        Assert.Equal(DbHandler + 1, f.C.Rip);
        Assert.Equal(afterNext, f.FrameRip);
        Assert.Equal(5UL, f.C.Rbx);
        Assert.NotEqual(0UL, f.Dr6 & Cpu.Dr6BS);
    }

    /// <summary>
    /// SDM 18.3.1.4: INT n clears TF on entering its handler and is not followed by a single-step
    /// trap; the IRETQ restoring TF is not either, so the next trap comes after the instruction
    /// following INT n.
    /// </summary>
    [Fact]
    public void IntNClearsTfAndTheTrapFollowsTheInstructionAfterReturn()
    {
        using var f = new Fixture();
        f.M.SetGate(0x40, OtherHandler);
        f.M.Asm(OtherHandler, 64, a => { a.mov(ecx, 1); a.iretq(); });
        ulong afterInt = f.M.Asm(Code, 64, a => a.@int(0x40));
        ulong afterNext = f.M.Asm(afterInt, 64, a => a.mov(edx, 3));
        f.M.Asm(afterNext, 64, a => a.hlt());
        f.SetTf();

        f.RunToHalt();
        Assert.Equal(DbHandler + 1, f.C.Rip);
        Assert.Equal(afterNext, f.FrameRip);
        Assert.Equal(1UL, f.C.Rcx);
        Assert.Equal(3UL, f.C.Rdx);
    }

    /// <summary>
    /// Table 6-2: a trap on the previous instruction (single step, priority 4) comes before a
    /// pending maskable interrupt (priority 6); the STI shadow holds the interrupt, not the #DB.
    /// </summary>
    [Fact]
    public void SingleStepAfterStiComesBeforeThePendingInterrupt()
    {
        using var f = new Fixture();
        var apic = new FakeApic { Pending = 0x50 };
        f.C.Apic = apic;
        f.M.SetGate(0x50, OtherHandler);
        f.M.Asm(OtherHandler, 64, a => a.hlt());
        ulong afterSti = f.M.Asm(Code, 64, a => a.sti());
        f.M.Asm(afterSti, 64, a => { a.nop(); a.hlt(); });
        f.SetTf();

        f.RunToHalt();
        Assert.Equal(DbHandler + 1, f.C.Rip); // the #DB handler (interrupt gate: IF clear) ran first
        Assert.Equal(afterSti, f.FrameRip);
        Assert.NotEqual(0UL, f.FrameFlags & RFlags.IF);
        Assert.Equal(0x50, apic.Pending);
    }

    /// <summary>
    /// SDM 18.3.1.1: an instruction breakpoint is a fault (RIP at the instruction, not executed,
    /// DR6.B0, RF clear in the frame); RF set in the frame suppresses it for one instruction and is
    /// cleared after that instruction, so the breakpoint fires again on the next pass.
    /// </summary>
    [Fact]
    public void InstructionBreakpointFaultsAndRfSuppressesItOnce()
    {
        using var f = new Fixture(countingDbHandler: true);
        ulong loop = f.M.Asm(Code, 64, a => a.mov(ecx, 2));
        ulong afterMov = f.M.Asm(loop, 64, a => a.add(eax, 1));
        f.M.Asm(afterMov, 64, a =>
        {
            a.dec(ecx);
            a.jnz(loop);
            a.hlt();
        });
        f.MovToDr(0, loop);
        f.MovToDr(7, Dr7Enable(0, rw: 0, lenCode: 0));

        f.RunToHalt();
        Assert.Equal(2UL, f.M.Ram.ReadU64(Counter));
        Assert.Equal(2UL, f.C.Rax); // each breakpointed ADD ran exactly once
        Assert.Equal(1UL, f.Dr6 & Cpu.Dr6B0to3);
        Assert.Equal(0UL, f.Dr6 & Cpu.Dr6BS);
    }

    [Fact]
    public void InstructionBreakpointFrameHasRfClear()
    {
        using var f = new Fixture();
        ulong second = f.M.Asm(Code, 64, a => a.nop());
        f.M.Asm(second, 64, a => { a.mov(eax, 9); a.hlt(); });
        f.MovToDr(2, second);
        f.MovToDr(7, Dr7Enable(2, rw: 0, lenCode: 0) | (1UL << 5)); // G2 as well as L2
        f.C.Rax = 0;

        f.RunToHalt();
        Assert.Equal(second, f.FrameRip);
        Assert.Equal(0UL, f.C.Rax);
        Assert.Equal(0UL, f.FrameFlags & RFlags.RF);
        Assert.Equal(4UL, f.Dr6 & Cpu.Dr6B0to3);
    }

    /// <summary>
    /// SDM 18.3.1.2: data breakpoints are traps reported after the instruction. R/W = 01 matches writes
    /// only, 11 reads and writes; LEN = 11 covers 4 bytes with the address aligned down (18.2.5);
    /// an access elsewhere in the same page does not match.
    /// </summary>
    [Theory]
    [InlineData(1, false, false)] // write-only breakpoint, read access: no trap
    [InlineData(1, true, true)]   // write-only breakpoint, write access
    [InlineData(3, false, true)]  // read/write breakpoint, read access
    [InlineData(3, true, true)]
    public void DataBreakpointTrapsAfterTheAccess(int rw, bool write, bool expectTrap)
    {
        using var f = new Fixture();
        ulong afterAccess = f.M.Asm(Code, 64, a =>
        {
            a.mov(__dword_ptr[Watched + 8], eax); // same page, outside the range: never matches
            a.mov(eax, __dword_ptr[Watched + 4]);
            if (write)
            {
                a.mov(__byte_ptr[Watched + 3], bl);
            }
            else
            {
                a.mov(bl, __byte_ptr[Watched + 3]);
            }
        });
        f.M.Asm(afterAccess, 64, a => { a.nop(); a.hlt(); });
        f.MovToDr(1, Watched + 1); // aligned down to Watched by LEN = 4
        f.MovToDr(7, Dr7Enable(1, rw, lenCode: 3));

        f.RunToHalt();
        if (expectTrap)
        {
            Assert.Equal(DbHandler + 1, f.C.Rip);
            Assert.Equal(afterAccess, f.FrameRip);
            Assert.Equal(2UL, f.Dr6 & Cpu.Dr6B0to3);
        }
        else
        {
            Assert.Equal(afterAccess + 2, f.C.Rip); // reached the program's HLT
        }
    }

    /// <summary>
    /// A LOCKed read-modify-write matches a write breakpoint; with TF also set, one #DB reports
    /// both (DR6.B3 and BS): both are priority-4 traps of the same instruction (Table 6-2).
    /// </summary>
    [Fact]
    public void LockedWriteAndSingleStepReportedTogether()
    {
        using var f = new Fixture();
        ulong after = f.M.Asm(Code, 64, a => a.@lock.add(__qword_ptr[Watched + 0x100], 1));
        f.M.Asm(after, 64, a => a.hlt());
        f.MovToDr(3, Watched + 0x104);
        f.MovToDr(7, Dr7Enable(3, rw: 1, lenCode: 2)); // 8 bytes
        f.SetTf();

        f.RunToHalt();
        Assert.Equal(after, f.FrameRip);
        Assert.Equal(1UL, f.M.Ram.ReadU64(Watched + 0x100));
        Assert.Equal(8UL | Cpu.Dr6BS, f.Dr6 & (Cpu.Dr6B0to3 | Cpu.Dr6BS));
    }

    /// <summary>
    /// REP STOSB: the breakpoint is reported after the iteration that wrote the watched byte, with
    /// RIP still on the string instruction, RCX/RDI describing the remaining iterations and RF set
    /// in the frame (SDM 18.3.1.2, 18.3.1.1).
    /// </summary>
    [Fact]
    public void RepStringReportsAfterTheIterationThatHit()
    {
        using var f = new Fixture();
        f.M.Asm(Code, 64, a => { a.rep.stosb(); a.hlt(); });
        f.C.Rdi = Watched - 0x10;
        f.C.Rcx = 0x20;
        f.C.Rax = 0xAB;
        f.MovToDr(0, Watched);
        f.MovToDr(7, Dr7Enable(0, rw: 1, lenCode: 0));

        f.RunToHalt();
        Assert.Equal(Code, f.FrameRip);
        Assert.Equal(0x20UL - 0x11, f.C.Rcx);
        Assert.Equal(Watched + 1, f.C.Rdi);
        Assert.NotEqual(0UL, f.FrameFlags & RFlags.RF);
        Assert.Equal(0xABUL, f.M.Ram.ReadU64(Watched) & 0xFF);
        Assert.Equal(0UL, f.M.Ram.ReadU64(Watched + 1) & 0xFF);
    }

    /// <summary>SDM 18.2.4: with DR7.GD any MOV DR is a #DB fault with DR6.BD; entering the handler clears GD.</summary>
    [Fact]
    public void GeneralDetectFaultsOnMovDr()
    {
        using var f = new Fixture();
        f.M.Asm(Code, 64, a => { a.mov(rax, dr0); a.hlt(); });
        f.MovToDr(7, Cpu.Dr7GD);
        f.C.Rax = 0x1234;

        f.RunToHalt();
        Assert.Equal(DbHandler + 1, f.C.Rip);
        Assert.Equal(Code, f.FrameRip);
        Assert.Equal(0x1234UL, f.C.Rax);
        Assert.NotEqual(0UL, f.Dr6 & Cpu.Dr6BD);
        Assert.Equal(0UL, f.C.Dr[7] & Cpu.Dr7GD);
    }

    /// <summary>SDM 18.2.2: DR4/DR5 alias DR6/DR7 while CR4.DE = 0 and are #UD while CR4.DE = 1.</summary>
    [Fact]
    public void Dr4Dr5AliasOrUd()
    {
        using var f = new Fixture();
        f.M.Asm(Code, 64, a => { a.mov(rax, dr4); a.mov(dr5, rbx); });
        f.C.Dr[6] = Cpu.Dr6Fixed | Cpu.Dr6BS;
        f.C.Rbx = 0x401 | (1UL << 16); // L0, R/W0 = 01
        Assert.Null(f.C.StepForTest());
        Assert.Equal(Cpu.Dr6Fixed | Cpu.Dr6BS, f.C.Rax);
        Assert.Null(f.C.StepForTest());
        Assert.Equal(0x401UL | (1UL << 16), f.C.Dr[7]);

        f.C.Cr4Value |= Cr4.DE;
        f.C.Rip = Code;
        Assert.Equal(Vector.UD, f.C.StepForTest());
    }

    /// <summary>
    /// INT1/ICEBP (F1) delivers #DB as a trap without the gate DPL check (a CPL-3 INT 1 through the
    /// same DPL-0 gate is #GP) and without touching DR6 — Linux tells a user ICEBP by DR6 having no
    /// status bits (exc_debug_user).
    /// </summary>
    [Fact]
    public void IcebpIsATrapWithoutDplCheckAndLeavesDr6()
    {
        using var f = new Fixture();
        f.M.EnterLongMode(cpl: 3);
        f.M.Ram.WriteU64(SysMachine.Tss + 4, 0x60000); // RSP0
        ulong after = f.M.Asm(Code, 64, a => a.int1());
        f.C.Rip = Code;
        f.C.Rsp = Stack;

        f.RunToHalt();
        Assert.Equal(DbHandler + 1, f.C.Rip);
        Assert.Equal(after, f.FrameRip);
        Assert.Equal(Cpu.Dr6Fixed, f.Dr6);

        using var g = new Fixture();
        g.M.EnterLongMode(cpl: 3);
        g.M.Ram.WriteU64(SysMachine.Tss + 4, 0x60000);
        g.M.SetGate(Vector.GP, OtherHandler);
        g.M.Asm(OtherHandler, 64, a => a.hlt());
        g.M.Asm(Code, 64, a => a.@int(1));
        g.C.Rip = Code;
        g.RunToHalt();
        Assert.Equal(OtherHandler + 1, g.C.Rip); // #GP: the gate's DPL 0 is below CPL 3
    }

    /// <summary>INT3 is a #BP trap: the frame's RIP is the instruction after it (SDM Vol. 3A 6.15, interrupt 3).</summary>
    [Fact]
    public void Int3IsABreakpointTrap()
    {
        using var f = new Fixture();
        f.M.SetGate(Vector.BP, OtherHandler);
        f.M.Asm(OtherHandler, 64, a => a.hlt());
        ulong after = f.M.Asm(Code, 64, a => a.int3());

        f.RunToHalt();
        Assert.Equal(OtherHandler + 1, f.C.Rip);
        Assert.Equal(after, f.FrameRip);
    }

    /// <summary>I/O breakpoints (R/W = 10 with CR4.DE, SDM 18.2.4) are traps after IN/OUT on a matching port.</summary>
    [Fact]
    public void IoBreakpointTrapsAfterOut()
    {
        using var f = new Fixture();
        ulong afterFirst = f.M.Asm(Code, 64, a => a.@out(0x81, al)); // port 0x81: no match
        ulong afterOut = f.M.Asm(afterFirst, 64, a => a.@out(dx, ax));   // ports 0x80-0x81: match
        f.M.Asm(afterOut, 64, a => a.hlt());
        f.C.Cr4Value |= Cr4.DE;
        f.C.Rdx = 0x80;
        f.MovToDr(0, 0x80);
        f.MovToDr(7, Dr7Enable(0, rw: 2, lenCode: 0));

        f.RunToHalt();
        Assert.Equal(DbHandler + 1, f.C.Rip);
        Assert.Equal(afterOut, f.FrameRip);
        Assert.Equal(1UL, f.Dr6 & Cpu.Dr6B0to3);
    }

    /// <summary>
    /// SYSCALL/SYSRET check TF after they complete: no #DB at the kernel entry when SFMASK clears TF,
    /// and a SYSRET restoring TF traps before the next user instruction (the reason Linux returns
    /// with IRET instead when TF is set: arch/x86/entry/common.c).
    /// </summary>
    [Fact]
    public void SyscallAndSysretCheckTfAfterCompleting()
    {
        using var f = new Fixture();
        var c = f.C;
        f.M.EnterLongMode(cpl: 3);
        f.M.Ram.WriteU64(SysMachine.Tss + 4, 0x60000); // RSP0 for the #DB delivered at CPL 3
        c.Msr.Star = (0x23UL << 48) | (0x10UL << 32);
        c.Msr.Lstar = OtherHandler;
        c.Msr.Sfmask = RFlags.IF | RFlags.TF;
        c.EferValue |= Efer.SCE;
        f.M.Asm(OtherHandler, 64, a => { a.mov(r12, 5); a.sysretq(); });
        ulong afterSyscall = f.M.Asm(Code, 64, a => a.syscall());
        f.M.Asm(afterSyscall, 64, a => a.mov(ebx, 1));
        c.Rip = Code;
        f.SetTf();

        f.RunToHalt();
        Assert.Equal(DbHandler + 1, c.Rip);
        Assert.Equal(5UL, c.Regs.Gpr[12]); // the kernel ran untrapped
        Assert.Equal(afterSyscall, f.FrameRip);
        Assert.Equal(0UL, c.Rbx); // trapped right after SYSRET
        Assert.Equal(0x33UL, f.M.Ram.ReadU64(c.Rsp + 8)); // from user mode
    }

    /// <summary>With TF set, REP STOSB traps after every iteration, RIP on the instruction and RF set in the frame.</summary>
    [Fact]
    public void SingleStepOfRepStringTrapsPerIteration()
    {
        using var f = new Fixture();
        f.M.Asm(Code, 64, a => { a.rep.stosb(); a.hlt(); });
        f.C.Rdi = Watched;
        f.C.Rcx = 3;
        f.SetTf();

        f.RunToHalt();
        Assert.Equal(Code, f.FrameRip);
        Assert.Equal(2UL, f.C.Rcx);
        Assert.NotEqual(0UL, f.FrameFlags & RFlags.RF);
        Assert.NotEqual(0UL, f.Dr6 & Cpu.Dr6BS);
    }

    /// <summary>
    /// SDM 18.3.1.1: a fault's frame carries RF = 1 (so IRET does not hit an instruction breakpoint
    /// on the retried instruction again); the handler itself runs with RF clear, and a trap such as
    /// #BP pushes RF = 0.
    /// </summary>
    [Fact]
    public void FaultFramesCarryRfTrapFramesDoNot()
    {
        using var f = new Fixture();
        f.M.SetGate(Vector.UD, OtherHandler);
        f.M.Asm(OtherHandler, 64, a => a.hlt());
        f.M.Asm(Code, 64, a => a.ud2());

        f.RunToHalt();
        Assert.Equal(OtherHandler + 1, f.C.Rip);
        Assert.Equal(Code, f.FrameRip);
        Assert.NotEqual(0UL, f.FrameFlags & RFlags.RF);
        Assert.Equal(0UL, f.C.GetFlags() & RFlags.RF);

        using var g = new Fixture();
        g.M.SetGate(Vector.BP, OtherHandler);
        g.M.Asm(OtherHandler, 64, a => a.hlt());
        g.M.Asm(Code, 64, a => a.int3());
        g.RunToHalt();
        Assert.Equal(0UL, g.FrameFlags & RFlags.RF);
    }
}
