using Iced.Intel;
using SharpVisor.Cpu.X86.Tests.Differential;
using SharpVisor.Cpu.X86.Tests.Harness;

namespace SharpVisor.Cpu.X86.Tests.Sse;

/// <summary>
/// Every legacy-encoded (non-VEX, non-MMX) form of the SSE/SSE2 instructions the interpreter
/// implements, against the host CPU: XMM0-15, MXCSR (run under random rounding mode, FTZ, DAZ and
/// sticky flags; exceptions stay masked natively), GPRs, flags and the data window. Register and
/// memory forms; XMM lanes and memory mix random bits with floating-point edge values (±0,
/// denormals, min normal, max, ±inf, QNaN, SNaN, integer extremes).
/// </summary>
public class SseDifferentialTests : IClassFixture<RunnerFixture>
{
    readonly DifferentialRunner _runner;
    public SseDifferentialTests(RunnerFixture f) => _runner = f.Runner;

    /// <summary>Base random seed: SV_DIFF_SEED picks another sample (the default keeps runs reproducible).</summary>
    static int Seed => int.TryParse(Environment.GetEnvironmentVariable("SV_DIFF_SEED"), out int s) ? s : 1;

    /// <summary>Cases per instruction form; SV_DIFF_ITERATIONS raises it for long runs.</summary>
    static int Iterations => int.TryParse(Environment.GetEnvironmentVariable("SV_DIFF_ITERATIONS"), out int n) && n > 0 ? n : 24;

    static readonly ulong[] s_doubleEdges =
    [
        0, 0x8000_0000_0000_0000, 0x3FF0_0000_0000_0000, 0xBFF0_0000_0000_0000, 1, 0x800F_FFFF_FFFF_FFFF, 0x0010_0000_0000_0000,
        0x8010_0000_0000_0000, 0x7FEF_FFFF_FFFF_FFFF, 0xFFEF_FFFF_FFFF_FFFF, 0x7FF0_0000_0000_0000, 0xFFF0_0000_0000_0000,
        0x7FF8_0000_0000_0000, 0xFFF8_0000_0000_0001, 0x7FF0_0000_0000_0001, 0xFFF4_0000_0000_0000, 0x43E0_0000_0000_0000,
        0xC3E0_0000_0000_0000, 0x41E0_0000_0000_0000, 0xC1E0_0000_0000_0000, 0x3FE0_0000_0000_0000, 0x4004_0000_0000_0000,
        0x0018_0000_0000_0001, 0x3CB0_0000_0000_0000, 0x47EF_FFFF_E000_0000, 0x3810_0000_0000_0000, 0x36A0_0000_0000_0000,
    ];

    static readonly uint[] s_singleEdges =
    [
        0, 0x8000_0000, 0x3F80_0000, 0xBF80_0000, 1, 0x807F_FFFF, 0x0080_0000, 0x8080_0000, 0x7F7F_FFFF, 0xFF7F_FFFF,
        0x7F80_0000, 0xFF80_0000, 0x7FC0_0000, 0xFFC0_0001, 0x7F80_0001, 0xFFA0_0000, 0x4F00_0000, 0xCF00_0000, 0x5F00_0000,
        0xDF00_0000, 0x3F00_0000, 0x4020_0000, 0x00C0_0001, 0x3380_0000, 0x7F00_0000, 0x0100_0000,
    ];

    static ulong RandomDouble(Random r) => r.Next(6) switch
    {
        0 or 1 => s_doubleEdges[r.Next(s_doubleEdges.Length)],
        // values within a few binades of one another: cancellation, exact/inexact results
        2 => BitConverter.DoubleToUInt64Bits((r.NextDouble() * 8 - 4) * Math.Pow(2, r.Next(-8, 8))),
        3 => (ulong)r.NextInt64() & 0x800F_FFFF_FFFF_FFFF | ((ulong)r.Next(0, 4) << 52), // near-denormal
        4 => BitConverter.DoubleToUInt64Bits(r.Next(-1000, 1000) * 0.25),
        _ => (ulong)r.NextInt64() ^ ((ulong)r.Next(2) << 63),
    };

