using Iced.Intel;
using SharpVisor.Cpu.X86.Tests.Harness;
using static Iced.Intel.AssemblerRegisters;

namespace SharpVisor.Cpu.X86.Tests.SystemInstructions;

/// <summary>
/// Alignment checking (SDM Vol. 3A 6.15 "Interrupt 17—Alignment Check Exception (#AC)", 2.5 CR0.AM,
/// Vol. 1 3.4.3.3 EFLAGS.AC): with CR0.AM = 1, EFLAGS.AC = 1 and CPL 3, a data or stack access not
/// aligned to its size raises #AC(0), a fault. Never at CPL 0-2, never with AC or AM clear, never for
/// implicit supervisor accesses (exception frames, descriptor tables).
/// </summary>
/// <remarks>
/// The alignment each instruction needs is what the host (an Intel Xeon, Linux sets CR0.AM) shows
/// when a user process runs it with EFLAGS.AC set at every offset 0..15 (SIGBUS with BUS_ADRALN =
/// #AC): Table 6-7 per data type, MOVUPS/MOVUPD/MOVDQU never checked, FXSAVE/FXRSTOR #AC below
/// 4-byte alignment and #GP above it, the x87 environment and save images checked as a whole (4
/// bytes, 2 with a 16-bit operand size), 80-bit values and MASKMOVQ/MASKMOVDQU at 8, PUNPCKLBW mm,
/// m32 at 4. SGDT/SIDT follow Table 6-7 (4): the host's UMIP hides them from user code.
/// <see cref="EveryCaseEndsAsOnTheHost"/> runs every case on the host again (a child process,
/// <see cref="HostAlignmentOracle"/>) so the tables cannot drift from it.
/// </remarks>
public unsafe class AlignmentCheckTests
{
    const ulong Code = 0x10000, Data = 0x100000, Stack = 0x200000, Rsp0 = 0x80000;

    /// <summary>A 64-bit vCPU at <paramref name="cpl"/> with the given CR0.AM and EFLAGS.AC, RBX/RSI/RDI at Data + offset.</summary>
    static SysMachine Machine(int cpl = 3, bool am = true, bool ac = true)
    {
        var m = new SysMachine();
        m.EnterLongMode(cpl);
        for (int r = 0; r < 16; r++)
        {
            m.Cpu.Regs.Gpr[r] = 0; // as the host oracle runs its cases
        }
        if (am)
        {
            m.Cpu.Cr0Value |= Cr0.AM;
        }
        m.Cpu.UpdateMode();
        m.Cpu.SetFlags(RFlags.Reserved1 | (ac ? RFlags.AC : 0));
        m.Cpu.Rsp = Stack;
        m.Cpu.Rbp = Stack;
        m.Cpu.Fpu.Xmm[1] = System.Runtime.Intrinsics.Vector128<byte>.AllBitsSet; // MASKMOVDQU: every byte selected
        m.Cpu.Fpu.Mantissa[1] = ulong.MaxValue;                                   // MASKMOVQ: every byte selected
        m.Cpu.Fpu.InitX87();                                                      // x87 exceptions masked, as a process starts
        return m;
    }

    /// <summary>Steps from <see cref="Code"/> until the sequence ends, leaves it (a jump), or faults; returns the fault.</summary>
    static int? Run(SysMachine m, Action<Assembler> build)
    {
        ulong end = m.Asm(Code, 64, build);
        m.Cpu.Rip = Code;
        for (int i = 0; i < 16 && m.Cpu.Rip >= Code && m.Cpu.Rip < end; i++)
        {
            if (m.Cpu.StepForTest() is int v)
            {
                return v;
            }
        }
        return null;
    }

