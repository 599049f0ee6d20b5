using Iced.Intel;
using SharpVisor.Cpu.X86.Model;
using static Iced.Intel.AssemblerRegisters;

namespace SharpVisor.Cpu.X86.Tests.SystemInstructions;

/// <summary>
/// Hardware task switching in 32-bit protected mode (SDM Vol. 3A chapter 7; JMP, CALL, INT n and
/// IRET pseudo-code in Vol. 2). The machine runs task A (32-bit TSS, ring 0, flat segments); the
/// GDT adds the TSSs and gates below to <see cref="SysMachine"/>'s layout.
/// </summary>
public class TaskSwitchTests
{
    const ushort TssA = 0x48, TssB = 0x50, TssC = 0x58, GateB = 0x60, Code16 = 0x68, Data16 = 0x70, TssD = 0x78, Spare = 0x80;
    const ushort GdtEnd = 0x88;
    const ulong TssABase = 0x8000, TssBBase = 0x8100, TssCBase = 0x8200, TssDBase = 0x8300;
    const ulong CodeA = 0x10000, CodeB = 0x20000, CodeD = 0x30000, Seg16Base = 0x40000, Handler = 0x50000;
    const uint StackA = 0x70000, StackB = 0x60000, StackD = 0x58000, StackRing0 = 0x7F000;
    /// <summary>Sentinel in TSS fields the processor must not write.</summary>
    const uint Untouched = 0xDEAD_BEEF;

    // 32-bit TSS offsets (SDM Figure 7-2).
    const ulong Link = 0, Esp0 = 4, Ss0 = 8, Cr3Field = 0x1C, EipField = 0x20, EflagsField = 0x24, EaxField = 0x28, EbxField = 0x34, EspField = 0x38;
    const ulong EsField = 0x48, CsField = 0x4C, SsField = 0x50, DsField = 0x54, LdtField = 0x60, TrapField = 0x64;

    /// <summary>A system descriptor (TSS, LDT, gate) in the layout of SDM Figure 7-3.</summary>
    static ulong SystemDescriptor(ulong b, uint limit, int type, int dpl = 0, bool present = true) =>
        (limit & 0xFFFF) | ((b & 0xFF_FFFF) << 16) | ((ulong)(type | (dpl << 5) | (present ? 0x80 : 0)) << 40)
        | ((ulong)((limit >> 16) & 0xF) << 48) | ((b >> 24) << 56);

    /// <summary>A task gate (SDM Figure 7-6): only the TSS selector, DPL and P matter.</summary>
    static ulong TaskGate(ushort tss, int dpl = 0, bool present = true) =>
        ((ulong)tss << 16) | ((ulong)(5 | (dpl << 5) | (present ? 0x80 : 0)) << 40);

    static void W16(SysMachine m, ulong a, int v) => m.Ram.TryWrite(a, BitConverter.GetBytes((ushort)v));
    static int R16(SysMachine m, ulong a) => (int)(m.Ram.ReadU32(a) & 0xFFFF);
    static int TssType(SysMachine m, ushort sel) => (int)(m.Ram.ReadU64(SysMachine.Gdt + sel) >> 40) & 0xF;

    static void SetGdt(SysMachine m, ushort sel, ulong d) => m.Ram.WriteU64(SysMachine.Gdt + sel, d);

    /// <summary>A 32-bit TSS with every field set: dynamic fields from the arguments, the rest sentinels.</summary>
    static void WriteTss32(SysMachine m, ulong b, uint eip, uint esp, ushort cs = SysMachine.Code32, ushort ds = SysMachine.Data,
        uint eflags = 2, uint cr3 = 0, ushort ldt = 0, bool trap = false, uint ebx = 0)
    {
        for (ulong i = 0; i < 0x68; i += 4)
        {
            m.Ram.WriteU32(b + i, Untouched);
        }
        W16(m, b + Link, 0);
        m.Ram.WriteU32(b + Esp0, StackRing0);
        m.Ram.WriteU32(b + Ss0, SysMachine.Data);
        m.Ram.WriteU32(b + Cr3Field, cr3);
        m.Ram.WriteU32(b + EipField, eip);
        m.Ram.WriteU32(b + EflagsField, eflags);
        for (ulong r = 0; r < 8; r++)
        {
            m.Ram.WriteU32(b + EaxField + r * 4, 0x100 + (uint)r); // EAX=100h, ECX=101h, ...
        }
        m.Ram.WriteU32(b + EbxField, ebx);
        m.Ram.WriteU32(b + EspField, esp);
        for (ulong s = 0; s < 6; s++)
        {
            m.Ram.WriteU32(b + EsField + s * 4, s == 1 ? cs : ds);
        }
        m.Ram.WriteU32(b + LdtField, ldt);
        m.Ram.WriteU32(b + TrapField, (0x68u << 16) | (trap ? 1u : 0)); // I/O map base beyond the limit
    }

