using System.Reflection;
using Iced.Intel;
using SharpVisor.Cpu.X86.Tests.Harness;
using SharpCore = SharpVisor.Core;

namespace SharpVisor.Cpu.X86.Tests.Differential;

/// <summary>
/// MOVS/CMPS/SCAS/LODS/STOS in every element size, with and without REP/REPE/REPNE, both
/// directions, against the host: with the 64-bit address size (the host's data window is above
/// 4 GiB) and with 67H, the 32-bit address size (ESI/EDI/ECX; the window below 4 GiB, up to the wrap
/// of EDI to 0). Interpreter-only tests cover what the host cannot show: a #PF in the middle of a REP
/// leaving the completed iterations in the registers, chunked execution of long REPs, 16-bit address
/// sizes (32-bit and real-mode code), wrap-around downwards, segment overrides with a non-zero base,
/// INS/OUTS in every address size and the I/O permission bitmap.
/// </summary>
public unsafe class StringOpsTests : IClassFixture<RunnerFixture>
{
    const ulong DF = 0x400;
    readonly DifferentialRunner _runner;
    public StringOpsTests(RunnerFixture f) => _runner = f.Runner;

    static int Iterations => int.TryParse(Environment.GetEnvironmentVariable("SV_DIFF_ITERATIONS"), out int n) ? n : 12;

    /// <summary>Iced's factory for a string instruction, e.g. CreateMovsb(addressSize, segmentPrefix, repPrefix).</summary>
    internal static Instruction Make(string name, int addressSize, RepPrefixKind rep, Register segment = Register.None)
    {
        MethodInfo m = typeof(Instruction).GetMethods(BindingFlags.Public | BindingFlags.Static)
            .First(x => x.Name == "Create" + name && x.GetParameters().Length >= 2 && x.GetParameters()[0].ParameterType == typeof(int));
        var args = m.GetParameters().Select(p => p.ParameterType == typeof(int) ? (object)addressSize
            : p.ParameterType == typeof(Register) ? segment : (object)rep).ToArray();
        return (Instruction)m.Invoke(null, args)!;
    }

    static int SizeOf(char s) => s switch { 'b' => 1, 'w' => 2, 'd' => 4, _ => 8 };