    /// <summary>Explicit memory operands at [rbx] (and string operands at [rsi]/[rdi]), with the alignment the host checks (0: never).</summary>
    static readonly Dictionary<string, (int Alignment, Action<Assembler> Code)> s_dataAccesses = new()
    {
        ["mov al, [rbx]"] = (0, a => a.mov(al, __byte_ptr[rbx])),
        ["mov ax, [rbx]"] = (2, a => a.mov(ax, __word_ptr[rbx])),
        ["mov eax, [rbx]"] = (4, a => a.mov(eax, __dword_ptr[rbx])),
        ["mov rax, [rbx]"] = (8, a => a.mov(rax, __qword_ptr[rbx])),
        ["mov [rbx], eax"] = (4, a => a.mov(__dword_ptr[rbx], eax)),
        ["mov word [rbx], 1"] = (2, a => a.mov(__word_ptr[rbx], 1)),
        ["movzx eax, word [rbx]"] = (2, a => a.movzx(eax, __word_ptr[rbx])),
        ["movsxd rax, [rbx]"] = (4, a => a.movsxd(rax, __dword_ptr[rbx])),
        ["cmovne eax, [rbx]"] = (4, a => { a.cmp(eax, eax); a.cmovne(eax, __dword_ptr[rbx]); }
        ), // read even when not taken
        ["add [rbx], eax"] = (4, a => a.add(__dword_ptr[rbx], eax)),
        ["inc word [rbx]"] = (2, a => a.inc(__word_ptr[rbx])),
        ["not qword [rbx]"] = (8, a => a.not(__qword_ptr[rbx])),
        ["shld [rbx], eax, 3"] = (4, a => a.shld(__dword_ptr[rbx], eax, 3)),
        ["mul word [rbx]"] = (2, a => a.mul(__word_ptr[rbx])),
        ["lock add [rbx], eax"] = (4, a => a.@lock.add(__dword_ptr[rbx], eax)),
        ["xchg [rbx], eax"] = (4, a => a.xchg(__dword_ptr[rbx], eax)),
        ["lock xadd [rbx], rax"] = (8, a => a.@lock.xadd(__qword_ptr[rbx], rax)),
        ["cmpxchg [rbx], cx"] = (2, a => a.cmpxchg(__word_ptr[rbx], cx)),
        ["lock cmpxchg8b [rbx]"] = (8, a => a.@lock.cmpxchg8b(__qword_ptr[rbx])),
        ["bt word [rbx], ax"] = (2, a =>
        {
            a.mov(eax, 3);
            a.bt(__word_ptr[rbx], ax);
        }
        ),
        ["bt dword [rbx], eax (bit 40)"] = (4, a =>
        {
            a.mov(eax, 40);
            a.bt(__dword_ptr[rbx], eax);
        }
        ),
        ["bts qword [rbx], rax"] = (8, a =>
        {
            a.mov(eax, 3);
            a.bts(__qword_ptr[rbx], rax);
        }
        ),
        ["bt dword [rbx], 3"] = (4, a => a.bt(__dword_ptr[rbx], 3)),
        ["sete [rbx]"] = (0, a => a.sete(__byte_ptr[rbx])),
        ["jmp qword [rbx]"] = (8, a => a.jmp(__qword_ptr[rbx])),
        ["mov gs, [rbx]"] = (2, a => a.mov(gs, __word_ptr[rbx])),
        ["mov [rbx], ds"] = (2, a => a.mov(__word_ptr[rbx], ds)),
        ["lgs ax, m16:16"] = (2, a => a.lgs(ax, __dword_ptr[rbx])),
        ["lgs eax, m16:32"] = (4, a => a.lgs(eax, __fword_ptr[rbx])),
        ["lgs rax, m16:64"] = (8, a => a.db(0x48, 0x0F, 0xB5, 0x03)),
        ["jmp far m16:32"] = (4, a => a.db(0xFF, 0x2B)),
        ["jmp far m16:64"] = (8, a => a.db(0x48, 0xFF, 0x2B)),
        ["sgdt [rbx]"] = (4, a => a.sgdt(__[rbx])),
        ["sidt [rbx]"] = (4, a => a.sidt(__[rbx])),
        ["lea rax, [rbx]"] = (0, a => a.lea(rax, __[rbx])),
        ["nop dword [rbx]"] = (0, a => a.nop(__dword_ptr[rbx])),
        ["prefetcht0 [rbx]"] = (0, a => a.prefetcht0(__byte_ptr[rbx])),
        ["clflush [rbx]"] = (0, a => a.clflush(__byte_ptr[rbx])),
        // string instructions: each element is checked (the host: MOVSW at 2 through either operand)
        ["movsw"] = (2, a => a.movsw()),
        ["movsw (destination only misaligned)"] = (2, a =>
        {
            a.and(rsi, -16);
            a.movsw();
        }
        ),
        ["movsw (source only misaligned)"] = (2, a =>
        {
            a.and(rdi, -16);
            a.movsw();
        }
        ),
        ["lodsq"] = (8, a => a.lodsq()),
        ["scasw"] = (2, a => a.scasw()),
        ["cmpsd"] = (4, a => a.cmpsd()),
        ["stosd"] = (4, a => a.stosd()),
        // Which operand is accessed first decides between #AC on one and #PF on the other (0x4000_0000
        // is unmapped on both sides): MOVS reads DS:[RSI] first, CMPS reads ES:[RDI] first.
        ["movsd (destination unmapped)"] = (4, a =>
        {
            a.mov(edi, 0x4000_0000);
            a.movsd();
        }
        ),
        ["movsd (source unmapped)"] = (0, a =>
        {
            a.mov(esi, 0x4000_0000);
            a.movsd();
        }
        ),
        ["cmpsd (source unmapped)"] = (4, a =>
        {
            a.mov(esi, 0x4000_0000);
            a.cmpsd();
        }
        ),
        ["cmpsd (destination unmapped)"] = (0, a =>
        {
            a.mov(edi, 0x4000_0000);
            a.cmpsd();
        }
        ),
        ["rep movsb"] = (0, a =>
        {
            a.mov(ecx, 9);
            a.rep.movsb();
        }
        ),
        ["rep stosd"] = (4, a =>
        {
            a.mov(ecx, 3);
            a.rep.stosd();
        }
        ),
        ["rep movsd (source only misaligned)"] = (4, a =>
        {
            a.and(rdi, -16);
            a.add(rdi, 0x800);
            a.mov(ecx, 3);
            a.rep.movsd();
        }
        ),
        ["rep movsq (destination only misaligned)"] = (8, a =>
        {
            a.and(rsi, -16);
            a.add(rsi, 0x800);
            a.mov(ecx, 3);
            a.rep.movsq();
        }
        ),
        // SSE and MMX
        ["movups xmm0, [rbx]"] = (0, a => a.movups(xmm0, __xmmword_ptr[rbx])),
        ["movups [rbx], xmm0"] = (0, a => a.movups(__xmmword_ptr[rbx], xmm0)),
        ["movdqu xmm0, [rbx]"] = (0, a => a.movdqu(xmm0, __xmmword_ptr[rbx])),
        ["movupd xmm0, [rbx]"] = (0, a => a.movupd(xmm0, __xmmword_ptr[rbx])),
        ["movq xmm0, [rbx]"] = (8, a => a.movq(xmm0, __qword_ptr[rbx])),
        ["movsd xmm0, [rbx]"] = (8, a => a.movsd(xmm0, __qword_ptr[rbx])),
        ["movss xmm0, [rbx]"] = (4, a => a.movss(xmm0, __dword_ptr[rbx])),
        ["movd xmm0, [rbx]"] = (4, a => a.movd(xmm0, __dword_ptr[rbx])),
        ["movlps xmm0, [rbx]"] = (8, a => a.movlps(xmm0, __qword_ptr[rbx])),
        ["movhps [rbx], xmm0"] = (8, a => a.movhps(__qword_ptr[rbx], xmm0)),
        ["addss xmm0, [rbx]"] = (4, a => a.addss(xmm0, __dword_ptr[rbx])),
        ["addsd xmm0, [rbx]"] = (8, a => a.addsd(xmm0, __qword_ptr[rbx])),
        ["pinsrw xmm0, [rbx], 1"] = (2, a => a.pinsrw(xmm0, __word_ptr[rbx], 1)),
        ["cvtsi2sd xmm0, dword [rbx]"] = (4, a => a.cvtsi2sd(xmm0, __dword_ptr[rbx])),
        ["comisd xmm0, [rbx]"] = (8, a => a.comisd(xmm0, __qword_ptr[rbx])),
        ["movnti [rbx], eax"] = (4, a => a.movnti(__dword_ptr[rbx], eax)),
        ["ldmxcsr [rbx]"] = (4, a => a.ldmxcsr(__dword_ptr[rbx])),
        ["stmxcsr [rbx]"] = (4, a => a.stmxcsr(__dword_ptr[rbx])),
        ["maskmovdqu xmm0, xmm1"] = (8, a => a.maskmovdqu(xmm0, xmm1)),
        ["maskmovdqu with a zero mask"] = (8, a =>
        {
            a.pxor(xmm2, xmm2);
            a.maskmovdqu(xmm0, xmm2);
        }
        ),
        ["movq mm0, [rbx]"] = (8, a => a.movq(mm0, __qword_ptr[rbx])),
        ["paddb mm0, [rbx]"] = (8, a => a.paddb(mm0, __qword_ptr[rbx])),
        ["punpcklbw mm0, dword [rbx]"] = (4, a => a.punpcklbw(mm0, __dword_ptr[rbx])),
        ["movntq [rbx], mm0"] = (8, a => a.movntq(__qword_ptr[rbx], mm0)),
        ["maskmovq mm0, mm1"] = (8, a => a.maskmovq(mm0, mm1)),
        ["maskmovq with a zero mask"] = (8, a =>
        {
            a.pxor(mm2, mm2);
            a.maskmovq(mm0, mm2);
        }
        ),
        // x87
        ["fld dword [rbx]"] = (4, a => a.fld(__dword_ptr[rbx])),
        ["fld qword [rbx]"] = (8, a => a.fld(__qword_ptr[rbx])),
        ["fld tword [rbx]"] = (8, a => a.fld(__tword_ptr[rbx])),
        ["fstp tword [rbx]"] = (8, a =>
        {
            a.fldz();
            a.fstp(__tword_ptr[rbx]);
        }
        ),
        ["fbld [rbx]"] = (8, a => a.fbld(__tword_ptr[rbx])),
        ["fild word [rbx]"] = (2, a => a.fild(__word_ptr[rbx])),
        ["fild qword [rbx]"] = (8, a => a.fild(__qword_ptr[rbx])),
        ["fistp word [rbx]"] = (2, a =>
        {
            a.fldz();
            a.fistp(__word_ptr[rbx]);
        }
        ),
        ["fldcw [rbx]"] = (2, a => a.fldcw(__word_ptr[rbx])),
        ["fnstcw [rbx]"] = (2, a => a.fnstcw(__word_ptr[rbx])),
        ["fnstsw [rbx]"] = (2, a => a.fnstsw(__word_ptr[rbx])),
        ["fnstenv [rbx]"] = (4, a => a.fnstenv(__[rbx])),
        ["fldenv [rbx]"] = (4, a => a.fldenv(__[rbx])),
        ["o16 fnstenv [rbx]"] = (2, a => a.db(0x66, 0xD9, 0x33)),
        ["fnsave [rbx]"] = (4, a => a.fnsave(__[rbx])),
        ["frstor [rbx]"] = (4, a => a.frstor(__[rbx])),
    };