    static uint RandomSingle(Random r) => r.Next(6) switch
    {
        0 or 1 => s_singleEdges[r.Next(s_singleEdges.Length)],
        2 => BitConverter.SingleToUInt32Bits((float)((r.NextDouble() * 8 - 4) * Math.Pow(2, r.Next(-8, 8)))),
        3 => (uint)r.Next() & 0x807F_FFFF | ((uint)r.Next(0, 4) << 23),
        4 => BitConverter.SingleToUInt32Bits(r.Next(-1000, 1000) * 0.25f),
        _ => (uint)r.Next() ^ ((uint)r.Next(2) << 31),
    };

    /// <summary>16 bytes of lanes: random bits, doubles or singles (floating-point edge values included).</summary>
    static (ulong Low, ulong High) RandomLanes(DiffCase t)
    {
        var r = t.Rng;
        return r.Next(3) switch
        {
            0 => (t.Value(), t.Value()),
            1 => (RandomDouble(r), RandomDouble(r)),
            _ => (RandomSingle(r) | ((ulong)RandomSingle(r) << 32), RandomSingle(r) | ((ulong)RandomSingle(r) << 32)),
        };
    }

    static unsafe X86Context Context(DiffCase t, bool randomMxcsr)
    {
        var ctx = t.RandomContext();
        for (int i = 0; i < 16; i++)
        {
            var (lo, hi) = RandomLanes(t);
            ctx.SetXmm(i, lo, hi);
        }
        for (int i = 0; i < 8; i++)
        {
            ctx.Mm[i] = t.Rng.Next(2) == 0 ? t.Value() : RandomSingle(t.Rng) | ((ulong)RandomSingle(t.Rng) << 32);
        }
        // Random RC, FTZ, DAZ and sticky flags; the runner forces the exception masks on.
        ctx.Mxcsr = randomMxcsr ? (uint)t.Rng.Next(0x10000) | 0x1F80 : 0x1F80;
        return ctx;
    }

    static byte[] Data(DiffCase t)
    {
        var d = new byte[DifferentialRunner.DataSize];
        for (int i = 0; i < d.Length; i += 16)
        {
            var (lo, hi) = RandomLanes(t);
            BitConverter.TryWriteBytes(d.AsSpan(i), lo);
            BitConverter.TryWriteBytes(d.AsSpan(i + 8), hi);
        }
        return d;
    }

    static readonly Register[] s_gpr32 = [Register.EAX, Register.ECX, Register.EDX, Register.ESI, Register.EDI, Register.EBP, Register.R9D, Register.R14D];
    static readonly Register[] s_gpr64 = [Register.RAX, Register.RCX, Register.RDX, Register.RSI, Register.RDI, Register.RBP, Register.R9, Register.R14];