    /// <summary>32-bit protected mode at ring 0 in task A (TR loaded, A busy), task B available, IDT of 8-byte gates.</summary>
    static SysMachine Setup()
    {
        var m = new SysMachine();
        var c = m.Cpu;
        CpuSetup.EnterProtectedFlat32(c, SysMachine.Code32, SysMachine.Data);
        m.LoadGdtr();
        c.GdtLimit = GdtEnd - 1;
        c.IdtBase = SysMachine.Idt;
        c.IdtLimit = 256 * 8 - 1;
        SetGdt(m, TssA, SystemDescriptor(TssABase, 0x67, 0xB));   // busy: the current task
        SetGdt(m, TssB, SystemDescriptor(TssBBase, 0x67, 0x9));
        SetGdt(m, TssC, SystemDescriptor(TssCBase, 0x2B, 0x1));   // 16-bit TSS, available
        SetGdt(m, GateB, TaskGate(TssB));
        SetGdt(m, Code16, 0x0000_9A00_0000_FFFF | ((Seg16Base & 0xFF_FFFF) << 16));
        SetGdt(m, Data16, 0x0000_9200_0000_FFFF | ((Seg16Base & 0xFF_FFFF) << 16));
        SetGdt(m, TssD, SystemDescriptor(TssDBase, 0x67, 0x9));
        WriteTss32(m, TssABase, 0, 0, cr3: Untouched);
        WriteTss32(m, TssBBase, (uint)CodeB, StackB, eflags: 0x2 | (uint)RFlags.CF, ebx: 0xB0B0);
        WriteTss32(m, TssDBase, (uint)CodeD, StackD);
        c.Tr = new SegmentRegister { Selector = TssA, Base = TssABase, Limit = 0x67, Attributes = 0x8B };
        c.Rsp = StackA;
        c.Rax = 0xAAAA_0001;
        c.Rbx = 0xAAAA_0002;
        c.Rbp = 0xAAAA_0003;
        c.SetFlags(RFlags.Reserved1 | RFlags.ZF);
        c.Rip = CodeA;
        return m;
    }

    /// <summary>A 32-bit interrupt gate for <paramref name="vector"/> to a HLT at <see cref="Handler"/>.</summary>
    static void HaltingGate(SysMachine m, int vector)
    {
        m.Asm(Handler, 32, a => a.hlt());
        m.Ram.WriteU64(SysMachine.Idt + (ulong)vector * 8, (Handler & 0xFFFF) | ((ulong)SysMachine.Code32 << 16) | (0x8EUL << 40) | ((Handler >> 16) << 48));
    }

    /// <summary>Runs until the halting handler of <paramref name="vector"/> stops the CPU; returns the error code it got.</summary>
    static uint RunToFault(SysMachine m, int vector)
    {
        HaltingGate(m, vector);
        Assert.Equal(CpuExit.Halted, m.Cpu.Run(20));
        Assert.Equal(Handler + 1, m.Cpu.Rip);
        return m.Ram.ReadU32(m.Cpu.Rsp);
    }

    /// <summary>
    /// JMP to a TSS descriptor (SDM 7.3, Table 7-2 JMP column): A's dynamic state goes to A's TSS
    /// (EIP after the JMP, GPRs, EFLAGS, selectors; CR3/LDT fields untouched), B's state is loaded,
    /// A's busy bit is cleared and B's set, NT is B's own (clear), B's back-link is unchanged, CR0.TS
    /// is set and TR holds B's selector, base and limit.
    /// </summary>
    [Fact]
    public void JmpToTssSavesOldAndLoadsNewTask()
    {
        using var m = Setup();
        var c = m.Cpu;
        W16(m, TssBBase + Link, 0x1234);
        m.Ram.WriteU32(TssBBase + Cr3Field, 0x1234_5000); // paging is off: read but not loaded (SDM 7.3 step 12)
        m.Ram.WriteU32(TssABase + LdtField, Untouched);   // LDTR is 0: a save would write 0 here
        ulong after = m.Asm(CodeA, 32, a => a.jmp(TssB, 0xFFFF)); // offset is ignored
        m.Asm(CodeB, 32, a => a.nop());

        Assert.Null(c.StepForTest());

        Assert.Equal(CodeB, c.Rip);
        Assert.Equal(0xB0B0UL, c.Rbx);
        Assert.Equal(0x100UL, c.Rax);
        Assert.Equal(StackB, c.Rsp);
        Assert.True(c.CF());
        Assert.Equal(0UL, c.GetFlags() & RFlags.NT);
        Assert.Equal(TssB, c.Tr.Selector);
        Assert.Equal(TssBBase, c.Tr.Base);
        Assert.Equal(0x67u, c.Tr.Limit);
        Assert.Equal(0xB, c.Tr.Type);
        Assert.Equal(SysMachine.Code32, c.Segs[(int)Seg.CS].Selector);
        Assert.Equal(CpuMode.Protected, c.Mode);
        Assert.Equal(Cr0.TS, c.Cr0Value & Cr0.TS);
        Assert.Equal(0UL, c.Cr3);

        Assert.Equal(0x9, TssType(m, TssA));
        Assert.Equal(0xB, TssType(m, TssB));
        Assert.Equal(0x1234, R16(m, TssBBase + Link));

        Assert.Equal((uint)after, m.Ram.ReadU32(TssABase + EipField));
        Assert.Equal(0xAAAA_0001u, m.Ram.ReadU32(TssABase + EaxField));
        Assert.Equal(0xAAAA_0002u, m.Ram.ReadU32(TssABase + EbxField));
        Assert.Equal(StackA, m.Ram.ReadU32(TssABase + EspField));
        Assert.Equal((uint)(RFlags.Reserved1 | RFlags.ZF), m.Ram.ReadU32(TssABase + EflagsField));
        Assert.Equal(SysMachine.Code32, R16(m, TssABase + CsField));
        Assert.Equal(SysMachine.Data, R16(m, TssABase + SsField));
        Assert.Equal(SysMachine.Data, R16(m, TssABase + DsField));
        Assert.Equal(Untouched, m.Ram.ReadU32(TssABase + Cr3Field));  // CR3 is not saved
        Assert.Equal(Untouched, m.Ram.ReadU32(TssABase + LdtField));  // nor the LDT selector
        Assert.Equal(0, R16(m, TssABase + Link));
    }