    /// <summary>Implicit stack accesses with RSP (and RBP) at Stack + offset, with the alignment the host checks.</summary>
    static readonly Dictionary<string, (int Alignment, Action<Assembler> Code)> s_stackAccesses = new()
    {
        ["push rax"] = (8, a => a.push(rax)),
        ["o16 push imm8"] = (2, a => a.db(0x66, 0x6A, 0x01)),
        ["pop rax"] = (8, a => a.pop(rax)),
        ["push qword [rbx]"] = (8, a => a.push(__qword_ptr[rbx])),
        ["pop qword [rbx]"] = (8, a => a.pop(__qword_ptr[rbx])),
        ["push fs"] = (8, a => a.push(fs)),
        ["o16 push fs"] = (2, a => a.db(0x66, 0x0F, 0xA0)),
        ["pushfq"] = (8, a => a.pushfq()),
        ["popfq"] = (8, a => a.popfq()),
        ["call"] = (8, a =>
        {
            var next = a.CreateLabel();
            a.call(next);
            a.Label(ref next);
            a.nop();
        }
        ),
        ["ret"] = (8, a => a.ret()),
        ["retf"] = (8, a => a.db(0x48, 0xCB)),
        ["call far m16:64"] = (8, a =>
        {
            var target = a.CreateLabel();
            a.lea(rax, __[target]);
            a.mov(__qword_ptr[rbx], rax);
            a.mov(__word_ptr[rbx + 8], 0x33); // ring-3 64-bit code: the host's (Linux) and SysMachine's
            a.db(0x48, 0xFF, 0x1B);           // call far [rbx]: pushes CS, then RIP
            a.Label(ref target);
            a.nop();
        }
        ),
        ["iretq"] = (8, a => a.iretq()),
        ["enter 0, 0"] = (8, a => a.enter(0, 0)),
        ["enter 8, 2"] = (8, a => a.enter(8, 2)),
        ["leave"] = (8, a => a.leave()),
    };

