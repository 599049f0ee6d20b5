using Iced.Intel;
using SharpVisor.Cpu.X86.Model;
using static Iced.Intel.AssemblerRegisters;

namespace SharpVisor.Cpu.X86.Tests.SystemInstructions;

/// <summary>
/// Segment limit and type checks outside 64-bit mode (SDM Vol. 3A 5.3 "Limit Checking", 5.4 "Type
/// Checking", 3.4.2 null selectors; real mode per SDM Vol. 3A 21.1.1 and the instructions'
/// "Real-Address Mode Exceptions"), and their absence in 64-bit mode (SDM 5.3.1).
/// </summary>
public class SegmentLimitTests
{
    const ulong Code = 0x10000, DataBase = 0x40000;

    /// <summary>Descriptor types (SDM Vol. 3A Table 3-1).</summary>
    const int ReadOnly = 0x0, ReadWrite = 0x2, ReadOnlyDown = 0x4, ReadWriteDown = 0x6, ExecuteOnly = 0x8, ExecuteRead = 0xA;

    /// <summary>A code/data segment descriptor (SDM Vol. 3A 3.4.5, Figure 3-8).</summary>
    static ulong Desc(uint baseAddress, uint limit20, int type, bool big = true, bool granular = false, int dpl = 0, bool present = true) =>
        (limit20 & 0xFFFF) | ((ulong)(baseAddress & 0xFF_FFFF) << 16)
        | ((ulong)(type | 0x10 | (dpl << 5) | (present ? 0x80 : 0)) << 40)
        | ((ulong)((limit20 >> 16) & 0xF) << 48)
        | ((big ? 1UL : 0) << 54) | ((granular ? 1UL : 0) << 55)
        | ((ulong)(baseAddress >> 24) << 56);

    sealed class Guest : IDisposable
    {
        public readonly SysMachine M = new();
        public Cpu C => M.Cpu;
        int _next = 10; // SysMachine's GDT uses entries 0..8

        public void Dispose() => M.Dispose();

        /// <summary>Appends a descriptor to the GDT; returns its selector.</summary>
        public ushort Add(ulong descriptor)
        {
            M.Ram.WriteU64(SysMachine.Gdt + (ulong)_next * 8, descriptor);
            C.GdtLimit = 32 * 8 - 1;
            return (ushort)(_next++ * 8);
        }

        /// <summary>Flat 32-bit protected mode, CPL 0, paging off, with a 32-bit IDT whose #SS and #GP gates lead to HLT.</summary>
        public Guest Protected32()
        {
            CpuSetup.EnterProtectedFlat32(C, SysMachine.Code32, SysMachine.Data);
            M.LoadGdtr();
            C.GdtLimit = 32 * 8 - 1;
            const uint handler = 0x20000;
            M.Asm(handler, 32, a => a.hlt());
            foreach (int v in new[] { Vector.SS, Vector.GP })
            {
                // 32-bit interrupt gate (SDM Vol. 3A Figure 6-2): present, DPL 0, type 0xE.
                ulong gate = (handler & 0xFFFF) | ((ulong)SysMachine.Code32 << 16) | (0x8EUL << 40) | ((ulong)(handler >> 16) << 48);
                M.Ram.WriteU64(SysMachine.Idt + (ulong)v * 8, gate);
            }
            C.IdtBase = SysMachine.Idt;
            C.IdtLimit = 256 * 8 - 1;
            C.Rsp = 0x70000;
            return this;
        }

        /// <summary>Real mode with CS = 1000H, so <see cref="Code"/> is at IP 0.</summary>
        public Guest Real()
        {
            C.SetSegmentReal(Seg.CS, (ushort)(Code >> 4));
            C.SetSegmentReal(Seg.DS, 0);
            C.SetSegmentReal(Seg.ES, 0);
            C.SetSegmentReal(Seg.SS, 0);
            C.Rsp = 0x7000;
            return this;
        }