    /// <summary>Builds a random instance of <paramref name="code"/>; memory operands are [rbx+disp] (16-byte aligned for m128).</summary>
    static Instruction Make(DiffCase t, Code code, bool memory)
    {
        var info = code.ToOpCode();
        var ins = new Instruction { Code = code };
        for (int i = 0; i < info.OpCount; i++)
        {
            switch (info.GetOpKind(i))
            {
                case OpCodeOperandKind.xmm_reg:
                case OpCodeOperandKind.xmm_rm:
                case OpCodeOperandKind.xmm_or_mem when !memory:
                    ins.SetOpKind(i, OpKind.Register);
                    ins.SetOpRegister(i, Register.XMM0 + t.Rng.Next(16));
                    break;
                case OpCodeOperandKind.r32_reg:
                case OpCodeOperandKind.r32_rm:
                case OpCodeOperandKind.r32_or_mem when !memory:
                    ins.SetOpKind(i, OpKind.Register);
                    ins.SetOpRegister(i, s_gpr32[t.Rng.Next(s_gpr32.Length)]);
                    break;
                case OpCodeOperandKind.r64_reg:
                case OpCodeOperandKind.r64_rm:
                case OpCodeOperandKind.r64_or_mem when !memory:
                    ins.SetOpKind(i, OpKind.Register);
                    ins.SetOpRegister(i, s_gpr64[t.Rng.Next(s_gpr64.Length)]);
                    break;
                case OpCodeOperandKind.mm_reg:
                case OpCodeOperandKind.mm_rm:
                case OpCodeOperandKind.mm_or_mem when !memory:
                    ins.SetOpKind(i, OpKind.Register);
                    ins.SetOpRegister(i, Register.MM0 + t.Rng.Next(8));
                    break;
                case OpCodeOperandKind.imm8:
                    ins.SetOpKind(i, OpKind.Immediate8);
                    ins.Immediate8 = (byte)(t.Rng.Next(4) == 0 ? t.Rng.Next(8) * 8 : t.Rng.Next(256));
                    break;
                default:
                    // memory (xmm_or_mem, mem, r32_or_mem...)
                    ins.SetOpKind(i, OpKind.Memory);
                    ins.MemoryBase = Register.RBX;
                    ins.MemoryDisplacement64 = (ulong)(t.Rng.Next(DifferentialRunner.DataSize / 16 - 1) * 16 + (t.Rng.Next(2) == 0 ? 0 : 8 * (t.Rng.Next(2))));
                    ins.MemoryDisplSize = 8;
                    ins.MemoryIndexScale = 1;
                    break;
            }
        }
        if (ins.Op0Kind == OpKind.Memory || ins.Op1Kind == OpKind.Memory)
        {
            // 128-bit operands of the aligned forms must be 16-byte aligned (a misaligned one faults natively).
            if (info.Mnemonic is not (Mnemonic.Movups or Mnemonic.Movupd or Mnemonic.Movdqu))
            {
                ins.MemoryDisplacement64 &= ~15UL;
            }
        }
        return ins;
    }

    static bool HasMemoryForm(Code code)
    {
        var info = code.ToOpCode();
        for (int i = 0; i < info.OpCount; i++)
        {
            if (info.GetOpKind(i) is OpCodeOperandKind.xmm_or_mem or OpCodeOperandKind.mm_or_mem or OpCodeOperandKind.mem or OpCodeOperandKind.r32_or_mem or OpCodeOperandKind.r64_or_mem)
            {
                return true;
            }
        }
        return false;
    }

    static bool HasRegisterForm(Code code)
    {
        var info = code.ToOpCode();
        for (int i = 0; i < info.OpCount; i++)
        {
            if (info.GetOpKind(i) == OpCodeOperandKind.mem)
            {
                return false;
            }
        }
        return true;
    }

    /// <summary>Legacy-encoded 64-bit-mode forms of <paramref name="mnemonics"/> with XMM/GPR/memory/imm8 operands only.</summary>
    public static IEnumerable<Code> Forms(params Mnemonic[] mnemonics) =>
        Enum.GetValues<Code>().Where(code =>
        {
            var info = code.ToOpCode();
            if (info.Encoding != EncodingKind.Legacy || !info.Mode64 || Array.IndexOf(mnemonics, info.Mnemonic) < 0)
            {
                return false;
            }
            // Only SSE/SSE2 forms (e.g. not SSE4.1's PEXTRW m16): the CPU advertises nothing newer.
            if (code.CpuidFeatures().Any(f => f is not (CpuidFeature.SSE or CpuidFeature.SSE2 or CpuidFeature.X64 or CpuidFeature.MMX)))
            {
                return false;
            }
            for (int i = 0; i < info.OpCount; i++)
            {
                if (info.GetOpKind(i) is not (OpCodeOperandKind.mm_reg or OpCodeOperandKind.mm_rm or OpCodeOperandKind.mm_or_mem or OpCodeOperandKind.xmm_reg or OpCodeOperandKind.xmm_rm or OpCodeOperandKind.r32_rm or OpCodeOperandKind.r64_rm or OpCodeOperandKind.xmm_or_mem or OpCodeOperandKind.mem or OpCodeOperandKind.imm8
                    or OpCodeOperandKind.r32_reg or OpCodeOperandKind.r64_reg or OpCodeOperandKind.r32_or_mem or OpCodeOperandKind.r64_or_mem))
                {
                    return false;
                }
            }
            return true;
        });

    public static readonly TheoryData<string> Groups = new()
    {
        "IntegerArith", "IntegerCompareLogic", "PackUnpackShuffle", "Shifts", "Moves", "GprTransfers",
        "FloatArith", "FloatMinMaxSqrt", "FloatCompare", "Conversions",
    };

