using System.Runtime.Intrinsics.X86;
using SharpVisor.Cpu.X86.Tests.Harness;

namespace SharpVisor.Cpu.X86.Tests.Differential;

/// <summary>
/// Near branches in 64-bit mode against the host: Jcc rel8/rel32 forward and backward, JMP and CALL
/// rel/register/memory, RET and RET imm16, JRCXZ/JECXZ and LOOP/LOOPE/LOOPNE forward and backward,
/// each under every prefix combination that changes or must not change them: 66H (operand size),
/// 67H (address size: the count register of JrCXZ and LOOPcc, the memory operand of JMP/CALL m),
/// REX.W, and the ignored F2/F3/2E/3E. Every case ends by running off the end of its own bytes, so
/// a branch taken or not shows in the registers (a skipped MOV AL, or the count).
/// </summary>
/// <remarks>
/// Intel processors ignore 66H on near branches in 64-bit mode (the operand size stays 64 bits, SDM
/// Vol. 1 3.6.1 / Vol. 2A JMP, CALL, RET, Jcc "64-bit mode"); AMD processors honour it and truncate the
/// target to 16 bits. SharpVisor presents an Intel CPU, so cases with 66H and no REX.W run natively
/// only on an Intel host (on AMD they would jump to a 16-bit address); the interpreter-only tests
/// below check those forms against the SDM on every host.
/// </remarks>
public unsafe class BranchTests : IClassFixture<RunnerFixture>
{
    readonly DifferentialRunner _runner;
    public BranchTests(RunnerFixture f) => _runner = f.Runner;

    static int Iterations => int.TryParse(Environment.GetEnvironmentVariable("SV_DIFF_ITERATIONS"), out int n) ? n * 2 : 24;

    static bool HostIsIntel => X86Base.CpuId(0, 0).Ebx == 0x756E_6547; // "Genu"

    /// <summary>Prefix combinations; REX (0x48) is always last, next to the opcode.</summary>
    static readonly byte[][] s_prefixes =
    [
        [], [0x66], [0x67], [0x48], [0x66, 0x48], [0x67, 0x48], [0x66, 0x67], [0x66, 0x67, 0x48],
        [0xF2], [0xF3], [0x2E], [0x3E], [0xF2, 0x67], [0xF3, 0x66, 0x48],
    ];

    static bool Has(byte[] prefix, byte b) => Array.IndexOf(prefix, b) >= 0;

    /// <summary>A prefix combination the host runs as SharpVisor does (66H without REX.W only on Intel).</summary>
    static byte[] PickPrefix(Random rng)
    {
        while (true)
        {
            var p = s_prefixes[rng.Next(s_prefixes.Length)];
            if (HostIsIntel || !Has(p, 0x66) || Has(p, 0x48))
            {
                return p;
            }
        }
    }

    /// <summary>Count register values that tell CX, ECX and RCX apart (the 0x1_0018_0000 among them).</summary>
    static ulong CountValue(DiffCase t)
    {
        ulong r = t.Value();
        return t.Rng.Next(8) switch
        {
            0 => 0,
            1 => 0x1_0018_0000,
            2 => r & ~0xFFFFUL,
            3 => r & ~0xFFFF_FFFFUL,
            4 => (r & ~0xFFFFUL) | 1,
            5 => (r & ~0xFFFF_FFFFUL) | 1,
            6 => (ulong)t.Rng.Next(3),
            _ => r,
        };
    }

    /// <summary>Little-endian code bytes with patchable 8- and 32-bit displacements.</summary>
    sealed class Code
    {
        public readonly List<byte> Bytes = [];
        public int Length => Bytes.Count;
        public Code Add(params byte[] b) { Bytes.AddRange(b); return this; }
        public Code Add32(int v) => Add(BitConverter.GetBytes(v));
        public void Patch8(int at, int v) => Bytes[at] = (byte)checked((sbyte)v);
        public void Set32(int at, int v)
        {
            var b = BitConverter.GetBytes(v);
            for (int i = 0; i < 4; i++) Bytes[at + i] = b[i];
        }
        public byte[] ToArray() => [.. Bytes];
    }

    /// <summary>LEA RAX, [RIP + disp32] with the displacement patched to land on <paramref name="target"/> later.</summary>
    static int LeaRax(Code c)
    {
        c.Add(0x48, 0x8D, 0x05).Add32(0);
        return c.Length; // RIP after the LEA; the displacement is the four bytes before
    }

    static void PatchLea(Code c, int leaEnd, int target) => c.Set32(leaEnd - 4, target - leaEnd);