    /// <summary>
    /// CALL through a task gate nests (Table 7-2 CALL column): B's back-link = A, NT set in B, both
    /// busy. IRET with NT=1 returns through the back-link (IRET TASK-RETURN): A resumes after the CALL
    /// with its registers, B's busy bit is cleared, B's saved EFLAGS image has NT clear.
    /// </summary>
    [Fact]
    public void CallThroughTaskGateThenIretBack()
    {
        using var m = Setup();
        var c = m.Cpu;
        ulong after = m.Asm(CodeA, 32, a => { a.call(GateB, 0); a.nop(); });
        m.Asm(CodeB, 32, a => { a.mov(ebx, 0x5A); a.iretd(); });

        Assert.Null(c.StepForTest());
        Assert.Equal(CodeB, c.Rip);
        Assert.Equal(TssB, c.Tr.Selector);
        Assert.Equal(RFlags.NT, c.GetFlags() & RFlags.NT);
        Assert.Equal(TssA, R16(m, TssBBase + Link));
        Assert.Equal(0xB, TssType(m, TssA));
        Assert.Equal(0xB, TssType(m, TssB));
        Assert.Equal((uint)after - 1, m.Ram.ReadU32(TssABase + EipField));

        Assert.Null(c.StepForTest()); // mov ebx
        Assert.Null(c.StepForTest()); // iretd: task return

        Assert.Equal(after - 1, c.Rip);
        Assert.Equal(TssA, c.Tr.Selector);
        Assert.Equal(TssABase, c.Tr.Base);
        Assert.Equal(0xAAAA_0001UL, c.Rax);
        Assert.Equal(0xAAAA_0002UL, c.Rbx);
        Assert.Equal(0xAAAA_0003UL, c.Rbp);
        Assert.Equal((ulong)StackA, c.Rsp);
        Assert.True(c.ZF());
        Assert.Equal(0UL, c.GetFlags() & RFlags.NT);
        Assert.Equal(0xB, TssType(m, TssA));
        Assert.Equal(0x9, TssType(m, TssB));
        Assert.Equal(0x5Au, m.Ram.ReadU32(TssBBase + EbxField));
        Assert.Equal(0u, m.Ram.ReadU32(TssBBase + EflagsField) & (uint)RFlags.NT);
        Assert.Equal((uint)CodeB + 6, m.Ram.ReadU32(TssBBase + EipField)); // after the IRET (mov ebx,imm32 = 5 bytes)
        Assert.Null(m.StepUntil(after));
    }

    /// <summary>
    /// An exception with an error code through an IDT task gate (SDM 6.12.2; INT n pseudo-code
    /// TASK-GATE): the switch nests (back-link, NT, busy) and the error code is pushed on the new
    /// task's stack; the old task's EIP is the faulting instruction.
    /// </summary>
    [Fact]
    public void ExceptionThroughTaskGatePushesErrorCodeOnNewStack()
    {
        using var m = Setup();
        var c = m.Cpu;
        m.Ram.WriteU64(SysMachine.Idt + Vector.GP * 8, TaskGate(TssB));
        m.Asm(CodeA, 32, a => { a.nop(); a.mov(ds, ax); });
        m.Asm(CodeB, 32, a => a.hlt());
        c.Rax = 0x1F8; // beyond the GDT limit: #GP(1F8h)

        Assert.Equal(CpuExit.Halted, c.Run(10));

        Assert.Equal(CodeB + 1, c.Rip);
        Assert.Equal(TssB, c.Tr.Selector);
        Assert.Equal(StackB - 4, (uint)c.Rsp);
        Assert.Equal(0x1F8u, m.Ram.ReadU32(StackB - 4));
        Assert.Equal(RFlags.NT, c.GetFlags() & RFlags.NT);
        Assert.Equal(TssA, R16(m, TssBBase + Link));
        Assert.Equal(0xB, TssType(m, TssA));
        Assert.Equal(0xB, TssType(m, TssB));
        Assert.Equal((uint)CodeA + 1, m.Ram.ReadU32(TssABase + EipField));
        Assert.Equal(0x1F8u, m.Ram.ReadU32(TssABase + EaxField));
    }

