using Iced.Intel;
using SharpVisor.Core;
using SharpVisor.Cpu.X86.Model;
using static Iced.Intel.AssemblerRegisters;

namespace SharpVisor.Cpu.X86.Tests.SystemInstructions;

/// <summary>MSRs, TSC, CPUID, HLT, INVLPG, port I/O and descriptor-table instructions.</summary>
public unsafe class MachineInstructionTests
{
    const ulong Code = 0x10000;

    static (SysMachine M, Cpu C) LongMode(int cpl = 0)
    {
        var m = new SysMachine();
        m.EnterLongMode(cpl);
        m.Cpu.Rsp = 0x70000;
        return (m, m.Cpu);
    }

    /// <summary>
    /// SDM Vol. 2B WRMSR: an MSR that does not exist is #GP(0) — Linux's wrmsr_safe/rdmsr_safe
    /// probes rely on exactly that — and nothing changes.
    /// </summary>
    [Theory]
    [InlineData(0x12345678u)]
    [InlineData(0xC001_0015u)] // an AMD MSR (HWCR): we are an Intel CPU
    [InlineData(0x8Bu + 1)]
    public void UnknownMsrIsGeneralProtection(uint msr)
    {
        var (m, c) = LongMode();
        using var _ = m;
        m.Asm(Code, 64, a => { a.wrmsr(); a.rdmsr(); });
        c.Rip = Code;
        c.Rcx = msr;
        c.Rax = 0x55;
        c.Rdx = 0x66;
        long before = c.Counters.UnknownMsrAccesses.Value;
        Assert.Equal(Vector.GP, c.StepForTest());
        Assert.Equal(0x55UL, c.Rax);
        Assert.Equal(before + 1, c.Counters.UnknownMsrAccesses.Value);
        c.Rip = Code + 2;
        Assert.Equal(Vector.GP, c.StepForTest());
        Assert.Equal(0x66UL, c.Rdx);
    }

    /// <summary>RDMSR/WRMSR are privileged: #GP(0) at CPL 3 even for a valid MSR (SDM RDMSR).</summary>
    [Fact]
    public void MsrAccessAtCpl3Faults()
    {
        var (m, c) = LongMode(cpl: 3);
        using var _ = m;
        m.Asm(Code, 64, a => a.rdmsr());
        c.Rip = Code;
        c.Rcx = MsrIndex.Efer;
        Assert.Equal(Vector.GP, c.StepForTest());
    }

    /// <summary>
    /// Plain MSRs round-trip; FS_BASE/GS_BASE also change the segment bases addressing uses;
    /// non-canonical bases, invalid PAT types and MTRR reserved bits are #GP (SDM Vol. 4, Vol. 3A 12.11/12.12).
    /// </summary>
    [Fact]
    public void MsrWritesAndValidation()
    {
        var (m, c) = LongMode();
        using var _ = m;
        m.Asm(Code, 64, a => { a.wrmsr(); a.rdmsr(); a.mov(rbx, __qword_ptr.fs[0]); });

        int? Write(uint msr, ulong v)
        {
            c.Rip = Code;
            c.Rcx = msr;
            c.Rax = (uint)v;
            c.Rdx = v >> 32;
            return c.StepForTest();
        }
        ulong Read(uint msr)
        {
            c.Rip = Code + 2;
            c.Rcx = msr;
            Assert.Null(c.StepForTest());
            return (c.Rdx << 32) | (uint)c.Rax;
        }

        Assert.Null(Write(MsrIndex.FsBase, 0x50000));
        Assert.Equal(0x50000UL, Read(MsrIndex.FsBase));
        m.Ram.WriteU64(0x50000, 0xABCD);
        c.Rip = Code + 4;
        Assert.Null(c.StepForTest());
        Assert.Equal(0xABCDUL, c.Rbx);
        Assert.Equal(Vector.GP, Write(MsrIndex.GsBase, 0x0000_8000_0000_0000));
        Assert.Equal(Vector.GP, Write(MsrIndex.Lstar, 0x0001_0000_0000_0000));

        Assert.Null(Write(MsrIndex.Pat, 0x0007_0406_0007_0401));
        Assert.Equal(0x0007_0406_0007_0401UL, Read(MsrIndex.Pat));
        Assert.Equal(Vector.GP, Write(MsrIndex.Pat, 0x0007_0406_0007_0402)); // type 2 is reserved
        Assert.Equal(0x0007_0406_0007_0401UL, Read(MsrIndex.Pat));

        Assert.Equal(8UL, Read(MsrIndex.MtrrCap) & 0xFF); // VCNT
        Assert.Null(Write(MsrIndex.MtrrPhysBase0, 0x8000_0006));
        Assert.Null(Write(MsrIndex.MtrrPhysBase0 + 1, 0xFF_C000_0800));
        Assert.Equal(0xFF_C000_0800UL, Read(MsrIndex.MtrrPhysBase0 + 1));
        Assert.Equal(Vector.GP, Write(MsrIndex.MtrrPhysBase0, 0x8000_0106)); // reserved bit 8
        Assert.Equal(Vector.GP, Write(MsrIndex.MtrrDefType, 0xC02));          // type 2 reserved
        Assert.Null(Write(MsrIndex.MtrrDefType, 0xC06));

        Assert.Equal(1UL, Read(MsrIndex.FeatureControl) & 1);  // locked
        Assert.Equal(0UL, Read(MsrIndex.FeatureControl) & 6);  // VMX disabled
        Assert.Equal(Vector.GP, Write(MsrIndex.FeatureControl, 5));
        Assert.Equal(c.Platform.CpuId.ArchCapabilities, Read(MsrIndex.ArchCapabilities));
        Assert.Null(Write(MsrIndex.PredCmd, 1));
        Assert.Null(Write(MsrIndex.SpecCtrl, 1));
    }