    /// <summary>The branch forms: each builds a sequence around one branch carrying <paramref name="p"/>.</summary>
    static byte[] Build(string form, byte[] p, byte imm, byte cc)
    {
        var c = new Code();
        byte[] addr32 = Has(p, 0x67) ? [0x67] : [];
        switch (form)
        {
            case "jcc rel8":
                c.Add(p).Add((byte)(0x70 | cc), 2).Add(0xB0, imm);
                break;
            case "jcc rel32":
                c.Add(p).Add(0x0F, (byte)(0x80 | cc)).Add32(2).Add(0xB0, imm);
                break;
            case "jcc rel8 backward":
            case "jcc rel32 backward":
                {
                    // jmp J; L: mov al, imm; jmp End; J: jcc L; End:
                    c.Add(0xEB, 0);
                    int l = c.Length;
                    c.Add(0xB0, imm).Add(0xEB, 0);
                    int j = c.Length;
                    c.Patch8(1, j - 2);
                    c.Add(p);
                    if (form == "jcc rel8 backward")
                    {
                        c.Add((byte)(0x70 | cc), 0);
                        c.Patch8(c.Length - 1, l - c.Length);
                    }
                    else
                    {
                        c.Add(0x0F, (byte)(0x80 | cc)).Add32(0);
                        c.Set32(c.Length - 4, l - c.Length);
                    }
                    c.Patch8(l + 3, c.Length - (l + 4));
                    break;
                }
            case "jmp rel8":
                c.Add(p).Add(0xEB, 2).Add(0xB0, imm);
                break;
            case "jmp rel32":
                c.Add(p).Add(0xE9).Add32(2).Add(0xB0, imm);
                break;
            case "jmp r64":
                {
                    int lea = LeaRax(c);
                    c.Add(p).Add(0xFF, 0xE0);
                    c.Add(0xB0, imm);
                    PatchLea(c, lea, c.Length);
                    break;
                }
            case "jmp m64":
                {
                    int lea = LeaRax(c);
                    c.Add(addr32).Add(0x48, 0x89, 0x03); // mov [rbx], rax (same address size as the branch)
                    c.Add(p).Add(0xFF, 0x23);             // jmp [rbx]
                    c.Add(0xB0, imm);
                    PatchLea(c, lea, c.Length);
                    break;
                }
            case "call rel32":
                c.Add(p).Add(0xE8).Add32(2).Add(0xB0, imm).Add(0x59); // the return address lands in RCX
                break;
            case "call r64":
                {
                    int lea = LeaRax(c);
                    c.Add(p).Add(0xFF, 0xD0);
                    c.Add(0xB0, imm);
                    PatchLea(c, lea, c.Length);
                    c.Add(0x59);
                    break;
                }
            case "call m64":
                {
                    int lea = LeaRax(c);
                    c.Add(addr32).Add(0x48, 0x89, 0x03);
                    c.Add(p).Add(0xFF, 0x13); // call [rbx]
                    c.Add(0xB0, imm);
                    PatchLea(c, lea, c.Length);
                    c.Add(0x59);
                    break;
                }
            case "ret":
                {
                    int lea = LeaRax(c);
                    c.Add(0x50).Add(p).Add(0xC3).Add(0xB0, imm);
                    PatchLea(c, lea, c.Length);
                    break;
                }
            case "ret imm16":
                {
                    int lea = LeaRax(c);
                    c.Add(0x51, 0x50).Add(p).Add(0xC2, 8, 0).Add(0xB0, imm); // the pushed RCX is released by the immediate
                    PatchLea(c, lea, c.Length);
                    break;
                }
            case "jrcxz":
                c.Add(p).Add(0xE3, 2).Add(0xB0, imm);
                break;
            case "loop":
            case "loope":
            case "loopne":
                c.Add(p).Add(form switch { "loop" => (byte)0xE2, "loope" => (byte)0xE1, _ => (byte)0xE0 }, 2).Add(0xB0, imm);
                break;
            case "loop backward":
            case "loope backward":
            case "loopne backward":
                {
                    // L: inc rax; test rdx, rdx; loopcc L
                    c.Add(0x48, 0xFF, 0xC0).Add(0x48, 0x85, 0xD2).Add(p);
                    c.Add(form switch { "loop backward" => (byte)0xE2, "loope backward" => (byte)0xE1, _ => (byte)0xE0 }, 0);
                    c.Patch8(c.Length - 1, -c.Length);
                    break;
                }
            default:
                throw new ArgumentException(form);
        }
        return c.ToArray();
    }