        /// <summary>Loads DS (or another data segment register / SS) the way MOV Sreg does.</summary>
        public void Load(Seg s, ulong descriptor) => C.LoadDataSegment(s, Add(descriptor));

        /// <summary>Runs one instruction at <see cref="Code"/>; returns the exception vector, if any.</summary>
        public int? Step(int bits, Action<Assembler> build)
        {
            M.Asm(Code, bits, build);
            C.Rip = Code - C.Segs[(int)Seg.CS].Base;
            return C.StepForTest();
        }
    }

    /// <summary>SDM 5.3: an expand-up segment's last valid offset is the limit; one past it is #GP(0).</summary>
    [Fact]
    public void ExpandUpLastByteIsAccessibleOnePastFaults()
    {
        using var g = new Guest().Protected32();
        g.Load(Seg.DS, Desc((uint)DataBase, 0xFFF, ReadWrite));
        g.M.Ram.WriteU32(DataBase + 0xFFF, 0xA5);
        g.C.Rbx = 0xFFF;
        Assert.Null(g.Step(32, a => a.mov(al, __byte_ptr[ebx])));
        Assert.Equal(0xA5UL, g.C.Rax & 0xFF);
        g.C.Rbx = 0x1000;
        Assert.Equal(Vector.GP, g.Step(32, a => a.mov(al, __byte_ptr[ebx])));
        Assert.Equal(Vector.GP, g.Step(32, a => a.mov(__byte_ptr[ebx], al)));
        Assert.Equal(Code, g.C.Rip);
    }

    /// <summary>
    /// The same checks in translated code (<see cref="Translation.BlockCompiler"/> emits its own IL
    /// for 32-bit loads and stores): a dword load or store one byte past the limit raises #GP(0) at
    /// the instruction, with nothing loaded or written; within the limit the access happens.
    /// </summary>
    [Fact]
    public void TranslatedLoadsAndStoresCheckTheLimit()
    {
        using var g = new Guest().Protected32();
        g.Load(Seg.DS, Desc((uint)DataBase, 0xFFF, ReadWrite));
        g.M.Ram.WriteU32(DataBase + 0xFFC, 0x1234_5678);
        int? RunTranslated(Action<Assembler> build)
        {
            g.M.Asm(Code, 32, a => { build(a); a.hlt(); });
            g.C.Rip = Code - g.C.Segs[(int)Seg.CS].Base;
            return g.C.RunBlockForTest(translated: true);
        }

        g.C.Rbx = 0xFFC;
        Assert.Null(RunTranslated(a => a.mov(eax, __dword_ptr[ebx])));
        Assert.Equal(0x1234_5678UL, g.C.Rax);
        g.C.Rbx = 0xFFD;
        g.C.Rax = 0xABCD;
        Assert.Equal(Vector.GP, RunTranslated(a => a.mov(eax, __dword_ptr[ebx])));
        Assert.Equal(Code, g.C.Rip);
        Assert.Equal(0xABCDUL, g.C.Rax); // no effect
        Assert.Equal(Vector.GP, RunTranslated(a => a.mov(__dword_ptr[ebx], eax)));
        Assert.Equal(0x1234_5678u, g.M.Ram.ReadU32(DataBase + 0xFFC)); // nothing written
        g.C.Rbx = 0xFFC;
        Assert.Null(RunTranslated(a => a.mov(__dword_ptr[ebx], eax)));
        Assert.Equal(0xABCDu, g.M.Ram.ReadU32(DataBase + 0xFFC));
    }

