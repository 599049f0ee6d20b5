using Iced.Intel;
using SharpVisor.Cpu.X86.Model;
using SharpVisor.Cpu.X86.State;
using SharpVisor.Cpu.X86.Tests.SystemInstructions;
using static Iced.Intel.AssemblerRegisters;

namespace SharpVisor.Cpu.X86.Tests.State;

/// <summary>
/// Completeness of <see cref="CpuState"/>: a guest runs for N instructions, its state is saved and
/// restored into a fresh vCPU over a copy of its RAM, and from then on the two must behave exactly
/// alike — same states (every field) and same memory after the rest of the program, with the same
/// interrupts, NMIs and startup signals arriving at both. N sweeps every stop point of the program,
/// so saves land with x87/SSE/MMX state live, in an STI or MOV SS shadow, with TF and a data
/// breakpoint armed, halted, waiting for SIPI, with an NMI, INIT, SIPI or APIC interrupt pending,
/// and in real, protected, compatibility and 64-bit mode. A field missing from the state, or not
/// restored, makes the comparison fail.
/// </summary>
public class CpuStateRoundTripTests
{
    /// <summary>A vCPU with its RAM, clock and APIC stand-in, and how the test drives it.</summary>
    sealed class Guest : IDisposable
    {
        public readonly SysMachine Machine;
        public readonly FakeApic Apic = new();
        public Cpu Cpu => Machine.Cpu;

        public Guest(int cpuIndex)
        {
            Machine = new SysMachine(cpuIndex: cpuIndex);
            Machine.Cpu.Apic = Apic;
        }

        public void Dispose() => Machine.Dispose();

        /// <summary>
        /// Runs up to <paramref name="budget"/> steps — instructions, and halts with IF set, each a stop
        /// point of its own — crediting the instructions to the deterministic clock. A halt with IF set
        /// is woken, at the next step, by an interrupt at vector <see cref="IrqVector"/>; a halt with IF
        /// clear ends the program. Returns false when the program has ended.
        /// </summary>
        public bool Run(long budget)
        {
            long used = 0;
            while (used < budget)
            {
                if (Cpu.Halted && Cpu.IF)
                {
                    Apic.Pending = IrqVector;
                    Cpu.NotifyInterrupt();
                }
                long before = Cpu.InstructionsRetired;
                CpuExit exit = Cpu.Run(budget - used);
                long ran = Cpu.InstructionsRetired - before;
                Machine.Clock.AdvanceByInstructions(ran);
                used += ran;
                switch (exit)
                {
                    case CpuExit.BudgetExhausted:
                        break;
                    case CpuExit.Halted when Cpu.IF:
                        used++;
                        break;
                    case CpuExit.WaitForSipi when Cpu.SaveState().Events.PendingSipiVector != null:
                        break; // INIT was taken first; the SIPI is taken by the next Run
                    case CpuExit.Halted or CpuExit.WaitForSipi:
                        return false;
                    default:
                        Assert.Fail($"unexpected exit {exit} at {Cpu}");
                        break;
                }
            }
            return true;
        }
    }

    const byte IrqVector = 0x40;

    /// <summary>
    /// Runs <paramref name="load"/>'s program, saving after N instructions for N up to its end;
    /// <paramref name="beforeSave"/> may signal events to the original first, so that they are
    /// pending in the saved state (what it signals depends on the count of save points so far).
    /// </summary>
    static void SweepSavePoints(int cpuIndex, Action<Guest> load, Action<Guest> checkEnd, Action<Guest, long> beforeSave, long rest = 3000)
    {
        long total;
        using (var g = new Guest(cpuIndex))
        {
            load(g);
            Assert.False(g.Run(100_000), "the program does not end");
            checkEnd(g);
            total = g.Cpu.InstructionsRetired;
        }
        Assert.True(total > 50, $"the program ran only {total} instructions");
        // Run(n) stops at the first block boundary at or after n, so many n stop at the same point:
        // each stop point is tested once, the signals before the save taking turns. Every point of
        // the first EveryPointUpTo instructions (the set-up and the first rounds of each loop, where
        // every feature is met) is tested, then every 9th N.
        var tested = new HashSet<long>();
        for (long n = 0; n <= total; n += n < EveryPointUpTo ? 1 : 9)
        {
            using var original = new Guest(cpuIndex);
            load(original);
            original.Run(n);
            if (tested.Add(original.Cpu.InstructionsRetired))
            {
                beforeSave(original, tested.Count);
                CheckTwinBehavesAlike(original, n, rest);
            }
        }
    }