    /// <summary>
    /// RDTSC counts the virtual clock at the platform TSC rate; WRMSR IA32_TSC moves it and
    /// IA32_TSC_ADJUST by the same amount (SDM Vol. 3B 18.17, 18.17.3).
    /// </summary>
    [Fact]
    public void TscFollowsClockAndMsrWrites()
    {
        var (m, c) = LongMode();
        using var _ = m;
        m.Asm(Code, 64, a => { a.rdtsc(); a.wrmsr(); a.rdtscp(); });
        m.Clock.AdvanceByInstructions(100_000); // 1 ms at 100 instructions/µs
        c.Rip = Code;
        Assert.Null(c.StepForTest());
        ulong t0 = (c.Rdx << 32) | (uint)c.Rax;
        Assert.Equal(TimeStampCounter.TicksFromNs(m.Clock.NowNs, c.Platform.TscHz), t0);
        Assert.Equal(1_000_000UL, t0); // 1 ms at 1 GHz

        c.Rcx = MsrIndex.Tsc;
        c.Rax = 5_000_000;
        c.Rdx = 0;
        Assert.Null(c.StepForTest());
        c.Msr.TscAux = 3;
        Assert.Null(c.StepForTest());
        Assert.Equal(5_000_000UL, (c.Rdx << 32) | (uint)c.Rax);
        Assert.Equal(3UL, c.Rcx);
        Assert.Equal(4_000_000L, c.Msr.TscAdjust);
    }

    /// <summary>CR4.TSD makes RDTSC #GP(0) at CPL &gt; 0 (SDM RDTSC).</summary>
    [Fact]
    public void RdtscWithTsdAtCpl3Faults()
    {
        var (m, c) = LongMode(cpl: 3);
        using var _ = m;
        m.Asm(Code, 64, a => a.rdtsc());
        c.Rip = Code;
        Assert.Null(c.StepForTest());
        c.Cr4Value |= Cr4.TSD;
        c.Rip = Code;
        Assert.Equal(Vector.GP, c.StepForTest());
    }

    /// <summary>The TSC/ns conversion helper shared with the TSC-deadline timer rounds deadlines up, never early.</summary>
    [Fact]
    public void TscConversionRoundTrips()
    {
        const long hz = 2_100_000_000;
        for (long ns = 1; ns < 10_000_000_000; ns = ns * 7 + 3)
        {
            ulong ticks = TimeStampCounter.TicksFromNs(ns, hz);
            long back = TimeStampCounter.NsFromTicks(ticks, hz);
            Assert.True(back <= ns && ns - back <= 1, $"{ns} -> {ticks} -> {back}");
            Assert.True(TimeStampCounter.TicksFromNs(TimeStampCounter.NsFromTicks(ticks + 1, hz), hz) >= ticks + 1);
        }
    }