    /// <summary>SDM 5.3: every byte of a multi-byte access must be within the limit (offset + size - 1 ≤ limit).</summary>
    [Fact]
    public void DwordStraddlingTheLimitFaults()
    {
        using var g = new Guest().Protected32();
        g.Load(Seg.DS, Desc((uint)DataBase, 0xFFF, ReadWrite));
        g.C.Rbx = 0xFFC;
        Assert.Null(g.Step(32, a => a.mov(eax, __dword_ptr[ebx])));
        g.C.Rbx = 0xFFD;
        g.C.Rax = 0x1234;
        Assert.Equal(Vector.GP, g.Step(32, a => a.mov(eax, __dword_ptr[ebx])));
        Assert.Equal(0x1234UL, g.C.Rax); // no effect
        Assert.Equal(Vector.GP, g.Step(32, a => a.add(__dword_ptr[ebx], eax)));
        Assert.Equal(0u, g.M.Ram.ReadU32(DataBase + 0xFFC) >> 8); // nothing written
    }

    /// <summary>
    /// SDM 5.3: expand-down data segments with B = 0 cover limit + 1 .. FFFFH — below the limit and
    /// past FFFFH both fault, and so does a word at FFFFH.
    /// </summary>
    [Fact]
    public void ExpandDownWithSmallUpperBound()
    {
        using var g = new Guest().Protected32();
        g.Load(Seg.DS, Desc((uint)DataBase, 0x0FFF, ReadWriteDown, big: false));
        (ulong offset, int size, bool ok)[] cases =
        [
            (0x0FFF, 1, false), (0x1000, 1, true), (0xFFFF, 1, true), (0xFFFE, 2, true),
            (0xFFFF, 2, false), (0x10000, 1, false), (0x0FFE, 2, false), (0, 1, false),
        ];
        foreach (var (offset, size, ok) in cases)
        {
            g.C.Rbx = offset;
            int? v = g.Step(32, a => { if (size == 1) a.mov(al, __byte_ptr[ebx]); else a.mov(ax, __word_ptr[ebx]); });
            Assert.True(ok ? v == null : v == Vector.GP, $"offset {offset:x} size {size}: {v}");
        }
    }

    /// <summary>SDM 5.3: expand-down with B = 1 covers limit + 1 .. FFFFFFFFH.</summary>
    [Fact]
    public void ExpandDownWithLargeUpperBound()
    {
        using var g = new Guest().Protected32();
        g.Load(Seg.DS, Desc((uint)DataBase, 0x0FFF, ReadWriteDown, big: true));
        (ulong offset, int size, bool ok)[] cases =
        [
            (0x0FFF, 1, false), (0x1000, 1, true), (0x10000, 4, true), (0xFFFF_FFFF, 1, true),
            (0xFFFF_FFFD, 4, false), (0x0FFE, 4, false),
        ];
        foreach (var (offset, size, ok) in cases)
        {
            g.C.Rbx = offset;
            int? v = g.Step(32, a => { if (size == 1) a.mov(al, __byte_ptr[ebx]); else a.mov(eax, __dword_ptr[ebx]); });
            Assert.True(ok ? v == null : v == Vector.GP, $"offset {offset:x} size {size}: {v}");
        }
    }

    /// <summary>SDM 3.4.5 (G flag) and 5.3: with G = 1 the limit is scaled by 4 KiB and its low 12 bits read as ones.</summary>
    [Theory]
    [InlineData(false, 0x1UL, 0x2UL)]
    [InlineData(true, 0x1FFFUL, 0x2000UL)]
    public void GranularityScalesTheLimit(bool granular, ulong lastValid, ulong firstInvalid)
    {
        using var g = new Guest().Protected32();
        g.Load(Seg.ES, Desc((uint)DataBase, 1, ReadWrite, granular: granular));
        g.C.Rbx = lastValid;
        Assert.Null(g.Step(32, a => a.mov(al, __byte_ptr.es[ebx])));
        g.C.Rbx = firstInvalid;
        Assert.Equal(Vector.GP, g.Step(32, a => a.mov(al, __byte_ptr.es[ebx])));
    }