    const long EveryPointUpTo = 320;

    /// <summary>The programs live below 1 MiB (code, data, stack, page tables, GDT/IDT/TSS): that is the RAM copied and compared.</summary>
    const int UsedRam = 1 << 20;

    static void CheckTwinBehavesAlike(Guest original, long n, long rest)
    {
        CpuState saved = original.Cpu.SaveState();
        long retiredAtSave = original.Cpu.InstructionsRetired;
        using var twin = new Guest(original.Cpu.Index);
        original.Machine.Ram.GetSpan(0, UsedRam).CopyTo(twin.Machine.Ram.GetSpan(0, UsedRam));
        twin.Machine.Clock.SkipTo(original.Machine.Clock.NowNs);
        twin.Apic.Pending = original.Apic.Pending;
        twin.Apic.Tpr = original.Apic.Tpr;
        twin.Cpu.RestoreState(saved);
        AssertSame(saved, twin.Cpu.SaveState(), $"right after restoring the state saved at N = {n}");

        original.Run(rest);
        twin.Run(rest);
        AssertSame(original.Cpu.SaveState(), twin.Cpu.SaveState(), $"{rest} instructions after a save at N = {n}");
        Assert.Equal(original.Cpu.InstructionsRetired - retiredAtSave, twin.Cpu.InstructionsRetired);
        Assert.Equal(original.Apic.Pending, twin.Apic.Pending);
        var a = original.Machine.Ram.GetSpan(0, UsedRam);
        var b = twin.Machine.Ram.GetSpan(0, UsedRam);
        if (!a.SequenceEqual(b))
        {
            int at = 0;
            while (a[at] == b[at])
            {
                at++;
            }
            Assert.Fail($"memory differs at 0x{at:x} ({a[at]:x2} vs {b[at]:x2}) {rest} instructions after a save at N = {n}");
        }
    }

    static void AssertSame(CpuState expected, CpuState actual, string when)
    {
        var differences = StateEquality.Differences(expected, actual);
        Assert.True(differences.Count == 0, $"{when}: {string.Join("; ", differences)}");
        Assert.Equal(expected, actual);
    }

    // ---------------------------------------------------------------- 64-bit mode, everything live

    const ulong Main = 0x10000, HandlerBase = 0x20000, Data = 0x40000, Table = 0x40200, Stack = 0x80000;
    const ulong DbCount = Data, NmiCount = Data + 8, BpCount = Data + 16, IrqCount = Data + 24, GpCount = Data + 32;
    const ulong Watched = Data + 0x300, SsImage = Data + 0x500, KernelEntry = 0x23000, UserCode = 0x24000, KernelStack = 0x78000;
    /// <summary>Where each handler logs the RIPs it interrupted, 4 KiB per vector.</summary>
    const ulong EventLog = 0x60000;