    /// <summary>
    /// The classic #DF handler task (SDM 6.15 Interrupt 8, 7.3): task A's stack page is not present,
    /// so INT3 cannot push its frame (#PF), the #PF handler cannot either (#PF while delivering #PF
    /// = #DF), and #DF goes through a task gate to task D with its own stack and page directory:
    /// D runs with error code 0 on its stack, CR3 from D's TSS, and A's TSS holds A's unchanged ESP.
    /// </summary>
    [Fact]
    public void DoubleFaultThroughTaskGateSurvivesBrokenStack()
    {
        using var m = Setup();
        var c = m.Cpu;
        const ulong pdA = 0xA000, pdD = 0xC000, pt = 0xB000;
        const uint brokenStack = 0x91000;
        // 32-bit paging (SDM 4.3): both directories share one page table identity-mapping 0-4 MiB,
        // except that A's stack page (0x90000) is not present.
        for (ulong i = 0; i < 1024; i++)
        {
            m.Ram.WriteU32(pt + i * 4, i == 0x90 ? 0 : (uint)(i << 12) | 3);
        }
        m.Ram.WriteU32(pdA, (uint)pt | 3);
        m.Ram.WriteU32(pdD, (uint)pt | 3);
        c.Cr3 = pdA;
        c.Cr0Value |= Cr0.PG;
        c.FlushTlb(includeGlobal: true);
        c.UpdateMode();
        HaltingGate(m, Vector.BP);
        HaltingGate(m, Vector.PF);
        m.Ram.WriteU64(SysMachine.Idt + Vector.DF * 8, TaskGate(TssD));
        WriteTss32(m, TssDBase, (uint)CodeD, StackD, cr3: (uint)pdD);
        m.Asm(CodeA, 32, a => a.int3());
        m.Asm(CodeD, 32, a => a.hlt());
        c.Rsp = brokenStack;

        Assert.Equal(CpuExit.Halted, c.Run(10));

        Assert.Equal(CodeD + 1, c.Rip);
        Assert.Equal(TssD, c.Tr.Selector);
        Assert.Equal(pdD, c.Cr3);
        Assert.Equal(StackD - 4, (uint)c.Rsp);
        Assert.Equal(0u, m.Ram.ReadU32(StackD - 4));     // #DF error code
        Assert.Equal(brokenStack - 4, c.Cr2);
        Assert.Equal(brokenStack, m.Ram.ReadU32(TssABase + EspField));
        Assert.Equal(TssA, R16(m, TssDBase + Link));
        Assert.Equal(RFlags.NT, c.GetFlags() & RFlags.NT);
        Assert.Equal(Untouched, m.Ram.ReadU32(TssABase + Cr3Field));
    }

    /// <summary>
    /// JMP to a 16-bit TSS (SDM 7.6, Figure 7-11): IP, FLAGS, AX..DI, ES/CS/SS/DS and the LDT come
    /// from the 44-byte TSS, FS/GS become null, the 16-bit code runs; JMP back to A's (now available)
    /// 32-bit TSS saves the 16-bit state at the 16-bit offsets.
    /// </summary>
    [Fact]
    public void SixteenBitTssRoundTrip()
    {
        using var m = Setup();
        var c = m.Cpu;
        for (ulong i = 0; i < 0x2C; i += 2)
        {
            W16(m, TssCBase + i, 0);
        }
        W16(m, TssCBase + 0x0E, 0x100);   // IP
        W16(m, TssCBase + 0x10, 0x0003);  // FLAGS: CF
        W16(m, TssCBase + 0x12, 0x1111);  // AX
        W16(m, TssCBase + 0x18, 0x4444);  // BX
        W16(m, TssCBase + 0x1A, 0xF000);  // SP
        W16(m, TssCBase + 0x22, Data16);  // ES
        W16(m, TssCBase + 0x24, Code16);  // CS
        W16(m, TssCBase + 0x26, Data16);  // SS
        W16(m, TssCBase + 0x28, Data16);  // DS
        ulong afterA = m.Asm(CodeA, 32, a => a.jmp(TssC, 0));
        ulong afterC = m.Asm(Seg16Base + 0x100, 16, a => { a.mov(ax, 0x2222); a.push(bx); a.jmp(TssA, 0); });

        Assert.Null(c.StepForTest());
        Assert.Equal(0x100UL, c.Rip);
        Assert.Equal(TssC, c.Tr.Selector);
        Assert.Equal(0x3, c.Tr.Type);
        Assert.Equal(0x3, TssType(m, TssC));
        Assert.Equal(0x9, TssType(m, TssA));
        Assert.Equal(0xFFFF_1111UL, c.Rax);
        Assert.Equal(0xFFFF_F000UL, c.Rsp);
        Assert.Equal(Code16, c.Segs[(int)Seg.CS].Selector);
        Assert.Equal(Seg16Base, c.Segs[(int)Seg.CS].Base);
        Assert.Equal(0, c.Segs[(int)Seg.FS].Selector);
        Assert.Equal(0, c.Segs[(int)Seg.GS].Selector);
        Assert.True(c.CF());
        Assert.Equal(CpuMode.Protected, c.Mode);
        Assert.Equal(16, c.CodeBits);

        Assert.Null(c.StepForTest()); // mov ax
        Assert.Null(c.StepForTest()); // push bx (16-bit stack)
        Assert.Equal(0x4444u, m.Ram.ReadU32(Seg16Base + 0xEFFE) & 0xFFFF);
        Assert.Null(c.StepForTest()); // jmp back to A

        Assert.Equal(afterA, c.Rip);
        Assert.Equal(TssA, c.Tr.Selector);
        Assert.Equal(0xAAAA_0002UL, c.Rbx);
        Assert.Equal(32, c.CodeBits);
        Assert.Equal(0x1, TssType(m, TssC));
        Assert.Equal((int)(afterC - Seg16Base), R16(m, TssCBase + 0x0E)); // IP after the JMP
        Assert.Equal(0x2222, R16(m, TssCBase + 0x12));                  // AX
        Assert.Equal(0xEFFE, R16(m, TssCBase + 0x1A));                  // SP
        Assert.Equal(Code16, R16(m, TssCBase + 0x24));                  // CS
        Assert.Equal(Data16, R16(m, TssCBase + 0x26));                  // SS
    }