    /// <summary>
    /// SDM 5.3 / Vol. 2 MOV "Protected Mode Exceptions": a limit violation through SS (an SS override,
    /// or EBP/ESP-based addressing that defaults to SS) is #SS(0); through any other segment #GP(0).
    /// The exception is delivered with error code 0.
    /// </summary>
    [Fact]
    public void StackSegmentViolationIsStackFaultOthersGeneralProtection()
    {
        using var g = new Guest().Protected32();
        ulong small = Desc((uint)DataBase, 0xFFF, ReadWrite);
        g.Load(Seg.DS, small);
        g.Load(Seg.SS, small);
        g.C.Rsp = 0x800;
        g.C.Rbx = g.C.Rbp = 0x1000;
        Assert.Equal(Vector.SS, g.Step(32, a => a.mov(al, __byte_ptr.ss[ebx])));
        Assert.Equal(Vector.SS, g.Step(32, a => a.mov(al, __byte_ptr[ebp])));
        Assert.Equal(Vector.GP, g.Step(32, a => a.mov(al, __byte_ptr[ebx])));
        Assert.Equal(Vector.GP, g.Step(32, a => a.mov(al, __byte_ptr.ds[ebp])));

        // Delivered through the IDT: error code 0, EIP of the faulting instruction (SDM 6.13).
        g.Load(Seg.SS, Desc(0, 0xFFFFF, ReadWrite, granular: true));
        g.C.Rsp = 0x70000;
        foreach (var (build, vector) in new (Action<Assembler>, int)[] { (a => a.mov(al, __byte_ptr[ebx]), Vector.GP), (a => a.mov(al, __byte_ptr.es[ebx]), -1) })
        {
            g.M.Asm(Code, 32, a => { build(a); a.hlt(); });
            g.C.Rip = Code;
            g.C.Rsp = 0x70000;
            Assert.Equal(CpuExit.Halted, g.C.Run(10));
            if (vector < 0)
            {
                Assert.Equal(0x70000UL, g.C.Rsp); // ES is flat: no fault, the HLT after it ran
                continue;
            }
            Assert.Equal(0x20001UL, g.C.Rip); // halted in the handler
            Assert.Equal(0x70000UL - 16, g.C.Rsp);
            Assert.Equal(0u, g.M.Ram.ReadU32(0x70000 - 16)); // error code
            Assert.Equal((uint)Code, g.M.Ram.ReadU32(0x70000 - 12)); // EIP
        }
    }

    /// <summary>
    /// SDM 5.3 and Vol. 2 PUSH "#SS(0) If a memory operand effective address is outside the SS segment
    /// limit": pushing below an expand-down stack's limit faults and leaves ESP unchanged; delivered
    /// as #SS with error code 0.
    /// </summary>
    [Fact]
    public void PushPastTheStackLimitIsStackFault()
    {
        using var g = new Guest().Protected32();
        g.Load(Seg.SS, Desc(0x60000, 0x0FFF, ReadWriteDown, big: true));
        g.C.Rsp = 0x1004;
        Assert.Null(g.Step(32, a => a.push(eax)));
        Assert.Equal(0x1000UL, g.C.Rsp);
        Assert.Equal(Vector.SS, g.Step(32, a => a.push(eax)));
        Assert.Equal(0x1000UL, g.C.Rsp);
        Assert.Equal(Vector.SS, g.Step(32, a => a.call(0x10100)));
        Assert.Equal(0x1000UL, g.C.Rsp);

        // ENTER: the pushes fit, the frame allocation does not (SDM ENTER "#SS(0) If the new value of
        // the SP or ESP register is outside the stack segment limit"); nothing changes.
        g.C.Rsp = 0x1010;
        g.C.Rbp = 0x1234;
        Assert.Equal(Vector.SS, g.Step(32, a => a.enter(0x20, 0)));
        Assert.Equal(0x1010UL, g.C.Rsp);
        Assert.Equal(0x1234UL, g.C.Rbp);
        Assert.Null(g.Step(32, a => a.enter(0x0C, 0))); // a 32-bit ENTER pushes EBP as 4 bytes
        Assert.Equal(0x1234u, g.M.Ram.ReadU32(0x60000 + 0x100C));
        Assert.Equal(0x1000UL, g.C.Rsp);

        // An expand-up stack: POP past the limit faults too.
        g.Load(Seg.SS, Desc(0x60000, 0x0FFF, ReadWrite));
        g.C.Rsp = 0xFFE;
        Assert.Equal(Vector.SS, g.Step(32, a => a.pop(eax)));
        Assert.Null(g.Step(32, a => a.pop(ax)));
        Assert.Equal(0x1000UL, g.C.Rsp);

        // LEAVE reads SS:[EBP]: past the limit is #SS(0), ESP and EBP unchanged.
        g.C.Rbp = 0xFFE;
        Assert.Equal(Vector.SS, g.Step(32, a => a.leave()));
        Assert.Equal(0x1000UL, g.C.Rsp);
        Assert.Equal(0xFFEUL, g.C.Rbp);
    }