    public static TheoryData<string> DataAccesses => [.. s_dataAccesses.Keys];

    public static TheoryData<string> StackAccesses => [.. s_stackAccesses.Keys];

    static int? RunData(Action<Assembler> code, int offset, int cpl = 3, bool am = true, bool ac = true)
    {
        using var m = Machine(cpl, am, ac);
        m.Cpu.Rbx = m.Cpu.Rsi = m.Cpu.Rdi = Data + (ulong)offset;
        return Run(m, code);
    }

    static int? RunStack(Action<Assembler> code, int offset, int cpl = 3, bool am = true, bool ac = true)
    {
        using var m = Machine(cpl, am, ac);
        m.Cpu.Rbx = m.Cpu.Rsi = m.Cpu.Rdi = Data;
        m.Cpu.Rsp = m.Cpu.Rbp = Stack + (ulong)offset;
        return Run(m, code);
    }

    static void AssertAlignmentChecked(string name, int alignment, Func<int, int?> run)
    {
        var wrong = new List<string>();
        for (int offset = 0; offset < 16; offset++)
        {
            bool misaligned = alignment != 0 && offset % alignment != 0;
            int? fault = run(offset);
            if (misaligned != (fault == Vector.AC))
            {
                wrong.Add($"offset {offset}: {(fault is int v ? $"exception {v}" : "no exception")}");
            }
        }
        Assert.True(wrong.Count == 0, $"{name} (alignment {alignment}): {string.Join(", ", wrong)}");
    }