    static Mnemonic[] GroupMnemonics(string group) => group switch
    {
        "IntegerArith" => [Mnemonic.Paddb, Mnemonic.Paddw, Mnemonic.Paddd, Mnemonic.Paddq, Mnemonic.Psubb, Mnemonic.Psubw, Mnemonic.Psubd, Mnemonic.Psubq,
            Mnemonic.Paddsb, Mnemonic.Paddsw, Mnemonic.Paddusb, Mnemonic.Paddusw, Mnemonic.Psubsb, Mnemonic.Psubsw, Mnemonic.Psubusb, Mnemonic.Psubusw,
            Mnemonic.Pmullw, Mnemonic.Pmulhw, Mnemonic.Pmulhuw, Mnemonic.Pmuludq, Mnemonic.Pmaddwd, Mnemonic.Psadbw, Mnemonic.Pavgb, Mnemonic.Pavgw,
            Mnemonic.Pminub, Mnemonic.Pmaxub, Mnemonic.Pminsw, Mnemonic.Pmaxsw],
        "IntegerCompareLogic" => [Mnemonic.Pcmpeqb, Mnemonic.Pcmpeqw, Mnemonic.Pcmpeqd, Mnemonic.Pcmpgtb, Mnemonic.Pcmpgtw, Mnemonic.Pcmpgtd,
            Mnemonic.Pand, Mnemonic.Pandn, Mnemonic.Por, Mnemonic.Pxor, Mnemonic.Andps, Mnemonic.Andpd, Mnemonic.Andnps, Mnemonic.Andnpd,
            Mnemonic.Orps, Mnemonic.Orpd, Mnemonic.Xorps, Mnemonic.Xorpd],
        "PackUnpackShuffle" => [Mnemonic.Packsswb, Mnemonic.Packssdw, Mnemonic.Packuswb, Mnemonic.Punpcklbw, Mnemonic.Punpcklwd, Mnemonic.Punpckldq,
            Mnemonic.Punpcklqdq, Mnemonic.Punpckhbw, Mnemonic.Punpckhwd, Mnemonic.Punpckhdq, Mnemonic.Punpckhqdq, Mnemonic.Unpcklps, Mnemonic.Unpckhps,
            Mnemonic.Unpcklpd, Mnemonic.Unpckhpd, Mnemonic.Pshufd, Mnemonic.Pshufhw, Mnemonic.Pshuflw, Mnemonic.Shufps, Mnemonic.Shufpd],
        "Shifts" => [Mnemonic.Psllw, Mnemonic.Pslld, Mnemonic.Psllq, Mnemonic.Psrlw, Mnemonic.Psrld, Mnemonic.Psrlq, Mnemonic.Psraw, Mnemonic.Psrad,
            Mnemonic.Pslldq, Mnemonic.Psrldq],
        "Moves" => [Mnemonic.Movaps, Mnemonic.Movapd, Mnemonic.Movups, Mnemonic.Movupd, Mnemonic.Movdqa, Mnemonic.Movdqu, Mnemonic.Movhlps,
            Mnemonic.Movlhps, Mnemonic.Movss, Mnemonic.Movsd, Mnemonic.Movlps, Mnemonic.Movlpd, Mnemonic.Movhps, Mnemonic.Movhpd, Mnemonic.Movntps,
            Mnemonic.Movntpd, Mnemonic.Movntdq, Mnemonic.Movnti, Mnemonic.Movq, Mnemonic.Movd],
        "GprTransfers" => [Mnemonic.Movmskps, Mnemonic.Movmskpd, Mnemonic.Pmovmskb, Mnemonic.Pextrw, Mnemonic.Pinsrw],
        "FloatArith" => [Mnemonic.Addps, Mnemonic.Addpd, Mnemonic.Addss, Mnemonic.Addsd, Mnemonic.Subps, Mnemonic.Subpd, Mnemonic.Subss, Mnemonic.Subsd,
            Mnemonic.Mulps, Mnemonic.Mulpd, Mnemonic.Mulss, Mnemonic.Mulsd, Mnemonic.Divps, Mnemonic.Divpd, Mnemonic.Divss, Mnemonic.Divsd],
        "FloatMinMaxSqrt" => [Mnemonic.Minps, Mnemonic.Minpd, Mnemonic.Minss, Mnemonic.Minsd, Mnemonic.Maxps, Mnemonic.Maxpd, Mnemonic.Maxss, Mnemonic.Maxsd,
            Mnemonic.Sqrtps, Mnemonic.Sqrtpd, Mnemonic.Sqrtss, Mnemonic.Sqrtsd],
        "FloatCompare" => [Mnemonic.Cmpps, Mnemonic.Cmppd, Mnemonic.Cmpss, Mnemonic.Cmpsd, Mnemonic.Comiss, Mnemonic.Ucomiss, Mnemonic.Comisd, Mnemonic.Ucomisd],
        _ => [Mnemonic.Cvtsi2ss, Mnemonic.Cvtsi2sd, Mnemonic.Cvtss2si, Mnemonic.Cvttss2si, Mnemonic.Cvtsd2si, Mnemonic.Cvttsd2si, Mnemonic.Cvtss2sd,
            Mnemonic.Cvtsd2ss, Mnemonic.Cvtps2pd, Mnemonic.Cvtpd2ps, Mnemonic.Cvtdq2ps, Mnemonic.Cvtps2dq, Mnemonic.Cvttps2dq, Mnemonic.Cvtdq2pd,
            Mnemonic.Cvtpd2dq, Mnemonic.Cvttpd2dq, Mnemonic.Cvtpi2ps, Mnemonic.Cvtpi2pd, Mnemonic.Cvtps2pi, Mnemonic.Cvttps2pi, Mnemonic.Cvtpd2pi,
            Mnemonic.Cvttpd2pi],
    };