    /// <summary>SDM 5.4: writing to a read-only data segment is #GP(0); reading it is fine.</summary>
    [Fact]
    public void WriteToReadOnlyDataSegmentFaults()
    {
        using var g = new Guest().Protected32();
        g.Load(Seg.DS, Desc((uint)DataBase, 0xFFFFF, ReadOnly, granular: true));
        g.M.Ram.WriteU32(DataBase + 0x10, 0x77);
        g.C.Rbx = 0x10;
        Assert.Null(g.Step(32, a => a.mov(eax, __dword_ptr[ebx])));
        Assert.Equal(0x77UL, g.C.Rax);
        Assert.Equal(Vector.GP, g.Step(32, a => a.mov(__dword_ptr[ebx], eax)));
        Assert.Equal(Vector.GP, g.Step(32, a => a.inc(__dword_ptr[ebx])));
        Assert.Equal(0x77u, g.M.Ram.ReadU32(DataBase + 0x10));

        // Read-only expand-down behaves the same; a string store to a read-only ES too.
        g.Load(Seg.ES, Desc((uint)DataBase, 0, ReadOnlyDown, big: true));
        g.C.Rdi = 0x10;
        Assert.Equal(Vector.GP, g.Step(32, a => a.stosb()));
        Assert.Equal(0x10UL, g.C.Rdi);
    }

    /// <summary>
    /// SDM 5.4: a code segment is never writable; reading through CS needs the readable type —
    /// an execute-only CS faults on a CS-override read, an execute/read one does not.
    /// </summary>
    [Fact]
    public void CodeSegmentReadAndWriteChecks()
    {
        using var g = new Guest().Protected32();
        ushort executeOnly = g.Add(Desc(0, 0xFFFFF, ExecuteOnly, granular: true));
        g.C.SetSegment(Seg.CS, executeOnly, new Descriptor(Desc(0, 0xFFFFF, ExecuteOnly, granular: true)));
        g.C.Rbx = 0x100;
        Assert.Null(g.Step(32, a => a.nop())); // executes
        Assert.Equal(Vector.GP, g.Step(32, a => a.mov(eax, __dword_ptr.cs[ebx])));

        ushort executeRead = g.Add(Desc(0, 0xFFFFF, ExecuteRead, granular: true));
        g.C.SetSegment(Seg.CS, executeRead, new Descriptor(Desc(0, 0xFFFFF, ExecuteRead, granular: true)));
        Assert.Null(g.Step(32, a => a.mov(eax, __dword_ptr.cs[ebx])));
        Assert.Equal(Vector.GP, g.Step(32, a => a.mov(__dword_ptr.cs[ebx], eax)));
    }