    /// <summary>
    /// With paging on, the new task's CR3 is loaded and stale translations are gone (SDM 7.3 step 12;
    /// 4.10.4.1 "task switch" flushes like MOV to CR3): A and B map linear 3FF000H to different pages,
    /// and B reads its own page although A's translation was cached just before the switch.
    /// </summary>
    [Fact]
    public void NewCr3IsLoadedAndTlbFlushed()
    {
        using var m = Setup();
        var c = m.Cpu;
        const ulong pdA = 0xA000, pdB = 0xC000, ptA = 0xB000, ptB = 0xD000;
        const uint probe = 0x3F_F000;
        for (ulong i = 0; i < 1024; i++)
        {
            m.Ram.WriteU32(ptA + i * 4, (uint)(i << 12) | 3);
            m.Ram.WriteU32(ptB + i * 4, (uint)(i << 12) | 3);
        }
        m.Ram.WriteU32(ptB + 0x3FF * 4, 0x20_0000 | 3); // B: 3FF000H -> 200000H
        m.Ram.WriteU32(pdA, (uint)ptA | 3);
        m.Ram.WriteU32(pdB, (uint)ptB | 3);
        m.Ram.WriteU32(probe, 0xAAAA);
        m.Ram.WriteU32(0x20_0000, 0xBBBB);
        c.Cr3 = pdA;
        c.Cr0Value |= Cr0.PG;
        c.FlushTlb(includeGlobal: true);
        c.UpdateMode();
        WriteTss32(m, TssBBase, (uint)CodeB, StackB, cr3: (uint)pdB);
        m.Asm(CodeA, 32, a => { a.mov(ecx, __dword_ptr[probe]); a.jmp(TssB, 0); });
        m.Asm(CodeB, 32, a => a.mov(ecx, __dword_ptr[probe]));

        Assert.Null(c.StepForTest());
        Assert.Equal(0xAAAAUL, c.Rcx);
        Assert.Null(c.StepForTest()); // task switch
        Assert.Equal(pdB, c.Cr3);
        Assert.Null(c.StepForTest());
        Assert.Equal(0xBBBBUL, c.Rcx);
        Assert.Equal(0xAAAAu, m.Ram.ReadU32(TssABase + 0x2C)); // A's ECX saved
    }

    /// <summary>
    /// The new task's LDT is loaded from its TSS before its segment registers, so they may name it
    /// (SDM 7.3 step 12); an LDT selector naming something that is not an LDT is #TS(LDT selector)
    /// after the commit point (Table 7-1).
    /// </summary>
    [Fact]
    public void NewTaskLdtIsLoadedBeforeItsSegments()
    {
        using var m = Setup();
        var c = m.Cpu;
        const ulong ldtBase = 0x9000;
        const ushort ldtSel = Spare, ldtData = 0x0C | 4; // LDT entry 1, TI = 1
        SetGdt(m, ldtSel, SystemDescriptor(ldtBase, 0x0F, 0x2));
        m.Ram.WriteU64(ldtBase + 8, 0x00CF_9200_0000_FFFF | (0x1000UL << 16)); // data, base 1000H
        WriteTss32(m, TssBBase, (uint)CodeB, StackB, ds: SysMachine.Data, ldt: ldtSel);
        m.Ram.WriteU32(TssBBase + DsField, ldtData);
        m.Ram.WriteU32(TssBBase + EsField, ldtData);
        m.Asm(CodeA, 32, a => a.jmp(TssB, 0));

        Assert.Null(c.StepForTest());
        Assert.Equal(ldtSel, c.Ldtr.Selector);
        Assert.Equal(ldtBase, c.Ldtr.Base);
        Assert.Equal(0x0Fu, c.Ldtr.Limit);
        Assert.Equal(ldtData, c.Segs[(int)Seg.DS].Selector);
        Assert.Equal(0x1000UL, c.Segs[(int)Seg.DS].Base);
        Assert.Equal(0x1000UL, c.Segs[(int)Seg.ES].Base);

        using var m2 = Setup();
        WriteTss32(m2, TssBBase, (uint)CodeB, StackB, ldt: SysMachine.Data); // not an LDT descriptor
        m2.Asm(CodeA, 32, a => a.jmp(TssB, 0));
        Assert.Equal(Vector.TS, m2.Cpu.StepForTest());
        Assert.Equal(TssB, m2.Cpu.Tr.Selector); // after the commit point
        Assert.Equal(CodeB, m2.Cpu.Rip);
    }