    [Theory]
    [MemberData(nameof(Groups))]
    public void GroupMatchesTheHost(string group)
    {
        var t = new DiffCase(_runner, Seed + group.Length * 7919 + group[0] * 31 + group[^1]);
        var failures = new List<string>();
        var forms = Forms(GroupMnemonics(group)).ToList();
        Assert.NotEmpty(forms);
        bool fp = group is "FloatArith" or "FloatMinMaxSqrt" or "FloatCompare" or "Conversions";
        foreach (var code in forms)
        {
            for (int i = 0; i < Iterations; i++)
            {
                bool memory = HasMemoryForm(code) && (!HasRegisterForm(code) || i % 2 == 1);
                var ins = Make(t, code, memory);
                string diff = t.Check(t.Encode(ins), Context(t, fp), Data(t), DiffCase.ArithFlags, code.ToString(), 0xFFFF, null);
                if (diff.Length > 0) failures.Add(diff);
            }
        }
        Assert.True(failures.Count == 0, $"{failures.Count} failures\n" + string.Join("\n", failures.Take(12)));
    }

    /// <summary>
    /// MMX and the SSE/SSE2 instructions on MMX registers (MM0-7 random; XMM forms of the same
    /// mnemonics run too since the filter keeps them).
    /// </summary>
    [Fact]
    public unsafe void MmxMatchesTheHost()
    {
        var t = new DiffCase(_runner, Seed + 123);
        var failures = new List<string>();
        var mnemonics = GroupMnemonics("IntegerArith").Concat(GroupMnemonics("IntegerCompareLogic")).Concat(GroupMnemonics("PackUnpackShuffle"))
            .Concat(GroupMnemonics("Shifts")).Concat(GroupMnemonics("GprTransfers"))
            .Concat([Mnemonic.Movd, Mnemonic.Movq, Mnemonic.Pshufw, Mnemonic.Movntq, Mnemonic.Movq2dq, Mnemonic.Movdq2q, Mnemonic.Emms]).ToArray();
        var forms = Forms(mnemonics).Where(code => code.ToOpCode().ToString().Contains("mm", StringComparison.Ordinal)
            && Enumerable.Range(0, code.ToOpCode().OpCount).Any(i => code.ToOpCode().GetOpKind(i) is OpCodeOperandKind.mm_reg or OpCodeOperandKind.mm_rm or OpCodeOperandKind.mm_or_mem)).ToList();
        Assert.True(forms.Count > 40, $"only {forms.Count} MMX forms");
        foreach (var code in forms)
        {
            for (int i = 0; i < Iterations; i++)
            {
                bool memory = HasMemoryForm(code) && (!HasRegisterForm(code) || i % 2 == 1);
                var ctx = Context(t, false);
                for (int m = 0; m < 8; m++)
                {
                    ctx.Mm[m] = t.Value();
                }
                string diff = t.Check(t.Encode(Make(t, code, memory)), ctx, Data(t), DiffCase.ArithFlags, code.ToString(), 0xFFFF, null);
                if (diff.Length > 0) failures.Add(diff);
            }
        }
        Assert.True(failures.Count == 0, $"{failures.Count} failures\n" + string.Join("\n", failures.Take(12)));
    }