    /// <summary>Every explicit data access raises #AC exactly at the offsets the host faults on.</summary>
    [Theory]
    [MemberData(nameof(DataAccesses))]
    public void DataAccessRaisesAcWhenMisaligned(string name) =>
        AssertAlignmentChecked(name, s_dataAccesses[name].Alignment, offset => RunData(s_dataAccesses[name].Code, offset));

    /// <summary>PUSH, POP, CALL, RET, ENTER, LEAVE, PUSHF/POPF, IRET in ring 3 are checked at their operand size (SDM 6.15).</summary>
    [Theory]
    [MemberData(nameof(StackAccesses))]
    public void StackAccessRaisesAcWhenMisaligned(string name) =>
        AssertAlignmentChecked(name, s_stackAccesses[name].Alignment, offset => RunStack(s_stackAccesses[name].Code, offset));

    /// <summary>No #AC at CPL 0, with EFLAGS.AC clear, or with CR0.AM clear (SDM 6.15: all three conditions are needed).</summary>
    [Theory]
    [MemberData(nameof(DataAccesses))]
    public void DataAccessIsNotCheckedUnlessCpl3WithAmAndAc(string name)
    {
        foreach (var (cpl, am, ac) in new[] { (0, true, true), (3, true, false), (3, false, true) })
        {
            AssertAlignmentChecked($"{name} at CPL {cpl}, AM {am}, AC {ac}", 0, offset => RunData(s_dataAccesses[name].Code, offset, cpl, am, ac));
        }
    }

    [Theory]
    [MemberData(nameof(StackAccesses))]
    public void StackAccessIsNotCheckedUnlessCpl3WithAmAndAc(string name)
    {
        foreach (var (cpl, am, ac) in new[] { (0, true, true), (3, true, false), (3, false, true) })
        {
            AssertAlignmentChecked($"{name} at CPL {cpl}, AM {am}, AC {ac}", 0, offset => RunStack(s_stackAccesses[name].Code, offset, cpl, am, ac));
        }
    }

    /// <summary>
    /// Instructions that need 16-byte alignment raise #GP(0) on any misalignment, not #AC (the host:
    /// SIGSEGV at every offset); FXSAVE/FXRSTOR raise #AC below 4-byte alignment and #GP otherwise
    /// (SDM Vol. 2A FXSAVE: "the width of the alignment check may also vary with implementation").
    /// The number is the alignment below which #AC comes first (1: never).
    /// </summary>
    static readonly Dictionary<string, (int AcAlignment, Action<Assembler> Code)> s_sixteenByteOperands = new()
    {
        ["movaps xmm0, [rbx]"] = (1, a => a.movaps(xmm0, __xmmword_ptr[rbx])),
        ["addps xmm0, [rbx]"] = (1, a => a.addps(xmm0, __xmmword_ptr[rbx])),
        ["punpcklbw xmm0, [rbx]"] = (1, a => a.punpcklbw(xmm0, __xmmword_ptr[rbx])),
        ["cmpxchg16b [rbx]"] = (1, a => a.cmpxchg16b(__xmmword_ptr[rbx])),
        ["fxsave [rbx]"] = (4, a => a.fxsave(__[rbx])),
        ["fxrstor [rbx]"] = (4, a => a.fxrstor(__[rbx])), // the zeroed image is valid (MXCSR 0)
    };

    public static TheoryData<string> SixteenByteOperands => [.. s_sixteenByteOperands.Keys];

    [Theory]
    [MemberData(nameof(SixteenByteOperands))]
    public void SixteenByteOperandsPreferGeneralProtection(string name)
    {
        var (acAlignment, code) = s_sixteenByteOperands[name];
        for (int offset = 0; offset < 16; offset++)
        {
            int? expected = offset % acAlignment != 0 ? Vector.AC : offset % 16 != 0 ? Vector.GP : null;
            int? actual = RunData(code, offset);
            Assert.True(expected == actual, $"{name} at offset {offset}: expected {expected}, got {actual}");
        }
    }