    public static TheoryData<string> Forms => new()
    {
        "jcc rel8", "jcc rel32", "jcc rel8 backward", "jcc rel32 backward", "jmp rel8", "jmp rel32", "jmp r64", "jmp m64",
        "call rel32", "call r64", "call m64", "ret", "ret imm16", "jrcxz", "loop", "loope", "loopne",
        "loop backward", "loope backward", "loopne backward",
    };

    [Theory]
    [MemberData(nameof(Forms))]
    public void NearBranchesMatchTheHost(string form)
    {
        // The low data window (below 4 GiB) lets 67H forms of JMP/CALL m64 address it with EBX.
        var t = new DiffCase(_runner, form) { LowData = true };
        var failures = new List<string>();
        for (int i = 0; i < Iterations; i++)
        {
            byte[] p = PickPrefix(t.Rng);
            byte cc = (byte)t.Rng.Next(16);
            byte[] code = Build(form, p, (byte)t.Rng.Next(256), cc);
            var ctx = t.RandomContext();
            bool addr32 = Has(p, 0x67);
            ctx.Gpr[1] = CountValue(t);
            if (form.EndsWith("backward", StringComparison.Ordinal) && form.StartsWith("loop", StringComparison.Ordinal))
            {
                // A count of 1..40 in CX/ECX/RCX at the address size (RCX = 0 would loop 2^64 times).
                ulong n = (ulong)t.Rng.Next(1, 41);
                ctx.Gpr[1] = addr32 ? (t.Value() & ~0xFFFF_FFFFUL) | n : n;
                ctx.Gpr[2] = t.Rng.Next(2) == 0 ? 0 : t.Value();
            }
            if (addr32 && form.EndsWith("m64", StringComparison.Ordinal))
            {
                ctx.Gpr[3] |= t.Value() << 32; // [ebx] ignores RBX[63:32]
            }
            string diff = t.Check(code, ctx, t.RandomData(), DiffCase.ArithFlags, $"{form} prefixes {Convert.ToHexString(p)}");
            if (diff.Length > 0) failures.Add(diff);
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures.Take(10)));
    }

    /// <summary>The case: JRCXZ must test all of RCX (not taken for RCX = 0x1_0018_0000, whose CX is 0).</summary>
    [Fact]
    public void JrcxzTestsAllOfRcx()
    {
        using var m = new InterpreterMachine();
        m.LoadBytes([0xE3, 0x02, 0xB0, 0x5A]); // jrcxz +2; mov al, 0x5A
        m.Cpu.Regs.Gpr[1] = 0x1_0018_0000;
        Assert.Null(m.Run());
        Assert.Equal(0x5AUL, m.Cpu.Regs.Gpr[0] & 0xFF);
    }

    // ---------------------------------------------------------------- interpreter only (SDM)

    /// <summary>Runs one instruction at the machine's code address and returns the new RIP (no exception allowed).</summary>
    static ulong StepOnce(InterpreterMachine m, byte[] code, ulong rcx, ulong flags = 0x202)
    {
        m.LoadBytes(code);
        m.Cpu.Regs.Gpr[1] = rcx;
        m.Cpu.SetFlags(flags);
        Assert.Null(m.Cpu.StepForTest());
        return m.Cpu.Rip;
    }

    /// <summary>
    /// JCXZ/JECXZ/JRCXZ test the count register of the ADDRESS size (SDM Vol. 2A Jcc: "JCXZ ... if CX
    /// register is 0", JECXZ ECX, JRCXZ RCX; 67H selects the other one): E3 is JECXZ in 32-bit code and
    /// JCXZ with 67H; JRCXZ in 64-bit code and JECXZ with 67H.
    /// </summary>
    [Theory]
    [InlineData(32, false, 0x0001_0000UL, false)] // JECXZ: ECX = 10000H is not zero
    [InlineData(32, false, 0xFFFF_FFFF_0000_0000UL, true)] // RCX[63:32] are not part of ECX
    [InlineData(32, true, 0x0001_0000UL, true)]   // 67H: JCXZ, CX = 0
    [InlineData(32, true, 0x0001_0001UL, false)]
    [InlineData(64, false, 0x1_0018_0000UL, false)] // JRCXZ
    [InlineData(64, false, 0UL, true)]
    [InlineData(64, true, 0x1_0000_0000UL, true)] // 67H: JECXZ, ECX = 0
    [InlineData(64, true, 0x1_0001_0000UL, false)]
    public void JcxzTestsTheCountRegisterOfTheAddressSize(int bits, bool prefix67, ulong rcx, bool taken)
    {
        using var m = new InterpreterMachine(bits);
        byte[] code = prefix67 ? [0x67, 0xE3, 0x10] : [0xE3, 0x10];
        ulong next = InterpreterMachine.CodeAddress + (ulong)code.Length;
        Assert.Equal(taken ? next + 0x10 : next, StepOnce(m, code, rcx));
        Assert.Equal(rcx, m.Cpu.Regs.Gpr[1]);
    }

    /// <summary>
    /// LOOP decrements the count register of the address size without touching the flags (SDM Vol. 2A
    /// LOOP/LOOPcc: "Count ← Count – 1" with Count = CX, ECX or RCX by AddressSize): a 16-bit count keeps
    /// ECX[31:16] (and RCX[63:32]); in 64-bit mode a 32-bit count is written as ECX, which zero-extends.
    /// </summary>
    [Theory]
    [InlineData(32, false, 0x0001_0000UL, 0x0000_FFFFUL, true)]   // ECX: 10000H - 1
    [InlineData(32, true, 0x0001_0000UL, 0x0001_FFFFUL, true)]    // 67H: CX wraps, ECX[31:16] kept
    [InlineData(32, true, 0x1234_0001UL, 0x1234_0000UL, false)]   // CX reaches 0
    [InlineData(64, false, 0x1_0000_0000UL, 0xFFFF_FFFFUL, true)] // RCX
    [InlineData(64, true, 0x1_0000_0000UL, 0xFFFF_FFFFUL, true)]  // 67H: ECX 0 - 1, RCX[63:32] cleared
    [InlineData(64, true, 0x5_0000_0001UL, 0UL, false)]           // ECX reaches 0
    public void LoopCountsWithTheAddressSize(int bits, bool prefix67, ulong rcx, ulong after, bool taken)
    {
        using var m = new InterpreterMachine(bits);
        byte[] code = prefix67 ? [0x67, 0xE2, 0x10] : [0xE2, 0x10];
        ulong next = InterpreterMachine.CodeAddress + (ulong)code.Length;
        Assert.Equal(taken ? next + 0x10 : next, StepOnce(m, code, rcx, 0x202 | 0x8D5));
        Assert.Equal(after, m.Cpu.Regs.Gpr[1]);
        Assert.Equal(0x202UL | 0x8D5, m.Cpu.GetFlags() & 0xFFF); // LOOP changes no flags
    }

    /// <summary>LOOPE/LOOPNE: taken while the count is not zero and ZF is 1 / 0 (SDM LOOPcc).</summary>
    [Theory]
    [InlineData(0xE1, true, true)]
    [InlineData(0xE1, false, false)]
    [InlineData(0xE0, true, false)]
    [InlineData(0xE0, false, true)]
    public void LoopccAlsoTestsZf(byte opcode, bool zf, bool taken)
    {
        using var m = new InterpreterMachine(32);
        byte[] code = [0x67, opcode, 0x10]; // CX count
        ulong next = InterpreterMachine.CodeAddress + 3;
        Assert.Equal(taken ? next + 0x10 : next, StepOnce(m, code, 0xAAAA_0005, zf ? 0x242UL : 0x202UL));
        Assert.Equal(0xAAAA_0004UL, m.Cpu.Regs.Gpr[1]);
    }

    /// <summary>
    /// Near branches with a 16-bit operand size in 32-bit code (66H) truncate the new EIP to 16 bits
    /// (SDM Jcc/JMP/LOOP/JCXZ: "IF OperandSize = 16 THEN EIP ← EIP AND 0000FFFFH"); CALL pushes and
    /// RET pops 2 bytes.
    /// </summary>
    [Theory]
    [InlineData(new byte[] { 0x66, 0xEB, 0x10 }, 0UL, 0x13UL)]                     // jmp rel8
    [InlineData(new byte[] { 0x66, 0xE9, 0x10, 0x00 }, 0UL, 0x14UL)]               // jmp rel16
    [InlineData(new byte[] { 0x66, 0x0F, 0x84, 0x10, 0x00 }, 0UL, 0x15UL)]         // je rel16 (ZF = 1)
    [InlineData(new byte[] { 0x66, 0xE3, 0x10 }, 0UL, 0x13UL)]                     // jecxz (ECX = 0)
    [InlineData(new byte[] { 0x66, 0x67, 0xE2, 0x10 }, 0xFFFF_0000UL, 0x14UL)]     // loopw, taken (CX = 0 - 1)
    public void SixteenBitOperandSizeTruncatesTheTarget(byte[] code, ulong rcx, ulong target)
    {
        using var m = new InterpreterMachine(32);
        Assert.Equal(target, StepOnce(m, code, rcx, 0x242));
    }

    [Fact]
    public void SixteenBitCallAndRetMoveTwoBytes()
    {
        using var m = new InterpreterMachine(32);
        m.Cpu.Regs.Gpr[4] = 0x8000;
        Assert.Equal(0x13UL, StepOnce(m, [0x66, 0xE8, 0x0F, 0x00], 0)); // call rel16: IP = (10004H + 0FH) AND FFFFH
        Assert.Equal(0x7FFEUL, m.Cpu.Regs.Gpr[4]);
        Assert.Equal(0x0004u, m.Ram.ReadU32(0x7FFE) & 0xFFFF); // the return IP, truncated to 16 bits
        m.Ram.WriteU32(0x7FFC, 0x1234_5678);
        m.Cpu.Regs.Gpr[4] = 0x7FFC;
        Assert.Equal(0x5678UL, StepOnce(m, [0x66, 0xC3], 0)); // ret: pops 2 bytes
        Assert.Equal(0x7FFEUL, m.Cpu.Regs.Gpr[4]);
    }

    /// <summary>
    /// 64-bit mode, Intel: near JMP, CALL, RET, Jcc, JrCXZ and LOOP ignore 66H (SDM Vol. 2A CALL "In
    /// 64-bit mode ... the operand size is forced to 64 bits for near branches"; the same for JMP, Jcc,
    /// RET): the target is not truncated and CALL/RET move 8 bytes. The differential test covers these
    /// only on Intel hosts.
    /// </summary>
    [Fact]
    public void SixtySixPrefixIsIgnoredOnNearBranchesIn64BitMode()
    {
        using var m = new InterpreterMachine();
        const ulong code = InterpreterMachine.CodeAddress;
        Assert.Equal(code + 3 + 0x10, StepOnce(m, [0x66, 0xEB, 0x10], 0));
        Assert.Equal(code + 7 + 0x10, StepOnce(m, [0x66, 0x0F, 0x84, 0x10, 0, 0, 0], 0, 0x242));
        Assert.Equal(code + 3 + 0x10, StepOnce(m, [0x66, 0xE3, 0x10], 0));
        Assert.Equal(code + 3 + 0x10, StepOnce(m, [0x66, 0xE2, 0x10], 0x1_0000_0000));
        Assert.Equal(0xFFFF_FFFFUL, m.Cpu.Regs.Gpr[1]);
        m.Cpu.Regs.Gpr[4] = 0x8000;
        Assert.Equal(code + 6 + 0x10, StepOnce(m, [0x66, 0xE8, 0x10, 0, 0, 0], 0));
        Assert.Equal(0x7FF8UL, m.Cpu.Regs.Gpr[4]);
        Assert.Equal(code + 6, m.Ram.ReadU64(0x7FF8));
        m.Ram.WriteU64(0x7FF8, 0x1_2345_6789);
        Assert.Equal(0x1_2345_6789UL, StepOnce(m, [0x66, 0xC3], 0));
        Assert.Equal(0x8000UL, m.Cpu.Regs.Gpr[4]);
    }

    /// <summary>Real mode (16-bit code): E3 is JCXZ and 67H E3 JECXZ; E2 counts with CX and 67H E2 with ECX.</summary>
    [Fact]
    public void RealModeCountRegisters()
    {
        using var m = new SystemInstructions.SysMachine();
        var c = m.Cpu;
        c.SetSegmentReal(Seg.CS, 0);
        c.SetSegmentReal(Seg.SS, 0);
        ulong Step(byte[] code, ulong rcx)
        {
            m.Ram.TryWrite(0x8000, code);
            c.Rip = 0x8000;
            c.Regs.Gpr[1] = rcx;
            Assert.Null(c.StepForTest());
            return c.Rip;
        }
        Assert.Equal(0x8012UL, Step([0xE3, 0x10], 0x0001_0000));         // jcxz: CX = 0
        Assert.Equal(0x8003UL, Step([0x67, 0xE3, 0x10], 0x0001_0000));   // jecxz: ECX = 10000H
        Assert.Equal(0x8012UL, Step([0xE2, 0x10], 0x0001_0000));         // loop: CX 0 - 1 = FFFFH
        Assert.Equal(0x0001_FFFFUL, c.Regs.Gpr[1]);
        Assert.Equal(0x8013UL, Step([0x67, 0xE2, 0x10], 0x0001_0000));   // loopd: ECX = 0FFFFH
        Assert.Equal(0x0000_FFFFUL, c.Regs.Gpr[1]);
    }
}