    /// <summary>
    /// 64-bit code that writes every MSR the state holds, leaves x87, MMX and SSE state live, and
    /// loops through STI shadows, HLT woken by interrupts, single-stepping with TF (through a MOV SS),
    /// a data breakpoint hit by MOV SS (its trap held one instruction), INT3, RDTSC, and a trip to
    /// ring 3 by SYSRET and back by SYSCALL, with a #GP at ring 3 in between.
    /// </summary>
    static void LoadLongModeProgram(Guest g)
    {
        var m = g.Machine;
        m.EnterLongMode();
        m.Ram.WriteU64(SysMachine.Tss + 4, KernelStack); // RSP0, for events at ring 3
        // #DB, NMI, #BP and the interrupt each log the RIP they interrupted, count, and return. The
        // NMI handler ends with one more block, so that a save can land inside it (NMIs blocked).
        (int Vector, ulong Counter)[] handlers = [(1, DbCount), (2, NmiCount), (3, BpCount), (IrqVector, IrqCount)];
        foreach (var (vector, counter) in handlers)
        {
            ulong at = HandlerBase + (ulong)vector * 0x40;
            ulong log = EventLog + (ulong)vector * 0x1000;
            m.Asm(at, 64, a =>
            {
                var ret = a.CreateLabel();
                a.push(rax);
                a.push(rdx);
                a.mov(rdx, __qword_ptr[(long)counter]);
                a.and(edx, 0x1FF);
                a.mov(rax, __qword_ptr[rsp + 16]);
                a.mov(__qword_ptr[rdx * 8 + (long)log], rax);
                a.inc(__qword_ptr[(long)counter]);
                a.pop(rdx);
                a.pop(rax);
                a.jmp(ret);
                a.Label(ref ret);
                a.iretq();
            });
            m.SetGate(vector, at);
        }
        // #GP (from CLI at ring 3): count, skip the one-byte instruction, drop the error code.
        m.Asm(HandlerBase + 0x900, 64, a =>
        {
            a.inc(__qword_ptr[(long)GpCount]);
            a.add(__qword_ptr[rsp + 8], 1);
            a.add(rsp, 8);
            a.iretq();
        });
        m.SetGate(13, HandlerBase + 0x900);
        m.Asm(KernelEntry, 64, a => a.jmp(r15)); // SYSCALL lands here; R15 holds where to go on
        m.Asm(UserCode, 64, a =>
        {
            a.add(r8, rcx);
            a.imul(r9, r8, 7);
            a.cli(); // #GP at CPL 3 with IOPL 0
            a.inc(r10);
            a.syscall();
        });
        m.Ram.WriteU32(Data + 0x100, 0x9FC0); // MXCSR: FZ, DAZ, all masked
        m.Asm(Main, 64, a =>
        {
            a.mov(rsp, Stack);
            (uint Msr, ulong Value)[] msrs =
            [
                (MsrIndex.Lstar, KernelEntry), (MsrIndex.Star, 0x0020_0010_0000_0000), (MsrIndex.Cstar, 0xFFFF_8000_1234_5678),
                (MsrIndex.Sfmask, 0x4700), (MsrIndex.KernelGsBase, 0x5000), (MsrIndex.TscAux, 7),
                (MsrIndex.SysenterCs, 0x10), (MsrIndex.SysenterEsp, 0x9000), (MsrIndex.SysenterEip, 0xA000),
                (MsrIndex.Pat, 0x0007_0406_0007_0106), (MsrIndex.MtrrDefType, 0xC06), (MsrIndex.MtrrPhysBase0, 6),
                (MsrIndex.MtrrPhysBase0 + 1, 0xFF_F000_0800), (MsrIndex.MtrrFix64K, 0x0606_0606_0606_0606),
                (MsrIndex.MtrrFix4KLast, 0x0505_0505_0505_0505), (MsrIndex.SpecCtrl, 1),
                (MsrIndex.McgCtl, ulong.MaxValue), (MsrIndex.Mc0Ctl + 4, 0xF), (MsrIndex.MiscEnable, 0),
                (MsrIndex.Tsc, 0x1_1000_0000), (MsrIndex.FsBase, 0x3000), (MsrIndex.GsBase, 0x4000),
            ];
            foreach (var (msr, value) in msrs)
            {
                a.mov(ecx, msr);
                a.mov(eax, (uint)value);
                a.mov(edx, (uint)(value >> 32));
                a.wrmsr();
            }
            a.swapgs();
            a.mov(rax, 0x1234_5678_9ABCUL);
            a.mov(cr2, rax);

            // x87 with two values on the stack, MMX (tags all valid), SSE registers and MXCSR.
            a.fninit();
            a.fld1();
            a.fldpi();
            a.fmulp(st1, st0);
            a.fld1();
            a.fadd(st0, st1);
            a.mov(rax, 0x3FF8_0000_0000_0000UL);
            a.movq(xmm0, rax);
            a.addsd(xmm0, xmm0);
            a.movaps(xmm15, xmm0);
            a.pshufd(xmm9, xmm0, 0x1B);
            a.ldmxcsr(__dword_ptr[(long)(Data + 0x100)]);
            a.movq(mm1, rax);
            a.paddd(mm1, mm1);

            var loop = a.CreateLabel();
            a.xor(ecx, ecx);
            a.mov(rbx, Table);
            a.Label(ref loop);
            a.imul(rax, rcx, 0x1E37_79B9);
            a.mov(__qword_ptr[rbx + rcx * 8], rax);
            a.add(rdx, rax);
            a.adc(rsi, rdx);
            a.sti();
            a.nop(); // in the STI shadow
            a.hlt(); // woken by the interrupt
            a.cli();
            // Single-step a few instructions, among them MOV SS, whose trap is held one instruction.
            a.pushfq();
            a.or(__qword_ptr[rsp], 0x100);
            a.popfq();
            a.nop();
            a.mov(ax, ss);
            a.mov(ss, ax);
            a.nop();
            a.pushfq();
            a.and(__qword_ptr[rsp], ~0x100);
            a.popfq();
            // A 4-byte write breakpoint on Watched (DR7: L0, R/W0 = 01, LEN0 = 11).
            a.mov(rax, Watched);
            a.mov(dr0, rax);
            a.mov(rax, 0xD0001);
            a.mov(dr7, rax);
            a.mov(__dword_ptr[(long)Watched], ecx);
            a.nop();
            // A read/write breakpoint on a 2-byte SS image (DR7: L1, R/W1 = 11, LEN1 = 01), read by
            // MOV SS: its trap is held until after the next instruction (SDM Vol. 3A 6.8.3).
            a.mov(ax, ss);
            a.mov(__word_ptr[(long)SsImage], ax);
            a.mov(rax, SsImage);
            a.mov(dr1, rax);
            a.mov(eax, 0x70_0004);
            a.mov(dr7, rax);
            a.mov(ss, __word_ptr[(long)SsImage]);
            a.nop();
            a.xor(eax, eax);
            a.mov(dr7, rax);
            a.int3();
            // To ring 3 and back (STAR: SYSRET to CS 0x30 / SS 0x28, SYSCALL to CS 0x10).
            var back = a.CreateLabel();
            a.push(rcx);
            a.lea(r15, __[back]);
            a.mov(ecx, (uint)UserCode);
            a.mov(r11d, 0x202);
            a.sysretq();
            a.Label(ref back);
            a.pop(rcx);
            a.fninit();
            a.fild(__qword_ptr[rbx + rcx * 8]);
            a.fsqrt();
            a.fistp(__qword_ptr[(long)(Data + 0x400)]);
            a.cvtsi2sd(xmm2, rcx);
            a.mulsd(xmm2, xmm0);
            a.movsd(__qword_ptr[(long)(Data + 0x408)], xmm2);
            a.push(rdx);
            a.rdtsc();
            a.mov(__dword_ptr[rcx * 4 + (long)(Data + 0x410)], eax);
            a.pop(rdx);
            a.inc(ecx);
            a.cmp(ecx, 12);
            a.jb(loop);
            DumpState(a, msrs.Select(x => x.Msr));
            var end = a.CreateLabel();
            a.Label(ref end);
            a.hlt(); // IF is clear: the end (an NMI may wake it: halt again)
            a.jmp(end);
        });
        g.Cpu.Rip = Main;
        g.Cpu.Rsp = Stack; // an NMI may come before the first instruction
    }