    /// <summary>CPUID: GenuineIntel, initial APIC ID from the vCPU index (SDM CPUID leaf 1 EBX[31:24]).</summary>
    [Fact]
    public void CpuidVendorAndApicId()
    {
        var (m, c) = LongMode();
        using var _ = m;
        m.Asm(Code, 64, a => a.cpuid());
        c.Rip = Code;
        c.Rax = 0;
        c.Rcx = 0;
        Assert.Null(c.StepForTest());
        Assert.Equal(0x756E_6547UL, c.Rbx);
        c.Rip = Code;
        c.Rax = 0xFFFF_FFFF_0000_0001;
        Assert.Null(c.StepForTest());
        Assert.Equal(0x0008_06F8UL, c.Rax);
        Assert.Equal(0UL, c.Rbx >> 24);
        Assert.Equal(0UL, c.Rcx & (1 << 26)); // XSAVE not advertised: XGETBV is #UD
    }

    /// <summary>XGETBV/INVPCID/MONITOR are #UD because CPUID does not advertise them (SDM: "#UD If CPUID... = 0").</summary>
    [Fact]
    public void UnadvertisedInstructionsAreUd()
    {
        var (m, c) = LongMode();
        using var _ = m;
        m.Asm(Code, 64, a => { a.xgetbv(); a.invpcid(rax, __[rbx]); a.monitor(); });
        c.Rbx = 0x50000;
        c.Rip = Code;
        Assert.Equal(Vector.UD, c.StepForTest());
        c.Rip = Code + 3;
        Assert.Equal(Vector.UD, c.StepForTest());
    }

    /// <summary>
    /// The TLB is real: after a PTE changes, the stale translation persists until INVLPG drops it
    /// (SDM Vol. 3A 4.10.4.1, 4.10.4.3) — the behaviour Linux's flush_tlb_one_kernel depends on.
    /// </summary>
    [Fact]
    public void InvlpgDropsStaleTranslation()
    {
        var (m, c) = LongMode();
        using var _ = m;
        const ulong va = 0x4000_0000, pt = 0x4000, pd1 = 0x8000, oldPa = 0x20_0000, newPa = 0x30_0000;
        // VA 1 GiB: PDPT[1] -> pd1 -> pt -> page.
        m.Ram.WriteU64(SysMachine.Pdpt + 8, pd1 | 3);
        m.Ram.WriteU64(pd1, pt | 3);
        m.Ram.WriteU64(pt, oldPa | 3);
        m.Ram.WriteU64(oldPa, 0xAAAA);
        m.Ram.WriteU64(newPa, 0xBBBB);
        c.FlushTlb(includeGlobal: true);
        m.Asm(Code, 64, a =>
        {
            a.mov(rdi, va);
            a.mov(rax, __qword_ptr[rdi]);
            a.mov(rbx, __qword_ptr[rdi]);
            a.invlpg(__[rdi]);
            a.mov(rcx, __qword_ptr[rdi]);
        });
        c.Rip = Code;
        Assert.Null(c.StepForTest());
        Assert.Null(c.StepForTest());
        m.Ram.WriteU64(pt, newPa | 3); // remap behind the TLB's back
        Assert.Null(c.StepForTest());
        Assert.Null(c.StepForTest());
        Assert.Null(c.StepForTest());
        Assert.Equal(0xAAAAUL, c.Rax);
        Assert.Equal(0xAAAAUL, c.Rbx); // stale translation still used
        Assert.Equal(0xBBBBUL, c.Rcx); // INVLPG made the new PTE visible
    }

    /// <summary>MOV CR3 flushes non-global translations but keeps global ones (SDM 4.10.4.1).</summary>
    [Fact]
    public void Cr3WriteKeepsGlobalTranslations()
    {
        var (m, c) = LongMode();
        using var _ = m;
        const ulong va = 0x4000_0000, vb = 0x4000_1000, pt = 0x4000, pd1 = 0x8000;
        m.Ram.WriteU64(SysMachine.Pdpt + 8, pd1 | 3);
        m.Ram.WriteU64(pd1, pt | 3);
        m.Ram.WriteU64(pt, 0x20_0000 | 3 | 0x100);  // global
        m.Ram.WriteU64(pt + 8, 0x20_1000 | 3);      // not global
        m.Ram.WriteU64(0x20_0000, 1);
        m.Ram.WriteU64(0x20_1000, 2);
        m.Ram.WriteU64(0x30_0000, 9);
        c.FlushTlb(includeGlobal: true);
        m.Asm(Code, 64, a =>
        {
            a.mov(rax, __qword_ptr[va]);
            a.mov(rbx, __qword_ptr[vb]);
            a.mov(rdx, cr3);
            a.mov(cr3, rdx);
            a.mov(rax, __qword_ptr[va]);
            a.mov(rbx, __qword_ptr[vb]);
        });
        c.Rip = Code;
        Assert.Null(c.StepForTest());
        Assert.Null(c.StepForTest());
        m.Ram.WriteU64(pt, 0x30_0000 | 3 | 0x100);
        m.Ram.WriteU64(pt + 8, 0x30_0000 | 3);
        for (int i = 0; i < 4; i++)
        {
            Assert.Null(c.StepForTest());
        }
        Assert.Equal(1UL, c.Rax); // global entry survived the CR3 write
        Assert.Equal(9UL, c.Rbx); // non-global entry was re-walked
    }