    /// <summary>
    /// The tables above against the host CPU: every case at every offset 0..15 ends in #AC, in #GP,
    /// or in neither, on the host (ring 3, EFLAGS.AC set) as on the interpreter. SGDT and SIDT are
    /// left out: the host's UMIP makes them #GP in user mode.
    /// </summary>
    [Fact]
    public void EveryCaseEndsAsOnTheHost()
    {
        var names = new List<string>();
        var cases = new List<HostAlignmentOracle.Case>();
        var interpreted = new List<int?>();
        void Add(string name, bool stack, Action<Assembler> code)
        {
            for (int offset = 0; offset < 16; offset++)
            {
                names.Add($"{name} at {(stack ? "RSP" : "RBX")} offset {offset}");
                cases.Add(new HostAlignmentOracle.Case(stack, offset, Assemble(code, HostAlignmentOracle.CodeAddress)));
                interpreted.Add(stack ? RunStack(code, offset) : RunData(code, offset));
            }
        }
        foreach (var (name, (_, code)) in s_dataAccesses)
        {
            if (name is not ("sgdt [rbx]" or "sidt [rbx]"))
            {
                Add(name, stack: false, code);
            }
        }
        foreach (var (name, (_, code)) in s_sixteenByteOperands)
        {
            Add(name, stack: false, code);
        }
        foreach (var (name, (_, code)) in s_stackAccesses)
        {
            Add(name, stack: true, code);
        }
        var host = HostAlignmentOracle.Run(cases);
        var wrong = new List<string>();
        for (int i = 0; i < cases.Count; i++)
        {
            var mine = interpreted[i] switch
            {
                Vector.AC => HostAlignmentOracle.Outcome.AlignmentCheck,
                Vector.GP => HostAlignmentOracle.Outcome.GeneralProtection,
                _ => HostAlignmentOracle.Outcome.Other,
            };
            var theirs = host[i] == HostAlignmentOracle.Outcome.None ? HostAlignmentOracle.Outcome.Other : host[i];
            if (mine != theirs)
            {
                wrong.Add($"{names[i]}: host {host[i]}, interpreter {(interpreted[i] is int v ? $"exception {v}" : "no exception")}");
            }
        }
        Assert.True(wrong.Count == 0, $"{wrong.Count} of {cases.Count} cases differ from the host:\n{string.Join("\n", wrong)}");
    }

    static byte[] Assemble(Action<Assembler> build, ulong ip)
    {
        var a = new Assembler(64);
        build(a);
        using var ms = new MemoryStream();
        a.Assemble(new StreamCodeWriter(ms), ip);
        return ms.ToArray();
    }

    /// <summary>
    /// #AC is a fault with error code 0 (SDM 6.15): delivered through the IDT with RIP on the faulting
    /// instruction and RF = 1 in the saved RFLAGS (as every fault), nothing written, ring 0 entered.
    /// </summary>
    [Fact]
    public void AlignmentCheckIsAFaultDeliveredWithErrorCodeZero()
    {
        using var m = UserModeMachine(a =>
        {
            a.mov(rax, 0x1122334455667788);
            a.add(__qword_ptr[rbx + 1], rax);
        });
        m.Cpu.Rbx = Data;
        Assert.Equal(Vector.AC, m.RunToHandler());
        Assert.Equal(0UL, m.Ram.ReadU64(Rsp0 - 48));                                // error code
        Assert.Equal(Code + 10, m.Ram.ReadU64(Rsp0 - 40));                           // RIP of the ADD
        Assert.Equal(RFlags.AC | RFlags.RF, m.Ram.ReadU64(Rsp0 - 24) & (RFlags.AC | RFlags.RF));
        Assert.Equal(0UL, m.Ram.ReadU64(Data + 1));                                  // nothing written
        Assert.Equal(0, m.Cpu.Cpl);
    }

    /// <summary>
    /// The checks follow EFLAGS.AC within a block: POPF setting AC makes the next access (to a page
    /// whose translation is already cached) fault; POPF clearing it ends the checks.
    /// </summary>
    [Fact]
    public void PopfTurnsChecksOnAndOffMidBlock()
    {
        using var m = UserModeMachine(a =>
        {
            a.mov(eax, __dword_ptr[rbx + 1]); // AC clear: fine, and the page is in the TLB
            a.pushfq();
            a.xor(__dword_ptr[rsp], (int)RFlags.AC);
            a.popfq();                        // AC set
            a.mov(eax, __dword_ptr[rbx + 2]);
        }, flags: 0x202);
        m.Cpu.Rbx = Data;
        Assert.Equal(Vector.AC, m.RunToHandler());
        Assert.Equal(Code + 3 + 1 + 7 + 1, m.Ram.ReadU64(Rsp0 - 40));

        using var off = UserModeMachine(a =>
        {
            a.pushfq();
            a.xor(__dword_ptr[rsp], (int)RFlags.AC);
            a.popfq();                        // AC clear
            a.mov(eax, __dword_ptr[rbx + 2]);
            a.hlt();                          // #GP in ring 3: reached only without #AC
        });
        off.Cpu.Rbx = Data;
        Assert.Equal(Vector.GP, off.RunToHandler());
    }