    const ulong Dump = 0x50000;

    /// <summary>
    /// Stores what the guest can read of its own state — FXSAVE and FNSTENV images, the MSRs, control
    /// and debug registers, descriptor-table registers, RFLAGS — so that a field missing from
    /// <see cref="CpuState"/> shows as a memory difference even when the two final states agree.
    /// </summary>
    static void DumpState(Assembler a, IEnumerable<uint> msrs)
    {
        a.fxsave(__[(long)Dump]);
        a.fnstenv(__[(long)Dump + 0x200]);
        ulong at = Dump + 0x240;
        foreach (uint msr in msrs.Concat([MsrIndex.Efer, MsrIndex.TscAdjust, MsrIndex.Mc0Ctl + 4]))
        {
            a.mov(ecx, msr);
            a.rdmsr();
            a.mov(__dword_ptr[(long)at], eax);
            a.mov(__dword_ptr[(long)at + 4], edx);
            at += 8;
        }
        foreach (var cr in new[] { cr0, cr2, cr3, cr4 })
        {
            a.mov(rax, cr);
            a.mov(__qword_ptr[(long)at], rax);
            at += 8;
        }
        foreach (var dr in new[] { dr0, dr1, dr2, dr3, dr6, dr7 })
        {
            a.mov(rax, dr);
            a.mov(__qword_ptr[(long)at], rax);
            at += 8;
        }
        a.sgdt(__[(long)at]);
        a.sidt(__[(long)at + 16]);
        a.sldt(__word_ptr[(long)at + 32]);
        a.str(__word_ptr[(long)at + 34]);
        a.pushfq();
        a.pop(__qword_ptr[(long)at + 40]);
        a.rdtsc();
        a.mov(__dword_ptr[(long)at + 48], eax);
        a.mov(__dword_ptr[(long)at + 52], edx);
    }