    /// <summary>A TSS limit below 67H (32-bit) is #TS(new TSS selector) before anything changes (SDM 7.3 step 3, Table 7-1).</summary>
    [Fact]
    public void ShortTssLimitIsInvalidTss()
    {
        using var m = Setup();
        var c = m.Cpu;
        SetGdt(m, TssB, SystemDescriptor(TssBBase, 0x66, 0x9));
        m.Asm(CodeA, 32, a => a.jmp(TssB, 0));
        Assert.Equal((uint)TssB, RunToFault(m, Vector.TS));
        AssertStillInTaskA(m);
    }

    /// <summary>A 16-bit TSS needs a limit of at least 2BH (44 bytes, SDM 7.6): 2AH is #TS.</summary>
    [Fact]
    public void Short16BitTssLimitIsInvalidTss()
    {
        using var m = Setup();
        SetGdt(m, TssC, SystemDescriptor(TssCBase, 0x2A, 0x1));
        m.Asm(CodeA, 32, a => a.jmp(TssC, 0));
        Assert.Equal((uint)TssC, RunToFault(m, Vector.TS));
        AssertStillInTaskA(m);
    }

    /// <summary>JMP/CALL to a busy TSS, directly or through a task gate, is #GP(TSS selector) (SDM JMP/CALL, Table 7-2).</summary>
    [Fact]
    public void BusyTssIsGeneralProtection()
    {
        using var m = Setup();
        SetGdt(m, TssB, SystemDescriptor(TssBBase, 0x67, 0xB));
        m.Asm(CodeA, 32, a => a.call(GateB, 0));
        Assert.Equal((uint)TssB, RunToFault(m, Vector.GP));
        AssertStillInTaskA(m);

        using var m2 = Setup();
        m2.Asm(CodeA, 32, a => a.jmp(TssA, 0)); // the current task is busy too
        Assert.Equal((uint)TssA, RunToFault(m2, Vector.GP));
        AssertStillInTaskA(m2);
    }

    /// <summary>IRET with NT=1 whose back-link names an available (not busy) TSS is #TS(link) (SDM IRET TASK-RETURN, Table 6-6).</summary>
    [Fact]
    public void IretToNotBusyTaskIsInvalidTss()
    {
        using var m = Setup();
        var c = m.Cpu;
        W16(m, TssABase + Link, TssB);
        m.Asm(CodeA, 32, a => a.iretd());
        c.SetFlags(RFlags.Reserved1 | RFlags.NT);
        Assert.Equal((uint)TssB, RunToFault(m, Vector.TS));
        AssertStillInTaskA(m);
    }

    /// <summary>A TSS descriptor or task gate with P=0 is #NP(its selector) (SDM JMP/CALL TASK-GATE and TASK-STATE-SEGMENT).</summary>
    [Fact]
    public void NotPresentTssOrGateIsSegmentNotPresent()
    {
        using var m = Setup();
        SetGdt(m, TssB, SystemDescriptor(TssBBase, 0x67, 0x9, present: false));
        m.Asm(CodeA, 32, a => a.jmp(TssB, 0));
        Assert.Equal((uint)TssB, RunToFault(m, Vector.NP));
        AssertStillInTaskA(m);

        using var m2 = Setup();
        SetGdt(m2, GateB, TaskGate(TssB, present: false));
        m2.Asm(CodeA, 32, a => a.jmp(GateB, 0));
        Assert.Equal((uint)GateB, RunToFault(m2, Vector.NP));
        AssertStillInTaskA(m2);
    }

    /// <summary>A task gate naming something other than a TSS is #GP(TSS selector) (SDM CALL TASK-GATE).</summary>
    [Fact]
    public void TaskGateToNonTssIsGeneralProtection()
    {
        using var m = Setup();
        SetGdt(m, GateB, TaskGate(SysMachine.Data));
        m.Asm(CodeA, 32, a => a.call(GateB, 0));
        Assert.Equal((uint)SysMachine.Data, RunToFault(m, Vector.GP));
        AssertStillInTaskA(m);
    }