    /// <summary>
    /// Leaving ring 3 ends the checks and returning to it with AC set resumes them: SYSCALL to a kernel
    /// whose SFMASK keeps AC, a misaligned kernel access (CPL 0: fine), SYSRET, a misaligned user access.
    /// </summary>
    [Fact]
    public void ChecksFollowTheCurrentPrivilegeLevel()
    {
        const ulong kernelEntry = 0x40000;
        using var m = UserModeMachine(a =>
        {
            a.syscall();
            a.mov(eax, __dword_ptr[rbx + 1]);
        });
        m.Cpu.Msr.Star = (0x23UL << 48) | (0x10UL << 32);
        m.Cpu.Msr.Lstar = kernelEntry;
        m.Cpu.Msr.Sfmask = RFlags.IF;
        m.Asm(kernelEntry, 64, a =>
        {
            a.mov(rax, __qword_ptr[rbx + 3]);
            a.mov(__qword_ptr[rbx + 5], rax);
            a.sysretq();
        });
        m.Cpu.Rbx = Data;
        Assert.Equal(Vector.AC, m.RunToHandler());
        Assert.Equal(Code + 2, m.Ram.ReadU64(Rsp0 - 40)); // the user MOV after SYSRET, not the kernel's
    }

    /// <summary>MOV CR0 clearing AM at CPL 0 turns the checks off for ring 3 even with AC set.</summary>
    [Fact]
    public void ClearingCr0AmDisablesChecks()
    {
        using var m = Machine(cpl: 0);
        Assert.Null(Run(m, a =>
        {
            a.mov(rax, cr0);
            a.and(eax, ~(int)Cr0.AM);
            a.mov(cr0, rax);
        }));
        Assert.Equal(0UL, m.Cpu.Cr0Value & Cr0.AM);
        m.Cpu.Segs[(int)Seg.CS].Selector = SysMachine.UserCode64 | 3;
        m.Cpu.Segs[(int)Seg.CS].Attributes |= 3 << 5;
        m.Cpu.UpdateMode();
        Assert.Equal(3, m.Cpu.Cpl);
        m.Cpu.Rbx = Data + 1;
        Assert.Null(Run(m, a => a.mov(eax, __dword_ptr[rbx])));
        m.Cpu.Cr0Value |= Cr0.AM;
        m.Cpu.UpdateMode();
        Assert.Equal(Vector.AC, Run(m, a => a.mov(eax, __dword_ptr[rbx])));
    }

    /// <summary>
    /// Priorities, as the host shows: a misaligned access to an unmapped page raises #AC, not #PF
    /// (CR2 unchanged); a misaligned non-canonical one raises #GP.
    /// </summary>
    [Fact]
    public void AlignmentCheckComesBeforePageFaultButAfterCanonicalCheck()
    {
        using var m = Machine();
        m.Cpu.Rbx = 0x4000_0001; // above SysMachine's 16 MiB identity map
        Assert.Equal(Vector.AC, Run(m, a => a.mov(eax, __dword_ptr[rbx])));
        Assert.Equal(0UL, m.Cpu.Cr2);
        m.Cpu.Rbx = 0x4000_0000;
        Assert.Equal(Vector.PF, Run(m, a => a.mov(eax, __dword_ptr[rbx])));
        m.Cpu.Rbx = 0x8000_0000_0000_0001;
        Assert.Equal(Vector.GP, Run(m, a => a.mov(eax, __dword_ptr[rbx])));
    }