    /// <summary>
    /// RCPPS/RCPSS/RSQRTPS/RSQRTSS are approximations whose tables differ between Intel, AMD and
    /// us; the SDM guarantees |relative error| ≤ 1.5 * 2^-12, so each lane may differ from the
    /// host by at most twice that (both within the bound of the exact value). Special inputs
    /// (zero, denormal, infinity, NaN, negative for RSQRT) must match exactly.
    /// </summary>
    [Fact]
    public void ReciprocalApproximationsAreWithinTheArchitecturalError()
    {
        var t = new DiffCase(_runner, Seed + 99);
        var failures = new List<string>();
        foreach (var code in Forms(Mnemonic.Rcpps, Mnemonic.Rcpss, Mnemonic.Rsqrtps, Mnemonic.Rsqrtss))
        {
            for (int i = 0; i < Iterations * 2; i++)
            {
                var ins = Make(t, code, i % 2 == 1);
                int dst = ins.Op0Register - Register.XMM0;
                string diff = t.Check(t.Encode(ins), Context(t, true), Data(t), DiffCase.ArithFlags, code.ToString(), 0xFFFF,
                    (reg, n, e) => reg == dst && LanesClose(n, e, reg));
                if (diff.Length > 0) failures.Add(diff);
            }
        }
        Assert.True(failures.Count == 0, $"{failures.Count} failures\n" + string.Join("\n", failures.Take(12)));
    }

    static bool LanesClose(X86Context n, X86Context e, int reg)
    {
        ulong[] nq = [n.XmmLow(reg), n.XmmHigh(reg)], eq = [e.XmmLow(reg), e.XmmHigh(reg)];
        for (int lane = 0; lane < 4; lane++)
        {
            uint a = (uint)(nq[lane / 2] >> (32 * (lane % 2))), b = (uint)(eq[lane / 2] >> (32 * (lane % 2)));
            if (a == b)
            {
                continue;
            }
            float fa = BitConverter.UInt32BitsToSingle(a), fb = BitConverter.UInt32BitsToSingle(b);
            if (!float.IsNormal(fa) || !float.IsNormal(fb) || Math.Abs((double)fa - fb) > 3 * Math.Pow(2, -12) * Math.Abs((double)fb))
            {
                return false;
            }
        }
        return true;
    }