    /// <summary>
    /// Privilege checks: from CPL 3, JMP to a DPL-0 TSS and CALL through a DPL-0 task gate are
    /// #GP(selector) (SDM 7.3 step 2, JMP/CALL); INT n through a DPL-0 IDT task gate is
    /// #GP(vector * 8 + 2) (SDM INT n); a hardware exception through the same gate switches anyway.
    /// </summary>
    [Fact]
    public void DplChecksApplyToJmpCallAndIntNButNotToExceptions()
    {
        foreach (var (sel, build) in new (ushort, Action<Assembler>)[]
        {
            (TssB, a => a.jmp(TssB | 3, 0)),
            (GateB, a => a.call(GateB | 3, 0)),
        })
        {
            using var m = SetupRing3();
            m.Asm(CodeA, 32, build);
            Assert.Equal((uint)sel, RunToFault(m, Vector.GP));
            Assert.Equal(TssA, m.Cpu.Tr.Selector);
        }

        using (var m = SetupRing3())
        {
            m.Ram.WriteU64(SysMachine.Idt + 0x40 * 8, TaskGate(TssB));
            m.Asm(CodeA, 32, a => a.@int(0x40));
            Assert.Equal(0x40u * 8 + 2, RunToFault(m, Vector.GP));
            Assert.Equal(TssA, m.Cpu.Tr.Selector);
        }

        using (var m = SetupRing3())
        {
            var c = m.Cpu;
            m.Ram.WriteU64(SysMachine.Idt + Vector.UD * 8, TaskGate(TssB)); // DPL 0
            m.Asm(CodeA, 32, a => a.ud2());
            m.Asm(CodeB, 32, a => a.hlt());
            Assert.Equal(CpuExit.Halted, c.Run(10));
            Assert.Equal(TssB, c.Tr.Selector);
            Assert.Equal(0, c.Cpl);
            Assert.Equal((uint)CodeA, m.Ram.ReadU32(TssABase + EipField));
            Assert.Equal(SysMachine.UserCode32 | 3, R16(m, TssABase + CsField));
        }
    }

    /// <summary>
    /// An external interrupt through an IDT task gate: no DPL check, the old task's EIP is the
    /// instruction not yet executed, nothing is pushed (SDM 6.12.2). Through a gate naming a busy
    /// TSS it is #GP(TSS selector + EXT) (INT n pseudo-code TASK-GATE; EXT, SDM 6.13).
    /// </summary>
    [Fact]
    public void ExternalInterruptThroughTaskGate()
    {
        using var m = SetupRing3();
        var c = m.Cpu;
        var apic = new FakeApic { Pending = 0x30 };
        c.Apic = apic;
        c.SetFlags(RFlags.Reserved1 | RFlags.IF);
        m.Ram.WriteU64(SysMachine.Idt + 0x30 * 8, TaskGate(TssB)); // DPL 0, entered from CPL 3
        m.Asm(CodeA, 32, a => a.nop());
        m.Asm(CodeB, 32, a => a.hlt());
        Assert.Equal(CpuExit.Halted, c.Run(10));
        Assert.Equal(TssB, c.Tr.Selector);
        Assert.Equal((ulong)StackB, c.Rsp);                          // no error code, no frame
        Assert.Equal((uint)CodeA, m.Ram.ReadU32(TssABase + EipField)); // not executed yet
        Assert.Equal(RFlags.IF, m.Ram.ReadU32(TssABase + EflagsField) & RFlags.IF);

        using var m2 = Setup();
        var c2 = m2.Cpu;
        c2.Apic = new FakeApic { Pending = 0x30 };
        c2.SetFlags(RFlags.Reserved1 | RFlags.IF);
        SetGdt(m2, TssB, SystemDescriptor(TssBBase, 0x67, 0xB));
        m2.Ram.WriteU64(SysMachine.Idt + 0x30 * 8, TaskGate(TssB));
        m2.Asm(CodeA, 32, a => a.nop());
        Assert.Equal((uint)TssB | 1, RunToFault(m2, Vector.GP));
        AssertStillInTaskA(m2);
    }

    /// <summary>Task A at CPL 3 (ring-0 stack in its TSS for the fault handlers).</summary>
    static SysMachine SetupRing3()
    {
        var m = Setup();
        var c = m.Cpu;
        c.Segs[(int)Seg.CS] = new SegmentRegister { Selector = SysMachine.UserCode32 | 3, Limit = 0xFFFF_FFFF, Attributes = 0xC0FB };
        for (int s = 0; s < 6; s++)
        {
            if (s != (int)Seg.CS)
            {
                c.Segs[s] = new SegmentRegister { Selector = SysMachine.UserData | 3, Limit = 0xFFFF_FFFF, Attributes = 0xC0F3 };
            }
        }
        c.UpdateMode();
        Assert.Equal(3, c.Cpl);
        return m;
    }