    /// <summary>
    /// MASKMOVQ/MASKMOVDQU with a zero mask store nothing but still check the destination, as the
    /// host does (SDM Vol. 2B MASKMOVDQU: exceptions with a zero mask are implementation dependent):
    /// #PF for an unmapped one; #AC above.
    /// </summary>
    [Fact]
    public void MaskedStoresWithAZeroMaskStillCheckTheDestination()
    {
        using var m = Machine();
        m.Cpu.Rdi = 0x4000_0000;
        Assert.Equal(Vector.PF, Run(m, a => a.maskmovq(mm0, mm2)));
        Assert.Equal(Vector.PF, Run(m, a => a.maskmovdqu(xmm0, xmm2)));
        m.Cpu.Rdi = Data;
        m.Ram.WriteU64(Data, 0x1122_3344_5566_7788);
        Assert.Null(Run(m, a => a.maskmovdqu(xmm0, xmm2)));
        Assert.Equal(0x1122_3344_5566_7788UL, m.Ram.ReadU64(Data));
    }

    /// <summary>A REP string instruction whose elements are misaligned faults on the first one: nothing copied, RCX unchanged.</summary>
    [Fact]
    public void RepeatedStringFaultsBeforeTheFirstElement()
    {
        using var m = Machine();
        m.Ram.WriteU64(Data + 0x100, 0x0123_4567_89AB_CDEF);
        m.Cpu.Rsi = Data + 0x102;
        m.Cpu.Rdi = Data + 0x800;
        m.Cpu.Rcx = 64;
        Assert.Equal(Vector.AC, Run(m, a => a.rep.movsd()));
        Assert.Equal(64UL, m.Cpu.Rcx);
        Assert.Equal(Data + 0x102, m.Cpu.Rsi);
        Assert.Equal(0UL, m.Ram.ReadU64(Data + 0x800));

        m.Cpu.Rsi = Data + 0x100;
        Assert.Null(Run(m, a => a.rep.movsd()));
        Assert.Equal(0UL, m.Cpu.Rcx);
        Assert.Equal(0x0123_4567_89AB_CDEFUL, m.Ram.ReadU64(Data + 0x800));
    }

    /// <summary>In compatibility mode (a 32-bit ring-3 code segment) the same checks apply.</summary>
    [Fact]
    public void CompatibilityModeIsChecked()
    {
        using var m = UserModeMachine(a => { }, codeSelector: SysMachine.UserCode32 | 3);
        Assert.Equal(CpuMode.Compatibility, m.Cpu.Mode);
        m.Cpu.LoadDataSegment(Seg.DS, SysMachine.UserData | 3); // IRET to ring 3 left DS null
        m.Cpu.Rbx = Data + 2;
        Assert.Equal(Vector.AC, Run32(m, a => a.mov(eax, __dword_ptr[ebx])));
        m.Cpu.Rbx = Data + 4;
        Assert.Null(Run32(m, a => a.mov(eax, __dword_ptr[ebx])));
        m.Cpu.Rsp = Stack + 2;
        Assert.Equal(Vector.AC, Run32(m, a => a.push(eax)));
    }

    static int? Run32(SysMachine m, Action<Assembler> build)
    {
        ulong end = m.Asm(Code, 32, build);
        m.Cpu.Rip = Code;
        return m.StepUntil(end);
    }

    // ------------------------------------------------------------------ a ring-3 process under a 64-bit kernel

    /// <summary>
    /// A kernel with a HLT handler for every vector and RSP0 = <see cref="Rsp0"/>, CR0.AM set,
    /// that IRETQs to <paramref name="userCode"/> at <see cref="Code"/> with RFLAGS = <paramref name="flags"/>.
    /// </summary>
    static SysMachine UserModeMachine(Action<Assembler> userCode, ulong flags = 0x40202, int codeSelector = SysMachine.UserCode64 | 3)
    {
        const ulong kernelEntry = 0x50000;
        var m = new SysMachine();
        m.EnterLongMode();
        m.Cpu.Cr0Value |= Cr0.AM;
        m.Cpu.UpdateMode();
        m.Ram.WriteU64(SysMachine.Tss + 4, Rsp0);
        for (int v = 0; v < 256; v++)
        {
            m.SetGate(v, SysMachine.HandlerOf(v));
            m.Asm(SysMachine.HandlerOf(v), 64, a => a.hlt());
        }
        m.Asm(Code, codeSelector == (SysMachine.UserCode64 | 3) ? 64 : 32, userCode);
        m.Asm(kernelEntry, 64, a =>
        {
            a.mov(ax, SysMachine.TssSel);
            a.ltr(ax);
            a.push(SysMachine.UserData | 3);
            a.push((int)Stack);
            a.push((int)flags);
            a.push(codeSelector);
            a.push((int)Code);
            a.iretq();
        });
        m.Cpu.Rsp = 0x70000;
        m.Cpu.Rip = kernelEntry;
        Assert.Null(m.StepUntil(Code));
        Assert.Equal(3, m.Cpu.Cpl);
        return m;
    }

}