    /// <summary>HLT stops the vCPU with RIP after the HLT; an interrupt wakes it and the frame returns after the HLT (SDM HLT).</summary>
    [Fact]
    public void HltThenInterruptWakes()
    {
        var (m, c) = LongMode();
        using var _ = m;
        var apic = new FakeApic();
        c.Apic = apic;
        const ulong handler = 0x30000;
        m.SetGate(0x40, handler);
        ulong handlerEnd = m.Asm(handler, 64, a => { a.mov(rbx, 0x42); a.hlt(); });
        ulong end = m.Asm(Code, 64, a => { a.sti(); a.hlt(); a.nop(); });
        c.Rip = Code;
        Assert.Equal(CpuExit.Halted, c.Run(100));
        Assert.True(c.Halted);
        Assert.Equal(Code + 2, c.Rip);
        Assert.Equal(CpuExit.Halted, c.Run(100)); // nothing pending: stays halted

        apic.Pending = 0x40;
        c.NotifyInterrupt();
        Assert.Equal(CpuExit.Halted, c.Run(100));
        Assert.Equal(0x42UL, c.Rbx);
        Assert.Equal(handlerEnd, c.Rip);
        Assert.Equal(Code + 2, m.Ram.ReadU64(c.Rsp)); // the interrupted RIP: after the first HLT
        Assert.True(end > Code);
    }

    /// <summary>HLT at CPL 3 is #GP(0).</summary>
    [Fact]
    public void HltAtCpl3Faults()
    {
        var (m, c) = LongMode(cpl: 3);
        using var _ = m;
        m.Asm(Code, 64, a => a.hlt());
        c.Rip = Code;
        Assert.Equal(Vector.GP, c.StepForTest());
        Assert.False(c.Halted);
    }

    sealed class Latch : IPortDevice
    {
        public string Name => "latch";
        public uint Last;
        public int LastSize;
        public uint PortRead(ushort offset, int size) => 0x1234_5678u + offset;
        public void PortWrite(ushort offset, int size, uint value) { Last = value; LastSize = size; }
    }

    /// <summary>IN/OUT imm8 and DX forms of each width go through the port bus (SDM IN, OUT).</summary>
    [Fact]
    public void PortIoReachesDevices()
    {
        var (m, c) = LongMode();
        using var _ = m;
        var dev = new Latch();
        m.Ports.Register(0x70, 4, dev);
        m.Asm(Code, 64, a =>
        {
            a.@out(0x71, al);
            a.@out(dx, ax);
            a.@in(eax, dx);
            a.@in(al, 0x70);
        });
        c.Rip = Code;
        c.Rax = 0xFFFF_FFFF_DDCC_BBAA;
        c.Rdx = 0x72;
        Assert.Null(c.StepForTest());
        Assert.Equal(0xAAu, dev.Last);
        Assert.Equal(1, dev.LastSize);
        Assert.Null(c.StepForTest());
        Assert.Equal(0xBBAAu, dev.Last);
        Assert.Equal(2, dev.LastSize);
        Assert.Null(c.StepForTest());
        Assert.Equal(0x1234_567AUL, c.Rax); // 32-bit IN zero-extends into RAX
        c.Rax = 0xFFFF_FF00;
        Assert.Null(c.StepForTest());
        Assert.Equal(0xFFFF_FF78UL, c.Rax);
    }