    /// <summary>
    /// A fault while loading the new task's segments comes after the commit point and is raised in
    /// the new task (SDM 7.3 step 13 and note): B's CS selector names a data segment, so the JMP
    /// completes the switch (A saved, TR = B, B busy) and then raises #TS(CS selector) at B's first
    /// EIP. Delivered through a task gate to task D, it saves B's half-loaded state into B's TSS.
    /// </summary>
    [Fact]
    public void SegmentFaultAfterCommitIsRaisedInNewTask()
    {
        using var m = Setup();
        var c = m.Cpu;
        WriteTss32(m, TssBBase, (uint)CodeB, StackB, cs: SysMachine.Data);
        ulong after = m.Asm(CodeA, 32, a => a.jmp(TssB, 0));

        Assert.Equal(Vector.TS, c.StepForTest());
        Assert.Equal(TssB, c.Tr.Selector);
        Assert.Equal(CodeB, c.Rip);
        Assert.Equal(SysMachine.Data, c.Segs[(int)Seg.CS].Selector);
        Assert.Equal((uint)after, m.Ram.ReadU32(TssABase + EipField));
        Assert.Equal(0xAAAA_0001u, m.Ram.ReadU32(TssABase + EaxField));
        Assert.Equal(0x9, TssType(m, TssA));
        Assert.Equal(0xB, TssType(m, TssB));

        // The same through the run loop with #TS handled by task D.
        using var m2 = Setup();
        var c2 = m2.Cpu;
        WriteTss32(m2, TssBBase, (uint)CodeB, StackB, cs: SysMachine.Data, ebx: 0xB0B0);
        m2.Ram.WriteU64(SysMachine.Idt + Vector.TS * 8, TaskGate(TssD));
        m2.Asm(CodeA, 32, a => a.jmp(TssB, 0));
        m2.Asm(CodeD, 32, a => a.hlt());
        Assert.Equal(CpuExit.Halted, c2.Run(10));
        Assert.Equal(TssD, c2.Tr.Selector);
        Assert.Equal((uint)SysMachine.Data, m2.Ram.ReadU32(StackD - 4));   // #TS(CS selector)
        Assert.Equal(TssB, R16(m2, TssDBase + Link));
        Assert.Equal((uint)CodeB, m2.Ram.ReadU32(TssBBase + EipField));    // B's context, not A's
        Assert.Equal(0xB0B0u, m2.Ram.ReadU32(TssBBase + EbxField));
        Assert.Equal(SysMachine.Data, R16(m2, TssBBase + CsField));
    }

    /// <summary>The T flag of the new 32-bit TSS raises #DB (DR6.BT) before the new task's first instruction (SDM 7.2.1, Vol. 3B 18.3.1.5).</summary>
    [Fact]
    public void TrapFlagInTssRaisesDebugTrap()
    {
        using var m = Setup();
        var c = m.Cpu;
        WriteTss32(m, TssBBase, (uint)CodeB, StackB, trap: true);
        m.Asm(CodeA, 32, a => a.jmp(TssB, 0));
        m.Asm(CodeB, 32, a => a.nop());
        Assert.Equal(Vector.DB, c.StepForTest());
        Assert.Equal(TssB, c.Tr.Selector);
        Assert.Equal(CodeB, c.Rip);
        Assert.NotEqual(0UL, c.Dr[6] & (1UL << 15));

        // Through the run loop the #DB is delivered in task B with B's first EIP as return address.
        using var m2 = Setup();
        WriteTss32(m2, TssBBase, (uint)CodeB, StackB, trap: true);
        m2.Asm(CodeA, 32, a => a.jmp(TssB, 0));
        m2.Asm(CodeB, 32, a => a.nop());
        RunToFault(m2, Vector.DB);
        Assert.Equal((uint)CodeB, m2.Ram.ReadU32(m2.Cpu.Rsp));
        Assert.Equal(TssB, m2.Cpu.Tr.Selector);
    }

    /// <summary>
    /// A #DF handler task with T=1: the #DB comes after the #DF delivery completed, as an event of its
    /// own in the new task (not a fault while delivering #DF, which would be a triple fault). Here
    /// #UD finds its IDT entry not present (#NP), #NP's too (#DF, SDM Table 6-5), #DF goes to task B.
    /// </summary>
    [Fact]
    public void TrapFlagOfDoubleFaultTaskIsNotTripleFault()
    {
        using var m = Setup();
        var c = m.Cpu;
        WriteTss32(m, TssBBase, (uint)CodeB, StackB, trap: true);
        m.Ram.WriteU64(SysMachine.Idt + Vector.DF * 8, TaskGate(TssB));
        m.Asm(CodeA, 32, a => a.ud2());
        m.Asm(CodeB, 32, a => a.nop());
        RunToFault(m, Vector.DB);
        Assert.Equal(TssB, c.Tr.Selector);
        Assert.Equal(StackB - 4 - 12, (uint)c.Rsp);         // #DF error code, then the #DB frame
        Assert.Equal((uint)CodeB, m.Ram.ReadU32(c.Rsp));     // #DB returns to B's first instruction
        Assert.Equal(0u, m.Ram.ReadU32(StackB - 4));
    }

    /// <summary>IA-32e mode has no task switches: a far JMP to a TSS descriptor is #GP(selector) (SDM JMP, 64-bit mode exceptions).</summary>
    [Fact]
    public void NoTaskSwitchInLongMode()
    {
        using var m = new SysMachine();
        var c = m.Cpu;
        m.EnterLongMode();
        m.Ram.TryWrite(0x50004, BitConverter.GetBytes(SysMachine.TssSel));
        m.Asm(CodeA, 64, a => a.jmp(__fword_ptr[0x50000]));
        c.Rip = CodeA;
        Assert.Equal(Vector.GP, c.StepForTest());
        Assert.Equal(CodeA, c.Rip);
        Assert.Equal(0x9, TssType(m, SysMachine.TssSel));
    }

    static void AssertStillInTaskA(SysMachine m)
    {
        var c = m.Cpu;
        Assert.Equal(TssA, c.Tr.Selector);
        Assert.Equal(0xB, TssType(m, TssA));
        Assert.Equal(0u, m.Ram.ReadU32(TssABase + EipField)); // nothing saved
        Assert.Equal(0UL, c.Cr0Value & Cr0.TS);
    }
}