    [Theory]
    [InlineData("Movs"), InlineData("Cmps"), InlineData("Scas"), InlineData("Lods"), InlineData("Stos")]
    public void StringInstructionsMatchTheHost(string op)
    {
        var t = new DiffCase(_runner, op);
        var failures = new List<string>();
        bool compares = op is "Cmps" or "Scas";
        var reps = compares ? new[] { RepPrefixKind.None, RepPrefixKind.Repe, RepPrefixKind.Repne } : new[] { RepPrefixKind.None, RepPrefixKind.Repe };
        foreach (char s in "bwdq")
        {
            int e = SizeOf(s);
            foreach (var rep in reps)
            {
                foreach (bool down in new[] { false, true })
                {
                    for (int i = 0; i < Iterations; i++)
                    {
                        var ctx = t.RandomContext();
                        var data = t.RandomData();
                        int count = rep == RepPrefixKind.None ? 1 : t.Rng.Next(4) == 0 ? 0 : t.Rng.Next(1, 64);
                        int span = Math.Max(count, 1) * e;
                        int lo = down ? span : 0, hi = DifferentialRunner.DataSize - (down ? e : span) - 1;
                        int si = t.Rng.Next(lo, hi), di = t.Rng.Next(lo, hi);
                        if (op == "Movs" && t.Rng.Next(3) == 0)
                        {
                            di = Math.Clamp(si + t.Rng.Next(-9, 10), lo, hi); // overlapping copies, both directions
                        }
                        if (compares && t.Rng.Next(2) == 0)
                        {
                            // Make a prefix equal so REPE runs a while, then a difference (or a match for REPNE).
                            int equalLen = t.Rng.Next(span + 1);
                            for (int k = 0; k < equalLen; k++)
                            {
                                int sk = down ? si + e - 1 - k : si + k, dk = down ? di + e - 1 - k : di + k;
                                if (sk >= 0 && sk < data.Length && dk >= 0 && dk < data.Length) data[dk] = data[sk];
                            }
                            if (op == "Scas")
                            {
                                unsafe { ctx.Gpr[0] = BitConverter.ToUInt64(data.AsSpan(Math.Min(di, data.Length - 8), 8)); }
                            }
                        }
                        unsafe
                        {
                            ctx.Gpr[6] = _runner.DataAddress + (ulong)si;
                            ctx.Gpr[7] = _runner.DataAddress + (ulong)di;
                            ctx.Gpr[1] = (ulong)count;
                            ctx.Rflags = down ? ctx.Rflags | DF : ctx.Rflags & ~DF;
                        }
                        // A source segment override (ES/CS/SS/DS have base 0 in 64-bit mode on both sides;
                        // FS/GS would use the host thread's bases) exercises the prefix decoding.
                        Register[] overrides = [Register.None, Register.None, Register.ES, Register.CS, Register.SS, Register.DS];
                        var ins = Make(op + s, 64, rep, op is "Movs" or "Cmps" or "Lods" ? overrides[t.Rng.Next(overrides.Length)] : Register.None);
                        string diff = t.Check(t.Encode(ins), ctx, data, DiffCase.ArithFlags, $"{rep} {op}{s} df={down} count={count} si={si} di={di}");
                        if (diff.Length > 0) failures.Add(diff);
                    }
                }
            }
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures.Take(10)));
    }

    /// <summary>
    /// 67H in 64-bit mode: the string instructions use ESI, EDI and ECX (SDM Vol. 2B REP: "IF
    /// AddressSize = 32 THEN Use ECX for CountReg"; MOVS: "(E)SI/(E)DI"), ignoring RSI/RDI/RCX[63:32]
    /// on input and writing them zero-extended. Forward runs may end exactly at 2^32, wrapping EDI
    /// (or ESI) to 0.
    /// </summary>
    [Theory]
    [InlineData("Movs"), InlineData("Cmps"), InlineData("Scas"), InlineData("Lods"), InlineData("Stos")]
    public void StringInstructionsWith32BitAddressesMatchTheHost(string op)
    {
        var t = new DiffCase(_runner, op, salt: 67) { LowData = true };
        var failures = new List<string>();
        bool compares = op is "Cmps" or "Scas";
        var reps = compares ? new[] { RepPrefixKind.None, RepPrefixKind.Repe, RepPrefixKind.Repne } : new[] { RepPrefixKind.None, RepPrefixKind.Repe };
        foreach (char s in "bwdq")
        {
            int e = SizeOf(s);
            foreach (var rep in reps)
            {
                foreach (bool down in new[] { false, true })
                {
                    for (int i = 0; i < Iterations; i++)
                    {
                        var ctx = t.RandomContext();
                        var data = t.RandomData();
                        int count = rep == RepPrefixKind.None ? 1 : t.Rng.Next(4) == 0 ? 0 : t.Rng.Next(1, 64);
                        int span = Math.Max(count, 1) * e;
                        int lo = down ? span : 0, hi = DifferentialRunner.DataSize - (down ? e : span) - 1;
                        int si = t.Rng.Next(lo, hi), di = t.Rng.Next(lo, hi);
                        if (!down && t.Rng.Next(3) == 0)
                        {
                            // The last element ends at 2^32 - 1: the register wraps to 0 (no access there).
                            if (t.Rng.Next(2) == 0) di = DifferentialRunner.DataSize - span;
                            else si = DifferentialRunner.DataSize - span;
                        }
                        if (compares && t.Rng.Next(2) == 0)
                        {
                            int equalLen = t.Rng.Next(span + 1);
                            for (int k = 0; k < equalLen; k++)
                            {
                                int sk = down ? si + e - 1 - k : si + k, dk = down ? di + e - 1 - k : di + k;
                                if (sk >= 0 && sk < data.Length && dk >= 0 && dk < data.Length) data[dk] = data[sk];
                            }
                            if (op == "Scas")
                            {
                                ctx.Gpr[0] = BitConverter.ToUInt64(data.AsSpan(Math.Min(di, data.Length - 8), 8));
                            }
                        }
                        // RSI/RDI/RCX[63:32] are ignored and cleared by the register updates, except with REP and
                        // ECX = 0: the SDM's REP runs no iteration and writes nothing, but Intel processors still
                        // clear RCX[63:32] (and RSI/RDI[63:32] for MOVS and STOS). Undefined there: left out.
                        ulong upper = rep != RepPrefixKind.None && count == 0 ? 0 : ~0xFFFF_FFFFUL;
                        ctx.Gpr[6] = (t.Value() & upper) | (DifferentialRunner.LowDataAddress + (ulong)si);
                        ctx.Gpr[7] = (t.Value() & upper) | (DifferentialRunner.LowDataAddress + (ulong)di);
                        ctx.Gpr[1] = (t.Value() & upper) | (uint)count;
                        ctx.Rflags = down ? ctx.Rflags | DF : ctx.Rflags & ~DF;
                        Register[] overrides = [Register.None, Register.None, Register.ES, Register.CS, Register.SS, Register.DS];
                        var ins = Make(op + s, 32, rep, op is "Movs" or "Cmps" or "Lods" ? overrides[t.Rng.Next(overrides.Length)] : Register.None);
                        string diff = t.Check(t.Encode(ins), ctx, data, DiffCase.ArithFlags, $"a32 {rep} {op}{s} df={down} count={count} si={si} di={di}");
                        if (diff.Length > 0) failures.Add(diff);
                    }
                }
            }
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures.Take(10)));
    }

    // ---------------------------------------------------------------- interpreter only

    const ulong Page = 0x1000;
    const ulong Src = InterpreterMachine.DataAddress;          // 0x20000
    const ulong Dst = InterpreterMachine.DataAddress + 0x8000; // 0x28000

    [Fact]
    public void PageFaultInTheMiddleOfRepMovsbLeavesCompletedIterations()
    {
        using var m = new InterpreterMachine(cpl: 3);
        m.Unmap(Src + Page); // the source runs into a not-present page after 0x100 bytes
        for (int i = 0; i < 0x100; i++) m.Ram.GetSpan(Src + 0xF00 + (ulong)i, 1)[0] = (byte)(i + 1);
        m.Load(Make("Movsb", 64, RepPrefixKind.Repe));
        m.Cpu.Regs.Gpr[6] = Src + 0xF00;
        m.Cpu.Regs.Gpr[7] = Dst;
        m.Cpu.Regs.Gpr[1] = 0x200;
        Assert.Equal<int?>(Vector.PF, m.Run());
        Assert.Equal(InterpreterMachine.CodeAddress, m.Cpu.Rip);
        Assert.Equal(Src + Page, m.Cpu.Cr2);
        Assert.Equal(0x100UL, m.Cpu.Regs.Gpr[1]);
        Assert.Equal(Src + Page, m.Cpu.Regs.Gpr[6]);
        Assert.Equal(Dst + 0x100, m.Cpu.Regs.Gpr[7]);
        Assert.Equal(0x100, m.Ram.GetSpan(Dst, 0x100).ToArray().Select((b, i) => b == (byte)(i + 1) ? 1 : 0).Sum());
        Assert.Equal(0, m.Ram.GetSpan(Dst + 0x100, 1)[0]);
    }

    [Fact]
    public void PageFaultInTheMiddleOfABackwardRepMovsqLeavesCompletedIterations()
    {
        using var m = new InterpreterMachine(cpl: 3);
        m.Unmap(Dst - Page); // the destination runs down into a not-present page
        m.Load(Make("Movsq", 64, RepPrefixKind.Repe));
        m.Cpu.SetFlags(0x202 | DF);
        m.Cpu.Regs.Gpr[6] = Src + 0x800;
        m.Cpu.Regs.Gpr[7] = Dst + 0x10; // elements at +0x10, +0x8, +0x0, then -0x8 faults
        m.Cpu.Regs.Gpr[1] = 10;
        Assert.Equal<int?>(Vector.PF, m.Run());
        Assert.Equal(Dst - 8, m.Cpu.Cr2);
        Assert.Equal(7UL, m.Cpu.Regs.Gpr[1]);
        Assert.Equal(Src + 0x800 - 24, m.Cpu.Regs.Gpr[6]);
        Assert.Equal(Dst - 8, m.Cpu.Regs.Gpr[7]);
    }

    [Fact]
    public void PageFaultInTheMiddleOfRepStosdLeavesCompletedIterations()
    {
        using var m = new InterpreterMachine(cpl: 3);
        m.Unmap(Dst + Page);
        m.Load(Make("Stosd", 64, RepPrefixKind.Repe));
        m.Cpu.Regs.Gpr[0] = 0xAABBCCDD;
        m.Cpu.Regs.Gpr[7] = Dst + Page - 6; // the second element straddles into the missing page
        m.Cpu.Regs.Gpr[1] = 5;
        Assert.Equal<int?>(Vector.PF, m.Run());
        Assert.Equal(4UL, m.Cpu.Regs.Gpr[1]);
        Assert.Equal(Dst + Page - 2, m.Cpu.Regs.Gpr[7]);
        Assert.Equal(0xAABBCCDDu, m.Ram.ReadU32(Dst + Page - 6));
        Assert.Equal(0, m.Ram.GetSpan(Dst + Page - 2, 2)[0]); // the straddling element wrote nothing
    }

    [Fact]
    public void LongRepStosRunsInChunksThatLeaveRipOnTheInstruction()
    {
        using var m = new InterpreterMachine();
        const ulong n = 300_000;
        m.Load(Make("Stosb", 64, RepPrefixKind.Repe));
        m.Cpu.Regs.Gpr[0] = 0x5A;
        m.Cpu.Regs.Gpr[7] = 0x100000;
        m.Cpu.Regs.Gpr[1] = n;
        Assert.Null(m.Cpu.StepForTest());
        Assert.Equal(InterpreterMachine.CodeAddress, m.Cpu.Rip); // not finished: the instruction re-executes
        ulong left = m.Cpu.Regs.Gpr[1];
        Assert.Equal(n - (ulong)Semantics.StringOps.ChunkBytes, left); // the bulk path ran one chunk of whole pages
        Assert.Equal(0x100000 + (n - left), m.Cpu.Regs.Gpr[7]);
        Assert.Null(m.Run());
        Assert.Equal(0UL, m.Cpu.Regs.Gpr[1]);
        Assert.Equal(0x100000 + n, m.Cpu.Regs.Gpr[7]);
        Assert.True(m.Ram.GetSpan(0x100000, (int)n).IndexOfAnyExcept((byte)0x5A) < 0);
    }

    [Fact]
    public void LongSlowPathRepeatsAlsoYield()
    {
        using var m = new InterpreterMachine();
        m.Load(Make("Lodsb", 64, RepPrefixKind.Repe));
        m.Cpu.Regs.Gpr[6] = 0x100000;
        m.Cpu.Regs.Gpr[1] = 100_000;
        Assert.Null(m.Cpu.StepForTest());
        Assert.Equal(InterpreterMachine.CodeAddress, m.Cpu.Rip);
        Assert.Equal(100_000UL - (ulong)Semantics.StringOps.ChunkIterations, m.Cpu.Regs.Gpr[1]);
    }

    [Fact]
    public void ForwardOverlappingRepMovsbReplicatesThePattern()
    {
        // dst = src + 3: each byte copied is one written three steps earlier (the classic fill idiom).
        using var m = new InterpreterMachine();
        byte[] seed = [1, 2, 3];
        m.Ram.TryWrite(Src, seed);
        m.Load(Make("Movsb", 64, RepPrefixKind.Repe));
        m.Cpu.Regs.Gpr[6] = Src;
        m.Cpu.Regs.Gpr[7] = Src + 3;
        m.Cpu.Regs.Gpr[1] = 300;
        Assert.Null(m.Run());
        var got = m.Ram.GetSpan(Src, 303).ToArray();
        for (int i = 0; i < 303; i++)
        {
            Assert.Equal(seed[i % 3], got[i]);
        }
    }

    [Fact]
    public void SixteenBitAddressSizeWrapsDiAndKeepsTheUpperBits()
    {
        using var m = new InterpreterMachine(bits: 32);
        m.Load(Make("Stosb", 16, RepPrefixKind.Repe));
        m.Cpu.Regs.Gpr[0] = 0x77;
        m.Cpu.Regs.Gpr[7] = 0x1234_FFFE; // DI = 0xFFFE: ES:FFFE, FFFF, 0000, 0001
        m.Cpu.Regs.Gpr[1] = 0xABCD_0004; // CX = 4
        Assert.Null(m.Run());
        Assert.Equal(0x1234_0002UL, m.Cpu.Regs.Gpr[7]);
        Assert.Equal(0xABCD_0000UL, m.Cpu.Regs.Gpr[1]);
        Assert.Equal(0x77, m.Ram.GetSpan(0xFFFF, 1)[0]);
        Assert.Equal(0x77, m.Ram.GetSpan(0x0001, 1)[0]);
        Assert.Equal(0, m.Ram.GetSpan(0x10000 - 3, 1)[0]);
    }

    /// <summary>
    /// Every string instruction with a 16-bit address size (67H in 32-bit code), forward and backward,
    /// once and repeated, across the wrap of SI/DI at 64 KiB (SDM Vol. 2B MOVS etc.: "(E)SI ← (E)SI ±
    /// size" at the address size; REP: "IF AddressSize = 16 THEN Use CX for CountReg"): each element's
    /// offset is (start ± k·size) mod 2^16 within DS (source) and ES (destination), and SI, DI and CX
    /// keep bits 31:16 (a 16-bit register write). Expected values are computed here from those rules.
    /// </summary>
    [Fact]
    public void SixteenBitAddressSizeInThirtyTwoBitCodeWrapsEveryIndexAndCount()
    {
        const ulong dsBase = 0x40000, esBase = 0x50000;
        var failures = new List<string>();
        foreach (string op in new[] { "Movs", "Cmps", "Scas", "Lods", "Stos", "Ins", "Outs" })
        {
            foreach (char s in "bwd")
            {
                foreach (bool rep in new[] { false, true })
                {
                    foreach (bool down in new[] { false, true })
                    {
                        string label = $"a16 {(rep ? "rep " : "")}{op}{s} df={down}:";
                        using var m = new InterpreterMachine(bits: 32);
                        var dev = new RecordingPort();
                        m.Ports.Register(0x80, 4, dev);
                        m.Cpu.Segs[(int)Seg.DS].Base = dsBase;
                        m.Cpu.Segs[(int)Seg.ES].Base = esBase;
                        m.Cpu.UpdateMode();
                        var pattern = new byte[0x10000];
                        for (int o = 0; o < pattern.Length; o++) pattern[o] = (byte)((o * 7 + 1) & 0x7F); // never FFH: REPNE SCAS never matches
                        m.Ram.TryWrite(dsBase, pattern);
                        m.Ram.TryWrite(esBase, pattern); // CMPS: equal elements, REPE runs to the end
                        int e = SizeOf(s);
                        int n = rep ? 4 : 1;
                        ulong start = down ? (ulong)e : 0x10000 - 2 * (ulong)e; // the 3rd element (if any) is past the wrap
                        ulong step = down ? (ulong)-e : (ulong)e;
                        ulong Offset(int k) => (start + (ulong)k * step) & 0xFFFF;
                        ulong Pattern(ulong o) => BitConverter.ToUInt64(pattern.Concat(new byte[8]).Skip((int)o).Take(8).ToArray()) & (e == 8 ? ulong.MaxValue : (1UL << (8 * e)) - 1);
                        var kind = !rep ? RepPrefixKind.None : op == "Scas" ? RepPrefixKind.Repne : RepPrefixKind.Repe;
                        m.Load(Make(op + s, 16, kind));
                        m.Cpu.Regs.Gpr[6] = 0xAAAA_0000 | start;
                        m.Cpu.Regs.Gpr[7] = 0xBBBB_0000 | start;
                        m.Cpu.Regs.Gpr[1] = rep ? 0xCCCC_0000UL | (uint)n : 0xCCCC_0007;
                        m.Cpu.Regs.Gpr[0] = 0xFFFF_FFFF;
                        m.Cpu.Regs.Gpr[2] = 0x80;
                        m.Cpu.SetFlags(down ? 0x202 | DF : 0x202);
                        if (m.Run() is int v)
                        {
                            failures.Add($"{label} exception {v}");
                            continue;
                        }
                        bool usesSi = op is "Movs" or "Cmps" or "Lods" or "Outs", usesDi = op is "Movs" or "Cmps" or "Scas" or "Stos" or "Ins";
                        ulong end = Offset(n);
                        void Expect(string what, ulong expected, ulong actual)
                        {
                            if (expected != actual) failures.Add($"{label} {what} expected 0x{expected:x}, got 0x{actual:x}");
                        }
                        Expect("ESI", 0xAAAA_0000 | (usesSi ? end : start), m.Cpu.Regs.Gpr[6]);
                        Expect("EDI", 0xBBBB_0000 | (usesDi ? end : start), m.Cpu.Regs.Gpr[7]);
                        Expect("ECX", rep ? 0xCCCC_0000 : 0xCCCC_0007, m.Cpu.Regs.Gpr[1]);
                        for (int k = 0; k < n; k++)
                        {
                            ulong o = Offset(k);
                            ulong dst = m.Ram.ReadU64(esBase + o) & (e == 8 ? ulong.MaxValue : (1UL << (8 * e)) - 1);
                            switch (op)
                            {
                                case "Movs": Expect($"ES:{o:x}", Pattern(o), dst); break;
                                case "Stos": Expect($"ES:{o:x}", 0xFFFF_FFFFUL >> (32 - 8 * e), dst); break;
                                case "Ins": Expect($"ES:{o:x}", (0x1000UL + (ulong)k) & (0xFFFF_FFFFUL >> (32 - 8 * e)), dst); break;
                                case "Outs": Expect($"port write {k}", Pattern(o), dev.Writes.Count > k ? dev.Writes[k].Value : ulong.MaxValue); break;
                            }
                        }
                        if (op == "Lods")
                        {
                            ulong mask = 0xFFFF_FFFFUL >> (32 - 8 * e);
                            Expect("EAX", (0xFFFF_FFFFUL & ~mask) | Pattern(Offset(n - 1)), m.Cpu.Regs.Gpr[0]);
                        }
                        if (op == "Cmps") Expect("ZF", 1, (m.Cpu.GetFlags() >> 6) & 1);
                        if (op == "Scas") Expect("ZF", 0, (m.Cpu.GetFlags() >> 6) & 1);
                    }
                }
            }
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures.Take(20)));
    }

    /// <summary>
    /// Real mode: the address size is 16 bits (DI and CX wrap, bits 31:16 kept), 67H makes it 32 bits
    /// (EDI and ECX in full; the ES limit is raised to 4 GiB, "unreal mode", so offsets above FFFFH are
    /// within it).
    /// </summary>
    [Fact]
    public void RealModeStringInstructionsUseTheirAddressSize()
    {
        using var m = new SystemInstructions.SysMachine();
        var c = m.Cpu;
        c.SetSegmentReal(Seg.CS, 0);
        c.SetSegmentReal(Seg.ES, 0);
        c.Regs.Gpr[0] = 0x5A;
        m.Ram.TryWrite(0x8000, [0xF3, 0xAA]); // rep stosb
        c.Rip = 0x8000;
        c.Regs.Gpr[7] = 0x1234_FFFF; // DI = FFFFH: bytes at FFFFH and 0
        c.Regs.Gpr[1] = 0x0001_0002; // CX = 2
        Assert.Null(c.StepForTest());
        Assert.Equal(0x8002UL, c.Rip);
        Assert.Equal(0x1234_0001UL, c.Regs.Gpr[7]);
        Assert.Equal(0x0001_0000UL, c.Regs.Gpr[1]);
        Assert.Equal(0x5A, m.Ram.GetSpan(0xFFFF, 1)[0]);
        Assert.Equal(0x5A, m.Ram.GetSpan(0, 1)[0]);
        Assert.Equal(0, m.Ram.GetSpan(0x1_0000, 1)[0]);

        c.Segs[(int)Seg.ES].Limit = 0xFFFF_FFFF;
        c.UpdateMode();
        m.Ram.TryWrite(0x8000, [0x67, 0xF3, 0xAA]); // rep stosb with EDI, ECX
        c.Rip = 0x8000;
        c.Regs.Gpr[7] = 0x2_0000;
        c.Regs.Gpr[1] = 0x1_0001; // 65537 bytes: CX alone would be 1
        Assert.Null(m.StepUntil(0x8003, 100));
        Assert.Equal(0x3_0001UL, c.Regs.Gpr[7]);
        Assert.Equal(0UL, c.Regs.Gpr[1]);
        Assert.Equal(0x5A, m.Ram.GetSpan(0x3_0000, 1)[0]);
    }

    /// <summary>
    /// 64-bit mode, 67H: INS and OUTS use EDI/ESI and ECX too, and a backward run wraps from 0 to
    /// FFFFFFFFH (the host can show only the forward wrap: page 0 is never mapped).
    /// </summary>
    [Fact]
    public void ThirtyTwoBitAddressSizeInsAndOutsWrapAt4GiB()
    {
        using var m = new InterpreterMachine();
        m.Remap(0xFFFF_F000, 0x50_0000);
        var dev = new RecordingPort();
        m.Ports.Register(0x80, 4, dev);
        m.Load(Make("Insb", 32, RepPrefixKind.Repe));
        m.Cpu.Regs.Gpr[2] = 0x80;
        m.Cpu.Regs.Gpr[7] = 0x7777_0000_FFFF_FFFE; // EDI: FFFFFFFEH, FFFFFFFFH, then 0
        m.Cpu.Regs.Gpr[1] = 0x9_0000_0002;          // ECX = 2
        Assert.Null(m.Run());
        Assert.Equal(0UL, m.Cpu.Regs.Gpr[7]);
        Assert.Equal(0UL, m.Cpu.Regs.Gpr[1]);
        Assert.Equal(0x00, m.Ram.GetSpan(0x50_0FFE, 1)[0]); // port values 1000H, 1001H: low bytes 00, 01
        Assert.Equal(0x01, m.Ram.GetSpan(0x50_0FFF, 1)[0]);

        m.Ram.TryWrite(0x50_0FFF, [0xEE]);
        m.Ram.TryWrite(0, [0xA0, 0xA1]);
        m.Load(Make("Outsb", 32, RepPrefixKind.Repe));
        m.Cpu.SetFlags(0x202 | DF);
        m.Cpu.Regs.Gpr[6] = 0x5555_0000_0000_0001; // ESI: 1, 0, FFFFFFFFH
        m.Cpu.Regs.Gpr[1] = 3;
        Assert.Null(m.Run());
        Assert.Equal([(1, 0xA1u), (1, 0xA0u), (1, 0xEEu)], dev.Writes);
        Assert.Equal(0xFFFF_FFFEUL, m.Cpu.Regs.Gpr[6]);
        Assert.Equal(0UL, m.Cpu.Regs.Gpr[1]);
    }

    [Fact]
    public void ThirtyTwoBitAddressSizeInLongModeUsesEsiAndZeroExtends()
    {
        using var m = new InterpreterMachine();
        m.Ram.TryWrite(Src, [0x42]);
        m.Load(Make("Lodsb", 32, RepPrefixKind.None));
        m.Cpu.Regs.Gpr[6] = 0xFFFF_FFFF_0000_0000 | Src;
        Assert.Null(m.Run());
        Assert.Equal(0x42UL, m.Cpu.Regs.Gpr[0] & 0xFF);
        Assert.Equal(Src + 1, m.Cpu.Regs.Gpr[6]);
    }

    [Fact]
    public void SourceSegmentOverrideUsesItsBase()
    {
        using var m = new InterpreterMachine();
        m.Ram.TryWrite(Src + 0x10, [0x99]);
        m.Cpu.Segs[(int)Seg.FS].Base = Src;
        m.Cpu.UpdateMode();
        m.Load(Make("Movsb", 64, RepPrefixKind.None, Register.FS));
        m.Cpu.Regs.Gpr[6] = 0x10;
        m.Cpu.Regs.Gpr[7] = Dst; // the destination is ES (base 0), never overridden
        Assert.Null(m.Run());
        Assert.Equal(0x99, m.Ram.GetSpan(Dst, 1)[0]);
    }

    [Fact]
    public void BulkStoreOverTheFollowingInstructionsInvalidatesTheDecodedBlock()
    {
        // rep stosb overwrites the "mov eax, 0x12345678" right after it (same decoded block) with
        // NOPs: the block must end and be decoded again, so the stale MOV never runs.
        using var m = new InterpreterMachine();
        m.Load(Make("Stosb", 64, RepPrefixKind.Repe), Instruction.Create(Code.Mov_r32_imm32, Register.EAX, 0x12345678));
        ulong movAt = m.End - 5; // the 5-byte MOV is the last instruction
        m.Cpu.Regs.Gpr[0] = 0x90;
        m.Cpu.Regs.Gpr[7] = movAt;
        m.Cpu.Regs.Gpr[1] = 5;
        m.Cpu.Regs.Gpr[4] = 0x8000;
        var exit = m.Cpu.Run(100); // runs into the UD2 fence; with no IDT the machine shuts down
        Assert.Equal(CpuExit.Shutdown, exit);
        Assert.Equal(0x90UL, m.Cpu.Regs.Gpr[0]);
        Assert.Equal(0UL, m.Cpu.Regs.Gpr[1]);
    }

    [Fact]
    public void LegacyModeSourceIsDsAndDestinationIsEs()
    {
        // 32-bit protected mode with distinct DS and ES bases: MOVS reads DS:ESI and writes ES:EDI.
        using var m = new InterpreterMachine(bits: 32);
        m.Cpu.Segs[(int)Seg.DS].Base = 0x40000;
        m.Cpu.Segs[(int)Seg.ES].Base = 0x50000;
        m.Cpu.UpdateMode();
        m.Ram.TryWrite(0x40000 + 0x20, [0x31, 0x32]);
        m.Load(Make("Movsw", 32, RepPrefixKind.None));
        m.Cpu.Regs.Gpr[6] = 0x20;
        m.Cpu.Regs.Gpr[7] = 0x30;
        Assert.Null(m.Run());
        Assert.Equal(0x3231u, m.Ram.ReadU32(0x50000 + 0x30) & 0xFFFF);
        Assert.Equal(0x22UL, m.Cpu.Regs.Gpr[6]);
        Assert.Equal(0x32UL, m.Cpu.Regs.Gpr[7]);
    }

    sealed class RecordingPort : SharpCore.IPortDevice
    {
        public readonly List<(int Size, uint Value)> Writes = [];
        public uint Next = 0x1000;
        public string Name => "test";
        public uint PortRead(ushort offset, int size) => Next++;
        public void PortWrite(ushort offset, int size, uint value) => Writes.Add((size, value));
    }

    [Fact]
    public void RepOutsAndInsMoveDataThroughThePort()
    {
        using var m = new InterpreterMachine();
        var dev = new RecordingPort();
        m.Ports.Register(0x80, 4, dev);
        m.Ram.TryWrite(Src, [1, 2, 3]);
        m.Load(Make("Outsb", 64, RepPrefixKind.Repe), Make("Insw", 64, RepPrefixKind.Repe));
        m.Cpu.Regs.Gpr[2] = 0x80;
        m.Cpu.Regs.Gpr[6] = Src;
        m.Cpu.Regs.Gpr[7] = Dst;
        m.Cpu.Regs.Gpr[1] = 3;
        Assert.Null(m.Cpu.StepForTest());
        Assert.Equal([(1, 1u), (1, 2u), (1, 3u)], dev.Writes);
        m.Cpu.Regs.Gpr[1] = 2;
        Assert.Null(m.Run());
        Assert.Equal(0x1000u, m.Ram.ReadU32(Dst) & 0xFFFF);
        Assert.Equal(0x1001u, m.Ram.ReadU32(Dst + 2) & 0xFFFF);
        Assert.Equal(Dst + 4, m.Cpu.Regs.Gpr[7]);
    }

    [Fact]
    public void UserModeOutsObeysTheTssIoBitmap()
    {
        using var m = new InterpreterMachine(cpl: 3);
        var dev = new RecordingPort();
        m.Ports.Register(0x80, 4, dev);
        // TSS at 0x30000: I/O map base 0x68, bitmap byte for ports 0x80..0x87 = 0b1111_1110 (only 0x80 allowed).
        const ulong tss = 0x30000;
        m.Ram.TryWrite(tss + 0x66, BitConverter.GetBytes((ushort)0x68));
        m.Ram.TryWrite(tss + 0x68, new byte[0x10]);
        m.Ram.TryWrite(tss + 0x68 + 0x10, [0xFE, 0xFF]);
        m.Cpu.Tr = new SegmentRegister { Base = tss, Limit = 0x68 + 0x11, Attributes = 0x8B };
        m.Load(Make("Outsb", 64, RepPrefixKind.None));
        m.Cpu.Regs.Gpr[6] = Src;
        m.Cpu.Regs.Gpr[2] = 0x80;
        Assert.Null(m.Run());
        Assert.Single(dev.Writes);

        m.Load(Make("Outsw", 64, RepPrefixKind.None)); // ports 0x80 and 0x81: 0x81 is denied
        m.Cpu.Regs.Gpr[2] = 0x80;
        Assert.Equal<int?>(Vector.GP, m.Run());
        Assert.Single(dev.Writes);

        m.Cpu.Tr.Limit = 0x67; // no room for a bitmap: every port is denied
        m.Load(Make("Outsb", 64, RepPrefixKind.None));
        Assert.Equal<int?>(Vector.GP, m.Run());

        m.Cpu.SetFlags(0x202 | (3 << 12)); // IOPL 3: no bitmap check at all
        Assert.Null(m.Run());
        Assert.Equal(2, dev.Writes.Count);
    }
}