    /// <summary>
    /// At CPL 3 with IOPL 0 the TSS I/O bitmap decides: a clear bit allows the port, a set bit (or a
    /// port beyond the TSS limit) is #GP(0) (SDM Vol. 1 19.5.2).
    /// </summary>
    [Fact]
    public void IoBitmapControlsUserPortAccess()
    {
        var (m, c) = LongMode(cpl: 3);
        using var _ = m;
        var dev = new Latch();
        m.Ports.Register(0x80, 0x10, dev);
        // TSS with the I/O map at 0x68 covering ports 0..0x8F (18 bytes), port 0x80 allowed, 0x81 denied.
        const ushort mapBase = 0x68;
        m.Ram.TryWrite(SysMachine.Tss + 0x66, BitConverter.GetBytes(mapBase));
        var map = new byte[18];
        Array.Fill(map, (byte)0xFF);
        map[0x80 / 8] = 0xFE;
        m.Ram.TryWrite(SysMachine.Tss + mapBase, map);
        c.Tr = new SegmentRegister { Selector = SysMachine.TssSel, Base = SysMachine.Tss, Limit = mapBase + 18 - 1, Attributes = 0x8B };
        m.Asm(Code, 64, a => a.@out(dx, al));
        c.Rip = Code;
        c.Rax = 7;
        c.Rdx = 0x80;
        Assert.Null(c.StepForTest());
        Assert.Equal(7u, dev.Last);
        c.Rip = Code;
        c.Rdx = 0x81;
        c.Rax = 9;
        Assert.Equal(Vector.GP, c.StepForTest());
        Assert.Equal(7u, dev.Last);
        c.Rdx = 0x200; // beyond the bitmap (TSS limit)
        Assert.Equal(Vector.GP, c.StepForTest());
        // Same access allowed when CPL <= IOPL.
        c.SetFlags(c.GetFlags() | RFlags.IOPL);
        c.Rdx = 0x81;
        Assert.Null(c.StepForTest());
        Assert.Equal(9u, dev.Last);
    }

    /// <summary>LGDT/SGDT in 64-bit mode move a 10-byte pseudo-descriptor; LGDT at CPL 3 is #GP (SDM LGDT/SGDT).</summary>
    [Fact]
    public void LgdtSgdt64()
    {
        var (m, c) = LongMode();
        using var _ = m;
        m.Ram.TryWrite(0x50000, [0x3F, 0x00, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]);
        m.Asm(Code, 64, a => { a.lgdt(__[0x50000]); a.sgdt(__[0x50100]); a.lidt(__[0x50000]); });
        c.Rip = Code;
        Assert.Null(c.StepForTest());
        Assert.Equal(0x1122_3344_5566_7788UL, c.GdtBase);
        Assert.Equal(0x3F, c.GdtLimit);
        Assert.Null(c.StepForTest());
        var stored = new byte[10];
        m.Ram.TryRead(0x50100, stored);
        Assert.Equal([0x3F, 0x00, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11], stored);

        m.EnterLongMode(cpl: 3);
        c.Rip = Code + 16;
        ulong idt = c.IdtBase;
        c.Rip = Code;
        Assert.Equal(Vector.GP, c.StepForTest());
        Assert.Equal(idt, c.IdtBase);
    }

    /// <summary>
    /// LAR/LSL/VERR/VERW report through ZF and never fault on a bad selector (SDM LAR, LSL, VERR/VERW).
    /// </summary>
    [Fact]
    public void LarLslVerr()
    {
        var (m, c) = LongMode(cpl: 3);
        using var _ = m;
        m.Asm(Code, 64, a => { a.lar(eax, ecx); a.lsl(ebx, ecx); a.verr(cx); a.verw(cx); });
        c.Rip = Code;
        c.Rcx = SysMachine.UserData | 3;
        for (int i = 0; i < 2; i++) Assert.Null(c.StepForTest());
        Assert.Equal(0x00CF_F200UL & 0x00FF_FF00, c.Rax);
        Assert.Equal(0xFFFF_FFFFUL, c.Rbx);
        Assert.Null(c.StepForTest());
        Assert.True(c.ZF());
        Assert.Null(c.StepForTest());
        Assert.True(c.ZF());

        // A kernel segment is invisible at CPL 3: ZF = 0 and the destination unchanged.
        c.Rip = Code;
        c.Rcx = SysMachine.Data;
        c.Rax = 0x99;
        Assert.Null(c.StepForTest());
        Assert.False(c.ZF());
        Assert.Equal(0x99UL, c.Rax);
        // A selector beyond the GDT limit.
        c.Rip = Code + 6;
        c.Rcx = 0x1000;
        Assert.Null(c.StepForTest());
        Assert.False(c.ZF());
    }
}