    /// <summary>
    /// NMIs and APIC interrupts signalled to the original just before some saves, so they are pending
    /// in the state; or an NMI taken, the save landing in its handler with a second one pending.
    /// </summary>
    static void SignalEvents(Guest g, long n)
    {
        switch (n % 4)
        {
            case 1:
                g.Cpu.RaiseNmi();
                break;
            case 2:
                g.Cpu.RaiseNmi();
                g.Run(3); // into the handler's first block
                g.Cpu.RaiseNmi();
                break;
            case 3:
                g.Apic.Pending = IrqVector;
                g.Cpu.NotifyInterrupt();
                break;
        }
    }

    /// <summary>The program did what the sweep relies on: interrupts, single steps and breakpoints taken, all 12 rounds run.</summary>
    static void CheckLongModeProgramRan(Guest g)
    {
        var ram = g.Machine.Ram;
        Assert.Equal(12UL, ram.ReadU64(BpCount));
        Assert.Equal(12UL, ram.ReadU64(IrqCount));
        Assert.Equal(12UL, ram.ReadU64(GpCount));
        Assert.True(ram.ReadU64(DbCount) >= 12 * 7, $"{ram.ReadU64(DbCount)} debug exceptions");
        Assert.Equal((uint)KernelEntry, ram.ReadU32(Dump + 0x240)); // LSTAR, read back by the dump
        Assert.Equal(12UL, g.Cpu.SaveState().Gpr[10]); // R10: the ring-3 code ran each round
        Assert.Equal(CpuMode.Long64, g.Cpu.Mode);
    }

    [Fact]
    public void LongModeProgramContinuesAlikeFromEverySavePoint() =>
        SweepSavePoints(0, LoadLongModeProgram, CheckLongModeProgramRan, SignalEvents);

    // ---------------------------------------------------------------- real -> protected -> long mode

    const ulong Trampoline = 0x9000, Gdtr = 0x9800, Protected32 = 0xA000, Long64Code = 0xB000, RealIntHandler = 0xC010, Restart = 0xD000;