    /// <summary>FXRSTOR of a random well-formed image followed by FXSAVE (64-bit and legacy forms) gives the host's image.</summary>
    [Fact]
    public void FxsaveOfARestoredImageMatchesTheHost()
    {
        var t = new DiffCase(_runner, Seed + 5);
        var failures = new List<string>();
        for (int i = 0; i < Iterations; i++)
        {
            bool rex = i % 2 == 0;
            var data = Data(t);
            var img = data.AsSpan(0, 512);
            BitConverter.TryWriteBytes(img, (ushort)(0x037F | (t.Rng.Next(4) << 8) | (t.Rng.Next(4) << 10)));  // FCW, all x87 exceptions masked
            BitConverter.TryWriteBytes(img[2..], (ushort)(t.Rng.Next(0x10000) & 0x3F00 & ~0x80)); // FSW: TOP, C0-C3; ES clear
            img[5] = 0;
            BitConverter.TryWriteBytes(img[6..], (ushort)t.Rng.Next(0x800));
            BitConverter.TryWriteBytes(img[24..], (uint)t.Rng.Next(0x10000) | 0x1F80); // MXCSR, masks set
            var code = t.Encode(
                Instruction.Create(rex ? Code.Fxrstor64_m512byte : Code.Fxrstor_m512byte, new MemoryOperand(Register.RBX, 0L)),
                Instruction.Create(rex ? Code.Fxsave64_m512byte : Code.Fxsave_m512byte, new MemoryOperand(Register.RBX, 1024)));
            var o = _runner.Run(code, Context(t, false), data);
            if (o.EmulatedException is int v)
            {
                failures.Add($"exception {v}");
                continue;
            }
            for (int b = 0; b < 416; b++)
            {
                // FOP/FIP/FDP (6..23): AMD saves them only when an x87 exception is pending (ES=1),
                // Intel always (we follow Intel); MXCSR_MASK (28..31) is model-specific.
                if (b is >= 6 and < 24 or >= 28 and < 32)
                {
                    continue;
                }
                if (o.NativeData[1024 + b] != o.EmulatedData[1024 + b])
                {
                    failures.Add($"{(rex ? "fxsave64" : "fxsave")} byte {b}: native 0x{o.NativeData[1024 + b]:x2} emulated 0x{o.EmulatedData[1024 + b]:x2}");
                    break;
                }
            }
            if (o.Native.Mxcsr != o.Emulated.Mxcsr)
            {
                failures.Add($"mxcsr native 0x{o.Native.Mxcsr:x} emulated 0x{o.Emulated.Mxcsr:x}");
            }
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures.Take(12)));
    }

    [Fact]
    public void LdmxcsrStmxcsrMatchTheHost()
    {
        var t = new DiffCase(_runner, Seed + 6);
        var failures = new List<string>();
        for (int i = 0; i < Iterations; i++)
        {
            var data = Data(t);
            BitConverter.TryWriteBytes(data.AsSpan(64), (uint)t.Rng.Next(0x10000) | 0x1F80);
            var code = t.Encode(
                Instruction.Create(Code.Ldmxcsr_m32, new MemoryOperand(Register.RBX, 64)),
                Instruction.Create(Code.Addsd_xmm_xmmm64, Register.XMM1, Register.XMM2),
                Instruction.Create(Code.Stmxcsr_m32, new MemoryOperand(Register.RBX, 128)));
            string diff = t.Check(code, Context(t, false), data, DiffCase.ArithFlags, "ldmxcsr/addsd/stmxcsr", 0xFFFF, null);
            if (diff.Length > 0) failures.Add(diff);
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures.Take(12)));
    }

    /// <summary>glibc's SSE2 strlen/memchr core: PCMPEQB, PMOVMSKB, BSF on the mask, over unaligned loads.</summary>
    [Fact]
    public void StringScanSequenceMatchesTheHost()
    {
        var t = new DiffCase(_runner, Seed + 8);
        var failures = new List<string>();
        for (int i = 0; i < Iterations; i++)
        {
            var data = Data(t);
            for (int b = 0; b < 64; b++)
            {
                data[b] = (byte)(t.Rng.Next(8) == 0 ? 0 : t.Rng.Next(1, 256));
            }
            var code = t.Encode(
                Instruction.Create(Code.Pxor_xmm_xmmm128, Register.XMM0, Register.XMM0),
                Instruction.Create(Code.Movdqu_xmm_xmmm128, Register.XMM1, new MemoryOperand(Register.RBX, t.Rng.Next(16))),
                Instruction.Create(Code.Pcmpeqb_xmm_xmmm128, Register.XMM1, Register.XMM0),
                Instruction.Create(Code.Pmovmskb_r32_xmm, Register.EDX, Register.XMM1),
                Instruction.Create(Code.Pminub_xmm_xmmm128, Register.XMM2, new MemoryOperand(Register.RBX, 16)),
                Instruction.Create(Code.Pshufd_xmm_xmmm128_imm8, Register.XMM3, Register.XMM2, 0x1B));
            string diff = t.Check(code, Context(t, false), data, DiffCase.ArithFlags, "strlen core", 0xFFFF, null);
            if (diff.Length > 0) failures.Add(diff);
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures.Take(12)));
    }
}