    /// <summary>SDM 3.4.2: loading a null selector into DS is allowed; using DS then is #GP(0).</summary>
    [Fact]
    public void NullDataSegmentFaultsOnUse()
    {
        using var g = new Guest().Protected32();
        g.C.Rax = 0;
        Assert.Null(g.Step(32, a => a.mov(ds, ax)));
        Assert.Equal(Vector.GP, g.Step(32, a => a.mov(al, __byte_ptr[ebx])));
        Assert.Equal(Vector.GP, g.Step(32, a => a.mov(__byte_ptr[ebx], al)));
        Assert.Null(g.Step(32, a => a.lea(eax, __[ebx + 4]))); // no memory access, no check
        g.C.Rax = SysMachine.Data;
        Assert.Null(g.Step(32, a => a.mov(ds, ax)));
        Assert.Null(g.Step(32, a => a.mov(al, __byte_ptr[ebx])));
    }

    /// <summary>
    /// SDM 5.3: every byte of an instruction must lie within the CS limit: the last byte of the segment
    /// can hold a 1-byte instruction, the next fetch is #GP(0) with EIP on it; an instruction
    /// straddling the limit faults, and so does a near JMP whose target is past it (on the JMP).
    /// </summary>
    [Fact]
    public void FetchPastTheCodeSegmentLimitFaults()
    {
        using var g = new Guest().Protected32();
        const uint csBase = 0x30000;
        ulong desc = Desc(csBase, 0xFFF, ExecuteRead);
        g.C.SetSegment(Seg.CS, g.Add(desc), new Descriptor(desc));
        g.M.Ram.TryWrite(csBase + 0xFFE, [0x90, 0x90, 0x90, 0x90]);
        g.C.Rip = 0xFFE;
        Assert.Null(g.C.StepForTest());
        Assert.Null(g.C.StepForTest());
        Assert.Equal(0x1000UL, g.C.Rip);
        Assert.Equal(Vector.GP, g.C.StepForTest());
        Assert.Equal(0x1000UL, g.C.Rip);

        g.M.Ram.TryWrite(csBase + 0xFFF, [0x31]); // XOR r/m32, r32: its ModRM byte is past the limit
        g.C.Rip = 0xFFF;
        Assert.Equal(Vector.GP, g.C.StepForTest());
        Assert.Equal(0xFFFUL, g.C.Rip);

        // A block that runs into the limit: the instructions before it execute.
        g.M.Ram.TryWrite(csBase + 0xFFC, [0x40, 0x40, 0x40, 0x31]); // INC EAX x3, then the straddling XOR
        g.C.Rip = 0xFFC;
        g.C.Rax = 0;
        Assert.Equal(CpuExit.Halted, g.C.Run(10)); // #GP delivered to the handler's HLT
        Assert.Equal(3UL, g.C.Rax);
        Assert.Equal(0xFFFu, g.M.Ram.ReadU32(0x70000 - 12)); // EIP of the faulting fetch

        g.C.SetSegment(Seg.CS, g.C.Segs[(int)Seg.CS].Selector, new Descriptor(desc)); // back from the handler's flat CS
        g.M.Ram.TryWrite(csBase + 0x10, [0xE9, 0xEB, 0x1F, 0, 0]); // JMP rel32 to offset 15H + 1FEBH = 2000H
        g.C.Rip = 0x10;
        g.C.Rsp = 0x70000;
        Assert.Equal(Vector.GP, g.C.StepForTest());
        Assert.Equal(0x10UL, g.C.Rip); // faulted on the JMP itself
    }