    /// <summary>
    /// An application processor started by SIPI in real mode: INT n through the IVT, x87 and a loop
    /// in real mode; CR0.PE and a far jump to 32-bit protected mode; segment loads and a loop there;
    /// PAE, EFER.LME and CR0.PG to compatibility mode; a far jump to 64-bit mode.
    /// </summary>
    static void LoadModeSwitchProgram(Guest g)
    {
        var m = g.Machine;
        m.Ram.WriteU32(0x21 * 4, (uint)((RealIntHandler >> 4 << 16) & 0xFFFF_0000)); // IVT 0x21 -> C00:0010
        m.Asm(RealIntHandler, 16, a => { a.mov(bx, 0x1234); a.iret(); });
        m.Ram.TryWrite(Gdtr, [.. BitConverter.GetBytes((ushort)(9 * 8 - 1)), .. BitConverter.GetBytes((uint)SysMachine.Gdt)]);
        m.Asm(Trampoline, 16, a =>
        {
            var loop = a.CreateLabel();
            a.cli();
            a.xor(ax, ax);
            a.mov(ds, ax);
            a.mov(ss, ax);
            a.mov(sp, 0x7000);
            a.@int(0x21);
            a.fninit();
            a.fld1();
            a.fldl2t();
            a.fstp(__dword_ptr[0x500]);
            a.mov(cx, 20);
            a.Label(ref loop);
            a.add(__word_ptr[0x600], cx);
            a.loop(loop);
            a.lgdt(__dword_ptr[(int)Gdtr]);
            a.mov(eax, cr0);
            a.or(al, 1);
            a.mov(cr0, eax);
            a.nop(); // protected mode, still on the real-mode CS
            a.mov(dx, SysMachine.Data);
            a.AddInstruction(Instruction.CreateBranch(Code.Jmp_ptr1632, SysMachine.Code32, (uint)Protected32));
        });
        m.Asm(Protected32, 32, a =>
        {
            var loop = a.CreateLabel();
            a.mov(ds, dx);
            a.mov(es, dx);
            a.mov(ss, dx);
            a.mov(esp, 0x70000);
            a.mov(ecx, 30);
            a.Label(ref loop);
            a.push(ecx);
            a.imul(eax, ecx, 0x3D);
            a.mov(__dword_ptr[ecx * 4 + 0x700], eax);
            a.pop(ecx);
            a.loop(loop);
            a.mov(eax, 0xA0); // PAE | PGE
            a.mov(cr4, eax);
            a.mov(eax, (uint)SysMachine.Pml4);
            a.mov(cr3, eax);
            a.mov(ecx, 0xC000_0080);
            a.mov(eax, 0x901); // SCE | LME | NXE
            a.xor(edx, edx);
            a.wrmsr();
            a.mov(eax, 0x8005_0033);
            a.mov(cr0, eax);
            a.nop(); // compatibility mode
            a.jmp(SysMachine.Code64, (uint)Long64Code);
        });
        m.Asm(Long64Code, 64, a =>
        {
            var loop = a.CreateLabel();
            a.mov(ecx, 25);
            a.Label(ref loop);
            a.mov(rax, rcx);
            a.shl(rax, 40);
            a.mov(__qword_ptr[rcx * 8 + 0x900], rax);
            a.loop(loop);
            a.hlt();
        });
        // A restart target: INIT and a second SIPI bring the processor here.
        m.Asm(Restart, 16, a => { a.mov(ax, 0x55); a.mov(__word_ptr[0xE00], ax); a.hlt(); });
        g.Cpu.EnterWaitForSipi();
        g.Cpu.RaiseStartup((byte)(Trampoline >> 12));
    }

    /// <summary>Some saves happen with an INIT and a new SIPI signalled, which restart the processor at <see cref="Restart"/>.</summary>
    static void SignalRestart(Guest g, long n)
    {
        if (n % 7 == 5)
        {
            g.Cpu.RaiseInit();
            g.Cpu.RaiseStartup((byte)(Restart >> 12));
        }
    }

    static void CheckModeSwitchProgramRan(Guest g)
    {
        Assert.Equal(CpuMode.Long64, g.Cpu.Mode);
        Assert.Equal(0x1234UL, g.Cpu.Rbx & 0xFFFF); // the real-mode INT 0x21 handler ran
        Assert.Equal(25UL << 40, g.Machine.Ram.ReadU64(0x900 + 25 * 8));
    }

    [Fact]
    public void ModeSwitchingProgramContinuesAlikeFromEverySavePoint() =>
        SweepSavePoints(1, LoadModeSwitchProgram, CheckModeSwitchProgramRan, SignalRestart);
}