    /// <summary>
    /// SDM 5.3 (limit checks come before paging): an instruction straddling the CS limit into an
    /// unmapped page is #GP(0), not #PF, and CR2 is unchanged. Compatibility mode, CS ending at the
    /// last mapped byte (16 MiB - 1).
    /// </summary>
    [Fact]
    public void FetchPastTheLimitIntoAnUnmappedPageIsGeneralProtection()
    {
        using var g = new Guest();
        g.M.EnterLongMode();
        g.C.GdtLimit = 32 * 8 - 1;
        ulong desc = Desc(0xFF_0000, 0xFFFF, ExecuteRead);
        g.C.SetSegment(Seg.CS, g.Add(desc), new Descriptor(desc));
        Assert.Equal(CpuMode.Compatibility, g.C.Mode);
        g.M.Ram.TryWrite(0xFF_FFFF, [0x31]); // XOR r/m32, r32: the ModRM byte would be at 16 MiB (unmapped)
        g.C.Rip = 0xFFFF;
        g.C.Cr2 = 0x1234;
        Assert.Equal(Vector.GP, g.C.StepForTest());
        Assert.Equal(0x1234UL, g.C.Cr2);
    }

    /// <summary>REP string instructions check every element: the iterations before the limit complete, then #GP(0).</summary>
    [Fact]
    public void RepStringStopsAtTheLimit()
    {
        using var g = new Guest().Protected32();
        g.Load(Seg.ES, Desc((uint)DataBase, 0xFFF, ReadWrite));
        g.C.Rdi = 0xFFE;
        g.C.Rcx = 4;
        g.C.Rax = 0x5A;
        Assert.Equal(Vector.GP, g.Step(32, a => a.rep.stosb()));
        Assert.Equal(2UL, g.C.Rcx);
        Assert.Equal(0x1000UL, g.C.Rdi);
        Assert.Equal(0x5A5Au, g.M.Ram.ReadU32(DataBase + 0xFFE));
        Assert.Equal(0u, g.M.Ram.ReadU32(DataBase + 0x1000));

        // MOVS: the source segment is checked for reads too.
        g.Load(Seg.DS, Desc((uint)DataBase, 0x7FF, ReadWrite));
        g.C.Rsi = 0x7FC;
        g.C.Rdi = 0;
        g.C.Rcx = 8;
        Assert.Equal(Vector.GP, g.Step(32, a => a.rep.movsd()));
        Assert.Equal(7UL, g.C.Rcx);
        Assert.Equal(0x800UL, g.C.Rsi);
    }

    /// <summary>
    /// Real mode (SDM Vol. 3A 21.1.1; Vol. 2 MOV/PUSH "Real-Address Mode Exceptions"): segments are
    /// 64 KiB; a word at offset FFFFH is #GP, an implicit stack access past FFFFH is #SS. Writes
    /// through CS are allowed (no type checks in real mode).
    /// </summary>
    [Fact]
    public void RealModeSixtyFourKilobyteSegments()
    {
        using var g = new Guest().Real();
        g.C.Rbx = 0xFFFF;
        Assert.Null(g.Step(16, a => a.mov(al, __byte_ptr[bx])));
        Assert.Equal(Vector.GP, g.Step(16, a => a.mov(ax, __word_ptr[bx])));
        g.C.Rbp = 0xFFFF;
        Assert.Equal(Vector.SS, g.Step(16, a => a.mov(ax, __word_ptr[bp])));
        g.C.Rsp = 1;
        Assert.Equal(Vector.SS, g.Step(16, a => a.push(ax))); // SP wraps to FFFFH: the word straddles the limit
        Assert.Equal(1UL, g.C.Rsp);
        g.C.Rsp = 0x7000;
        g.C.Rbx = 0x100;
        Assert.Null(g.Step(16, a => a.mov(__word_ptr.cs[bx], ax)));
    }

    /// <summary>SDM 5.3.1: 64-bit mode performs no limit checks (the hidden limit of DS is ignored) and ignores the type of DS.</summary>
    [Fact]
    public void LongModeIgnoresLimits()
    {
        using var g = new Guest();
        g.M.EnterLongMode();
        g.C.GdtLimit = 32 * 8 - 1;
        ulong code64 = Desc(0, 0xFFF, ExecuteRead, big: false) | (1UL << 53); // L = 1, limit 4 KiB - 1
        g.C.SetSegment(Seg.CS, g.Add(code64), new Descriptor(code64));
        Assert.Equal(CpuMode.Long64, g.C.Mode);
        g.Load(Seg.DS, Desc((uint)DataBase, 0xFFF, ReadOnly));
        g.Load(Seg.SS, Desc(0, 0xFFF, ReadWrite));
        g.C.Rbx = DataBase + 0x2000;
        g.C.Rsp = 0x70000;
        Assert.Null(g.Step(64, a => a.mov(__qword_ptr[rbx], rax)));
        Assert.Null(g.Step(64, a => a.push(rax)));
        Assert.Null(g.Step(64, a => a.jmp(0x10000 + 0x5000)));
        Assert.Equal(0x15000UL, g.C.Rip);
    }

    /// <summary>SDM 5.3.1: compatibility mode keeps the limit checks (only 64-bit mode drops them).</summary>
    [Fact]
    public void CompatibilityModeChecksLimits()
    {
        using var g = new Guest();
        g.M.EnterLongMode();
        g.C.GdtLimit = 32 * 8 - 1;
        g.C.SetSegment(Seg.CS, SysMachine.Code32, new Descriptor(0x00CF_9A00_0000_FFFF));
        Assert.Equal(CpuMode.Compatibility, g.C.Mode);
        g.Load(Seg.DS, Desc((uint)DataBase, 0xFFF, ReadWrite));
        g.C.Rbx = 0xFFF;
        Assert.Null(g.Step(32, a => a.mov(al, __byte_ptr[ebx])));
        g.C.Rbx = 0x1000;
        Assert.Equal(Vector.GP, g.Step(32, a => a.mov(al, __byte_ptr[ebx])));
    }

    /// <summary>
    /// SDM Vol. 2A INT n: the interrupt frame must fit in the stack segment (#SS otherwise). Here the
    /// #SS and the #DF that follow cannot be delivered on that stack either: shutdown (SDM 6.15,
    /// interrupt 8), where a frame that just fits reaches the handler.
    /// </summary>
    [Theory]
    [InlineData(0x0C, true)]
    [InlineData(0x08, false)]
    public void InterruptFrameMustFitTheStackSegment(ulong esp, bool fits)
    {
        using var g = new Guest().Protected32();
        const uint handler = 0x20000;
        ulong gate = (handler & 0xFFFF) | ((ulong)SysMachine.Code32 << 16) | (0x8EUL << 40) | ((ulong)(handler >> 16) << 48);
        g.M.Ram.WriteU64(SysMachine.Idt + 0x30 * 8, gate);
        g.Load(Seg.SS, Desc(0x60000, 0xFFF, ReadWrite));
        g.M.Asm(Code, 32, a => a.@int(0x30));
        g.C.Rip = Code;
        g.C.Rsp = esp;
        Assert.Equal(fits ? CpuExit.Halted : CpuExit.Shutdown, g.C.Run(10));
        if (fits)
        {
            Assert.Equal(0UL, g.C.Rsp);
            Assert.Equal((uint)Code + 2, g.M.Ram.ReadU32(0x60000)); // EIP after INT
        }
    }

    /// <summary>SDM 5.3 bounds as <see cref="Cpu.WithinLimit"/> computes them (attributes as in the descriptor's bits 40..55).</summary>
    [Fact]
    public void WithinLimitBoundaries()
    {
        Assert.True(Cpu.WithinLimit(0xFF4, 12, 0xFFF, 0x93));
        Assert.False(Cpu.WithinLimit(0xFF5, 12, 0xFFF, 0x93));
        Assert.False(Cpu.WithinLimit(0xFF0, 4, 0xFFF, 0x4097)); // expand-down: at or below the limit
        Assert.True(Cpu.WithinLimit(0x1000, 4, 0xFFF, 0x4097));
        Assert.True(Cpu.WithinLimit(0xFFF, 1, 0xFFF, 0x9F)); // code: conforming, not expand-down
    }
}
