using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Iced.Intel;
using SharpVisor.Cpu.X86.Decode;
using SharpVisor.Cpu.X86.Simd;
using IcedReg = Iced.Intel.Register;

namespace SharpVisor.Cpu.X86.Semantics;

/// <summary>
/// SSE and SSE2 (SDM Vol. 1 ch. 10-11, Vol. 2 instruction pages): XMM moves, packed integer,
/// packed/scalar single and double floating point, conversions, MXCSR, FXSAVE/FXRSTOR.
/// MMX and the MMX-register forms live in Sse.Mmx.cs.
/// </summary>
/// <remarks>
/// Op fields for this family: <see cref="Op.R1"/> = XMM index (0-15) of operand 0 when it is an
/// XMM register, else the GPR slot the binder filled; <see cref="Op.R2"/> = XMM index of the
/// register source (or the GPR slot for GPR sources); <see cref="Op.Aux"/> bit 0 = the memory
/// operand is a source, bit 1 = it must be 16-byte aligned (#GP(0) otherwise);
/// <see cref="Op.Imm2"/> = memory operand size in bytes; <see cref="Op.Imm"/> = imm8;
/// <see cref="Op.Sub"/> = compare predicate / variant.
/// </remarks>
public static unsafe partial class Sse
{
    const byte MemSrc = 1, Aligned = 2;

    const FormTraits Faults = FormTraits.MayFault; // #UD/#NM from CR0 and CR4 (Check), #XM, #MF for MMX

    /// <summary>This family's rows of <see cref="InstructionTable"/> (SSE, SSE2, MMX): every form may fault.</summary>
    internal static FormSpec[] Forms =>
    [
        .. FormSpec.Each(&BindVec, Faults, s_vecOps),
        .. FormSpec.Each(&BindMovdq, Faults, Mnemonic.Movd, Mnemonic.Movq),
        .. FormSpec.Each(&BindMovPartial, Faults, Mnemonic.Movss, Mnemonic.Movlps, Mnemonic.Movlpd, Mnemonic.Movhps, Mnemonic.Movhpd,
            Mnemonic.Movntps, Mnemonic.Movntpd, Mnemonic.Movntdq),
        // Iced names SSE2 MOVSD/CMPSD like the string instructions (StringOps has those Codes).
        new(Code.Movsd_xmm_xmmm64, &BindMovsd, Faults),
        new(Code.Movsd_xmmm64_xmm, &BindMovsd, Faults),
        new(Code.Cmpsd_xmm_xmmm64_imm8, &BindCmpsd, Faults),
        new(Mnemonic.Movnti, &BindMovnti, Faults),
        .. FormSpec.Each(&BindMmx, Faults, Mnemonic.Pshufw, Mnemonic.Maskmovq, Mnemonic.Movntq, Mnemonic.Movq2dq, Mnemonic.Movdq2q),
        new(Mnemonic.Emms, &BindEmms, Faults),
        new(Mnemonic.Maskmovdqu, &BindMaskmovdqu, Faults),
        .. FormSpec.Each(&BindGprXmm, Faults, Mnemonic.Movmskps, Mnemonic.Movmskpd, Mnemonic.Pmovmskb, Mnemonic.Pextrw, Mnemonic.Pinsrw),
        FormSpec.NotImplemented(Code.Pextrw_r32m16_xmm_imm8), // SSE4.1's 66 0F 3A 15 (SSE4.1 is not implemented)
        FormSpec.NotImplemented(Code.Pextrw_r64m16_xmm_imm8),
        .. FormSpec.Each(&BindFp, Faults, Mnemonic.Addps, Mnemonic.Addpd, Mnemonic.Addss, Mnemonic.Addsd, Mnemonic.Subps, Mnemonic.Subpd,
            Mnemonic.Subss, Mnemonic.Subsd, Mnemonic.Mulps, Mnemonic.Mulpd, Mnemonic.Mulss, Mnemonic.Mulsd, Mnemonic.Divps, Mnemonic.Divpd,
            Mnemonic.Divss, Mnemonic.Divsd, Mnemonic.Minps, Mnemonic.Minpd, Mnemonic.Minss, Mnemonic.Minsd, Mnemonic.Maxps, Mnemonic.Maxpd,
            Mnemonic.Maxss, Mnemonic.Maxsd, Mnemonic.Sqrtps, Mnemonic.Sqrtpd, Mnemonic.Sqrtss, Mnemonic.Sqrtsd, Mnemonic.Cmpps,
            Mnemonic.Cmppd, Mnemonic.Cmpss, Mnemonic.Comiss, Mnemonic.Ucomiss, Mnemonic.Comisd, Mnemonic.Ucomisd, Mnemonic.Rcpps,
            Mnemonic.Rcpss, Mnemonic.Rsqrtps, Mnemonic.Rsqrtss),
        .. FormSpec.Each(&BindCvt, Faults, Mnemonic.Cvtsi2ss, Mnemonic.Cvtsi2sd, Mnemonic.Cvtss2si, Mnemonic.Cvttss2si, Mnemonic.Cvtsd2si,
            Mnemonic.Cvttsd2si, Mnemonic.Cvtss2sd, Mnemonic.Cvtsd2ss, Mnemonic.Cvtps2pd, Mnemonic.Cvtpd2ps, Mnemonic.Cvtdq2ps,
            Mnemonic.Cvtps2dq, Mnemonic.Cvttps2dq, Mnemonic.Cvtdq2pd, Mnemonic.Cvtpd2dq, Mnemonic.Cvttpd2dq),
        .. FormSpec.Each(&BindCvtMmx, Faults, Mnemonic.Cvtpi2ps, Mnemonic.Cvtpi2pd, Mnemonic.Cvtps2pi, Mnemonic.Cvttps2pi, Mnemonic.Cvtpd2pi,
            Mnemonic.Cvttpd2pi),
        new(Mnemonic.Ldmxcsr, &BindMxcsr, Faults),
        new(Mnemonic.Stmxcsr, &BindMxcsr, Faults),
        .. FormSpec.Each(&BindFxsave, Faults, Mnemonic.Fxsave, Mnemonic.Fxsave64, Mnemonic.Fxrstor, Mnemonic.Fxrstor64),
    ];

    // ------------------------------------------------------------------ state checks and operands

    /// <summary>
    /// SSE availability (SDM Vol. 3A 13.1.3 and the SSE instruction exception tables): CR0.EM or
    /// !CR4.OSFXSR → #UD; CR0.TS → #NM (Linux's lazy/eager FPU switch).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Check(Cpu c)
    {
        if ((c.Cr0Value & (X86.Cr0.EM | X86.Cr0.TS)) != 0 || (c.Cr4Value & X86.Cr4.OSFXSR) == 0)
        {
            CheckSlow(c);
        }
    }

    static void CheckSlow(Cpu c)
    {
        if ((c.Cr0Value & X86.Cr0.EM) != 0 || (c.Cr4Value & X86.Cr4.OSFXSR) == 0)
        {
            throw c.InvalidOpcode();
        }
        throw c.Fault(Vector.NM);
    }

    static int XmmIndex(IcedReg r) => r - IcedReg.XMM0;

    static bool IsMmx(IcedReg r) => r >= IcedReg.MM0 && r <= IcedReg.MM7;

    /// <summary>Common operand setup: XMM indices into R1/R2, memory flags and size. False for MMX forms.</summary>
    static bool Prep(in Instruction ins, ref Op op)
    {
        bool haveSrc = false;
        for (int i = 0; i < ins.OpCount; i++)
        {
            var kind = ins.GetOpKind(i);
            if (kind == OpKind.Register)
            {
                var r = ins.GetOpRegister(i);
                if (IsMmx(r))
                {
                    return false;
                }
                if (r.IsXMM())
                {
                    if (i == 0)
                    {
                        op.R1 = (byte)XmmIndex(r);
                    }
                    else if (!haveSrc)
                    {
                        op.R2 = (byte)XmmIndex(r);
                        haveSrc = true;
                    }
                }
            }
            else if (kind == OpKind.Memory)
            {
                op.Imm2 = (uint)ins.MemorySize.GetSize();
                if (i > 0)
                {
                    op.Aux |= MemSrc;
                }
                if (op.Imm2 == 16 && ins.Mnemonic is not (Mnemonic.Movups or Mnemonic.Movupd or Mnemonic.Movdqu))
                {
                    op.Aux |= Aligned; // legacy-SSE 128-bit memory operands must be aligned (SDM Vol. 1 11.4.1)
                    op.Flags |= OpFlags.Aligned16;
                }
            }
        }
        op.Imm &= 0xFF;
        return true;
    }

    /// <summary>
    /// Reads <paramref name="size"/> bytes (2, 4, 8, 16) into the low part of a vector (rest zero). A
    /// 16-byte operand is never alignment checked: aligned ones are 16-byte aligned or #GP, and
    /// MOVUPS/MOVUPD/MOVDQU do not raise #AC on the host (SDM Vol. 3A 6.15 leaves it to the implementation).
    /// </summary>
    public static Vector128<byte> Load(Cpu c, ulong la, uint size, bool aligned)
    {
        if (aligned && (la & 15) != 0)
        {
            throw c.GeneralProtection(0);
        }
        return size switch
        {
            16 => Vector128.Create(c.Read64NoAlignmentCheck(la), c.Read64NoAlignmentCheck(la + 8)).AsByte(),
            8 => Vector128.CreateScalar(c.Read64(la)).AsByte(),
            4 => Vector128.CreateScalar(c.Read32(la)).AsByte(),
            _ => Vector128.CreateScalar(c.Read16(la)).AsByte(),
        };
    }

    /// <summary>Writes the low <paramref name="size"/> bytes of <paramref name="v"/>; a page-crossing 16-byte store checks both pages first.</summary>
    public static void Store(Cpu c, ulong la, Vector128<byte> v, uint size, bool aligned)
    {
        if (aligned && (la & 15) != 0)
        {
            throw c.GeneralProtection(0);
        }
        var q = v.AsUInt64();
        switch (size)
        {
            case 16:
                if ((la & 0xFFF) > 0xFF0)
                {
                    c.Translate(la, Access.Write, c.Cpl == 3);
                    c.Translate(la + 15, Access.Write, c.Cpl == 3); // no partial store on #PF
                }
                c.Write64NoAlignmentCheck(la, q.GetElement(0));
                c.Write64NoAlignmentCheck(la + 8, q.GetElement(1));
                break;
            case 8: c.Write64(la, q.GetElement(0)); break;
            case 4: c.Write32(la, v.AsUInt32().GetElement(0)); break;
            default: c.Write16(la, v.AsUInt16().GetElement(0)); break;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector128<byte> Src(Cpu c, ref Op op) =>
        (op.Aux & MemSrc) == 0 ? c.Fpu.Xmm[op.R2] : Load(c, op.Linear(c), op.Imm2, (op.Aux & Aligned) != 0);

    // ------------------------------------------------------------------ integer / bitwise / shuffles

    static readonly Mnemonic[] s_vecOps =
    [
        Mnemonic.Paddb, Mnemonic.Paddw, Mnemonic.Paddd, Mnemonic.Paddq, Mnemonic.Psubb, Mnemonic.Psubw, Mnemonic.Psubd, Mnemonic.Psubq,
        Mnemonic.Paddsb, Mnemonic.Paddsw, Mnemonic.Paddusb, Mnemonic.Paddusw, Mnemonic.Psubsb, Mnemonic.Psubsw, Mnemonic.Psubusb, Mnemonic.Psubusw,
        Mnemonic.Pmullw, Mnemonic.Pmulhw, Mnemonic.Pmulhuw, Mnemonic.Pmuludq, Mnemonic.Pmaddwd, Mnemonic.Psadbw, Mnemonic.Pavgb, Mnemonic.Pavgw,
        Mnemonic.Pminub, Mnemonic.Pmaxub, Mnemonic.Pminsw, Mnemonic.Pmaxsw, Mnemonic.Pcmpeqb, Mnemonic.Pcmpeqw, Mnemonic.Pcmpeqd,
        Mnemonic.Pcmpgtb, Mnemonic.Pcmpgtw, Mnemonic.Pcmpgtd, Mnemonic.Pand, Mnemonic.Pandn, Mnemonic.Por, Mnemonic.Pxor,
        Mnemonic.Andps, Mnemonic.Andpd, Mnemonic.Andnps, Mnemonic.Andnpd, Mnemonic.Orps, Mnemonic.Orpd, Mnemonic.Xorps, Mnemonic.Xorpd,
        Mnemonic.Packsswb, Mnemonic.Packssdw, Mnemonic.Packuswb,
        Mnemonic.Punpcklbw, Mnemonic.Punpcklwd, Mnemonic.Punpckldq, Mnemonic.Punpcklqdq, Mnemonic.Punpckhbw, Mnemonic.Punpckhwd, Mnemonic.Punpckhdq, Mnemonic.Punpckhqdq,
        Mnemonic.Unpcklps, Mnemonic.Unpckhps, Mnemonic.Unpcklpd, Mnemonic.Unpckhpd,
        Mnemonic.Psllw, Mnemonic.Pslld, Mnemonic.Psllq, Mnemonic.Psrlw, Mnemonic.Psrld, Mnemonic.Psrlq, Mnemonic.Psraw, Mnemonic.Psrad,
        Mnemonic.Pslldq, Mnemonic.Psrldq, Mnemonic.Pshufd, Mnemonic.Pshufhw, Mnemonic.Pshuflw, Mnemonic.Shufps, Mnemonic.Shufpd,
        Mnemonic.Movaps, Mnemonic.Movapd, Mnemonic.Movups, Mnemonic.Movupd, Mnemonic.Movdqa, Mnemonic.Movdqu, Mnemonic.Movhlps, Mnemonic.Movlhps,
    ];

    static delegate*<Cpu, ref Op, void> VecHandler(Mnemonic m) => m switch
    {
        Mnemonic.Paddb => &Vec<Paddb>,
        Mnemonic.Paddw => &Vec<Paddw>,
        Mnemonic.Paddd => &Vec<Paddd>,
        Mnemonic.Paddq => &Vec<Paddq>,
        Mnemonic.Psubb => &Vec<Psubb>,
        Mnemonic.Psubw => &Vec<Psubw>,
        Mnemonic.Psubd => &Vec<Psubd>,
        Mnemonic.Psubq => &Vec<Psubq>,
        Mnemonic.Paddsb => &Vec<Paddsb>,
        Mnemonic.Paddsw => &Vec<Paddsw>,
        Mnemonic.Paddusb => &Vec<Paddusb>,
        Mnemonic.Paddusw => &Vec<Paddusw>,
        Mnemonic.Psubsb => &Vec<Psubsb>,
        Mnemonic.Psubsw => &Vec<Psubsw>,
        Mnemonic.Psubusb => &Vec<Psubusb>,
        Mnemonic.Psubusw => &Vec<Psubusw>,
        Mnemonic.Pmullw => &Vec<Pmullw>,
        Mnemonic.Pmulhw => &Vec<Pmulhw>,
        Mnemonic.Pmulhuw => &Vec<Pmulhuw>,
        Mnemonic.Pmuludq => &Vec<Pmuludq>,
        Mnemonic.Pmaddwd => &Vec<Pmaddwd>,
        Mnemonic.Psadbw => &Vec<Psadbw>,
        Mnemonic.Pavgb => &Vec<Pavgb>,
        Mnemonic.Pavgw => &Vec<Pavgw>,
        Mnemonic.Pminub => &Vec<Pminub>,
        Mnemonic.Pmaxub => &Vec<Pmaxub>,
        Mnemonic.Pminsw => &Vec<Pminsw>,
        Mnemonic.Pmaxsw => &Vec<Pmaxsw>,
        Mnemonic.Pcmpeqb => &Vec<Pcmpeqb>,
        Mnemonic.Pcmpeqw => &Vec<Pcmpeqw>,
        Mnemonic.Pcmpeqd => &Vec<Pcmpeqd>,
        Mnemonic.Pcmpgtb => &Vec<Pcmpgtb>,
        Mnemonic.Pcmpgtw => &Vec<Pcmpgtw>,
        Mnemonic.Pcmpgtd => &Vec<Pcmpgtd>,
        Mnemonic.Pand or Mnemonic.Andps or Mnemonic.Andpd => &Vec<Pand>,
        Mnemonic.Pandn or Mnemonic.Andnps or Mnemonic.Andnpd => &Vec<Pandn>,
        Mnemonic.Por or Mnemonic.Orps or Mnemonic.Orpd => &Vec<Por>,
        Mnemonic.Pxor or Mnemonic.Xorps or Mnemonic.Xorpd => &Vec<Pxor>,
        Mnemonic.Packsswb => &Vec<Packsswb>,
        Mnemonic.Packssdw => &Vec<Packssdw>,
        Mnemonic.Packuswb => &Vec<Packuswb>,
        Mnemonic.Punpcklbw => &Vec<Punpcklbw>,
        Mnemonic.Punpcklwd => &Vec<Punpcklwd>,
        Mnemonic.Punpckldq or Mnemonic.Unpcklps => &Vec<Punpckldq>,
        Mnemonic.Punpcklqdq or Mnemonic.Unpcklpd => &Vec<Punpcklqdq>,
        Mnemonic.Punpckhbw => &Vec<Punpckhbw>,
        Mnemonic.Punpckhwd => &Vec<Punpckhwd>,
        Mnemonic.Punpckhdq or Mnemonic.Unpckhps => &Vec<Punpckhdq>,
        Mnemonic.Punpckhqdq or Mnemonic.Unpckhpd => &Vec<Punpckhqdq>,
        Mnemonic.Psllw => &Vec<Psllw>,
        Mnemonic.Pslld => &Vec<Pslld>,
        Mnemonic.Psllq => &Vec<Psllq>,
        Mnemonic.Psrlw => &Vec<Psrlw>,
        Mnemonic.Psrld => &Vec<Psrld>,
        Mnemonic.Psrlq => &Vec<Psrlq>,
        Mnemonic.Psraw => &Vec<Psraw>,
        Mnemonic.Psrad => &Vec<Psrad>,
        Mnemonic.Pshufd => &Vec<Pshufd>,
        Mnemonic.Pshufhw => &Vec<Pshufhw>,
        Mnemonic.Pshuflw => &Vec<Pshuflw>,
        Mnemonic.Shufps => &Vec<Shufps>,
        Mnemonic.Shufpd => &Vec<Shufpd>,
        Mnemonic.Movhlps => &Vec<Movhlps>,
        Mnemonic.Movlhps => &Vec<Movlhps>,
        _ => &Vec<Mov>,
    };

    static delegate*<Cpu, ref Op, void> ShiftImmHandler(Mnemonic m) => m switch
    {
        Mnemonic.Psllw => &VecImm<Psllw>,
        Mnemonic.Pslld => &VecImm<Pslld>,
        Mnemonic.Psllq => &VecImm<Psllq>,
        Mnemonic.Psrlw => &VecImm<Psrlw>,
        Mnemonic.Psrld => &VecImm<Psrld>,
        Mnemonic.Psrlq => &VecImm<Psrlq>,
        Mnemonic.Psraw => &VecImm<Psraw>,
        Mnemonic.Psrad => &VecImm<Psrad>,
        Mnemonic.Pslldq => &VecImm<Pslldq>,
        Mnemonic.Psrldq => &VecImm<Psrldq>,
        _ => null,
    };

    static bool BindVec(in Instruction ins, ref Op op)
    {
        if (IsMmxForm(ins))
        {
            return BindMmx(ins, ref op);
        }
        if (!Prep(ins, ref op))
        {
            return false;
        }
        var m = ins.Mnemonic;
        if (ins.Op0Kind == OpKind.Memory)
        {
            // Stores: MOVAPS/MOVUPS/MOVAPD/MOVUPD/MOVDQA/MOVDQU m128, xmm.
            if (m is not (Mnemonic.Movaps or Mnemonic.Movapd or Mnemonic.Movups or Mnemonic.Movupd or Mnemonic.Movdqa or Mnemonic.Movdqu))
            {
                return false;
            }
            op.Exec = &StoreXmm;
            return true;
        }
        if (ins.OpCount == 2 && ins.Op1Kind == OpKind.Immediate8)
        {
            op.Exec = ShiftImmHandler(m);
            return op.Exec != null;
        }
        op.Exec = VecHandler(m);
        return true;
    }

    static void Vec<T>(Cpu c, ref Op op) where T : IVecOp
    {
        Check(c);
        var s = Src(c, ref op);
        c.Fpu.Xmm[op.R1] = T.Apply(c.Fpu.Xmm[op.R1], s, (byte)op.Imm);
    }

    /// <summary>Shift by imm8: the count goes in the low quadword of the "source".</summary>
    static void VecImm<T>(Cpu c, ref Op op) where T : IVecOp
    {
        Check(c);
        c.Fpu.Xmm[op.R1] = T.Apply(c.Fpu.Xmm[op.R1], Vector128.CreateScalar(op.Imm).AsByte(), (byte)op.Imm);
    }

    static void StoreXmm(Cpu c, ref Op op)
    {
        Check(c);
        Store(c, op.Linear(c), c.Fpu.Xmm[op.R2], op.Imm2, (op.Aux & Aligned) != 0);
    }

    /// <summary>Load of Imm2 bytes with the rest of the register zeroed (MOVSS/MOVSD/MOVQ/MOVD xmm, m).</summary>
    static void LoadZero(Cpu c, ref Op op)
    {
        Check(c);
        c.Fpu.Xmm[op.R1] = Load(c, op.Linear(c), op.Imm2, false);
    }

    static void StoreHigh(Cpu c, ref Op op)
    {
        Check(c);
        c.Write64(op.Linear(c), c.Fpu.Xmm[op.R2].AsUInt64().GetElement(1));
    }

    // ------------------------------------------------------------------ MOVD/MOVQ/MOVSS/MOVSD/partial moves

    static bool BindMovdq(in Instruction ins, ref Op op)
    {
        if (IsMmxForm(ins))
        {
            return BindMmx(ins, ref op);
        }
        if (!Prep(ins, ref op))
        {
            return false;
        }
        switch ((Code)op.Code)
        {
            case Code.Movd_xmm_rm32:
            case Code.Movq_xmm_rm64:
                op.Sub = (byte)(ins.Code == Code.Movd_xmm_rm32 ? 4 : 8);
                op.Exec = ins.Op1Kind == OpKind.Memory ? &LoadZero : &GprToXmm;
                return true;
            case Code.Movd_rm32_xmm:
            case Code.Movq_rm64_xmm:
                op.Sub = (byte)(ins.Code == Code.Movd_rm32_xmm ? 4 : 8);
                op.Exec = ins.Op0Kind == OpKind.Memory ? &StoreXmm : &XmmToGpr;
                return true;
            case Code.Movq_xmm_xmmm64:
                op.Exec = ins.Op1Kind == OpKind.Memory ? &LoadZero : &Vec<MovqZero>;
                return true;
            case Code.Movq_xmmm64_xmm:
                if (ins.Op0Kind == OpKind.Memory)
                {
                    op.Exec = &StoreXmm;
                }
                else
                {
                    (op.R1, op.R2) = ((byte)XmmIndex(ins.Op0Register), (byte)XmmIndex(ins.Op1Register));
                    op.Exec = &Vec<MovqZero>;
                }
                return true;
            default:
                return false; // MMX forms
        }
    }

    static void GprToXmm(Cpu c, ref Op op)
    {
        Check(c);
        ulong v = c.Regs.Gpr[op.R2];
        c.Fpu.Xmm[op.R1] = Vector128.CreateScalar(op.Sub == 4 ? (uint)v : v).AsByte();
    }

    static void XmmToGpr(Cpu c, ref Op op)
    {
        Check(c);
        var q = c.Fpu.Xmm[op.R2].AsUInt64().GetElement(0);
        c.Regs.Gpr[op.R1] = op.Sub == 4 ? (uint)q : q;
    }

    static bool BindMovPartial(in Instruction ins, ref Op op)
    {
        if (!Prep(ins, ref op))
        {
            return false;
        }
        var m = ins.Mnemonic;
        if (ins.Op0Kind == OpKind.Memory)
        {
            op.Exec = m is Mnemonic.Movhps or Mnemonic.Movhpd ? &StoreHigh : &StoreXmm;
            return true;
        }
        if (ins.Op1Kind == OpKind.Memory)
        {
            op.Exec = m switch
            {
                Mnemonic.Movss => &LoadZero,
                Mnemonic.Movlps or Mnemonic.Movlpd => &Vec<MergeLow64>,
                Mnemonic.Movhps or Mnemonic.Movhpd => &Vec<MergeHigh64>,
                _ => null,
            };
            return op.Exec != null;
        }
        if (m == Mnemonic.Movss)
        {
            op.Exec = &Vec<MergeLow32>;
            return true;
        }
        return false;
    }

    /// <summary>SSE2 MOVSD (F2 0F 10/11): register forms merge the low quadword, loads zero the rest.</summary>
    public static bool BindMovsd(in Instruction ins, ref Op op)
    {
        if (ins.Code is not (Code.Movsd_xmm_xmmm64 or Code.Movsd_xmmm64_xmm) || !Prep(ins, ref op))
        {
            return false;
        }
        if (ins.Op0Kind == OpKind.Memory)
        {
            op.Exec = &StoreXmm;
        }
        else if (ins.Op1Kind == OpKind.Memory)
        {
            op.Exec = &LoadZero;
        }
        else
        {
            (op.R1, op.R2) = ((byte)XmmIndex(ins.Op0Register), (byte)XmmIndex(ins.Op1Register));
            op.Exec = &Vec<MergeLow64>;
        }
        return true;
    }

    static bool BindMovnti(in Instruction ins, ref Op op)
    {
        if (ins.Op0Kind != OpKind.Memory)
        {
            return false;
        }
        op.Exec = op.Size == 8 ? &Movnti<S64> : &Movnti<S32>;
        return true;
    }

    static void Movnti<S>(Cpu c, ref Op op) where S : IOpSize => S.Store(c, op.Linear(c), S.GetReg(c, op.R2));

    /// <summary>MASKMOVDQU xmm1, xmm2: bytes of xmm1 whose xmm2 byte has bit 7 set go to DS:[rDI].</summary>
    static bool BindMaskmovdqu(in Instruction ins, ref Op op)
    {
        op.R1 = (byte)XmmIndex(ins.Op1Register);
        op.R2 = (byte)XmmIndex(ins.Op2Register);
        op.Base = 7; // rDI
        op.Index = RegisterFile.Zero;
        op.Disp = 0;
        op.AddrMask = ins.Op0Kind switch { OpKind.MemorySegDI => 0xFFFF, OpKind.MemorySegEDI => 0xFFFF_FFFF, _ => ulong.MaxValue };
        op.Seg = Binder.SegSlot(ins.MemorySegment);
        op.MemSize = (ushort)Math.Max(1, ins.MemorySize.GetSize()); // DS:rDI is implicit: no Memory operand filled these
        op.MemAccess = SegmentAccess.Write;
        op.Exec = &Maskmovdqu;
        return true;
    }

    static void Maskmovdqu(Cpu c, ref Op op)
    {
        Check(c);
        var data = c.Fpu.Xmm[op.R1];
        uint mask = (uint)System.Runtime.Intrinsics.X86.Sse2.MoveMask(c.Fpu.Xmm[op.R2]);
        ulong la = op.Linear(c);
        // #AC below 8-byte alignment, and every page writable before the first byte — even with a
        // zero mask, which stores nothing: the host faults then too (SDM Vol. 2B MASKMOVDQU leaves
        // it to the implementation).
        c.CheckAlignment(la, 8);
        c.Translate(la, Access.Write, c.Cpl == 3);
        c.Translate(la + 15, Access.Write, c.Cpl == 3);
        for (int i = 0; i < 16; i++)
        {
            if ((mask & (1u << i)) != 0)
            {
                c.Write8(la + (ulong)i, data.GetElement(i));
            }
        }
    }

    /// <summary>MOVMSKPS/PD, PMOVMSKB (r32/r64 ← xmm), PEXTRW (r ← xmm, imm8), PINSRW (xmm ← r32/m16, imm8).</summary>
    static bool BindGprXmm(in Instruction ins, ref Op op)
    {
        if (IsMmxForm(ins))
        {
            return BindMmx(ins, ref op);
        }
        if (!Prep(ins, ref op))
        {
            return false;
        }
        switch (ins.Mnemonic)
        {
            case Mnemonic.Movmskps: op.Exec = &Movmskps; return true;
            case Mnemonic.Movmskpd: op.Exec = &Movmskpd; return true;
            case Mnemonic.Pmovmskb: op.Exec = &Pmovmskb; return true;
            case Mnemonic.Pextrw:
                if (ins.Op0Kind != OpKind.Register || !ins.Op1Register.IsXMM())
                {
                    return false; // the SSE4.1 memory form is not advertised
                }
                op.Exec = &Pextrw;
                return true;
            default:
                op.Exec = &Pinsrw;
                return true;
        }
    }

    static void Movmskps(Cpu c, ref Op op)
    {
        Check(c);
        c.Regs.Gpr[op.R1] = (uint)HostSse.MoveMask(c.Fpu.Xmm[op.R2].AsSingle());
    }

    static void Movmskpd(Cpu c, ref Op op)
    {
        Check(c);
        c.Regs.Gpr[op.R1] = (uint)System.Runtime.Intrinsics.X86.Sse2.MoveMask(c.Fpu.Xmm[op.R2].AsDouble());
    }

    static void Pmovmskb(Cpu c, ref Op op)
    {
        Check(c);
        c.Regs.Gpr[op.R1] = (uint)System.Runtime.Intrinsics.X86.Sse2.MoveMask(c.Fpu.Xmm[op.R2]);
    }

    static void Pextrw(Cpu c, ref Op op)
    {
        Check(c);
        c.Regs.Gpr[op.R1] = c.Fpu.Xmm[op.R2].AsUInt16().GetElement((int)(op.Imm & 7));
    }

    static void Pinsrw(Cpu c, ref Op op)
    {
        Check(c);
        ushort v = (op.Aux & MemSrc) != 0 ? c.Read16(op.Linear(c)) : (ushort)c.Regs.Gpr[op.R2];
        c.Fpu.Xmm[op.R1] = c.Fpu.Xmm[op.R1].AsUInt16().WithElement((int)(op.Imm & 7), v).AsByte();
    }

    // ------------------------------------------------------------------ floating point

    /// <summary>
    /// Records SIMD floating-point exception flags: an unmasked one raises #XM (or #UD when
    /// CR4.OSXMMEXCPT is clear) with the destination unchanged (SDM Vol. 1 11.5.1, 11.5.3);
    /// unmasked pre-computation exceptions (IE, DE, ZE) suppress the post-computation ones.
    /// </summary>
    static void Commit(Cpu c, uint flags)
    {
        uint mx = c.Fpu.Mxcsr;
        uint unmasked = flags & ~(mx >> 7) & 0x3F;
        if (unmasked == 0)
        {
            c.Fpu.Mxcsr = mx | flags;
            return;
        }
        const uint pre = SseFloat.IE | SseFloat.DE | SseFloat.ZE;
        c.Fpu.Mxcsr = mx | ((unmasked & pre) != 0 ? flags & pre : flags);
        if ((c.Cr4Value & X86.Cr4.OSXMMEXCPT) == 0)
        {
            throw c.InvalidOpcode();
        }
        throw c.Fault(Vector.XM);
    }

    /// <summary>One floating-point operation on an element pair (destination, source).</summary>
    public interface IFpOp
    {
        static abstract T Apply<T>(T a, T b, uint mx, ref uint flags) where T : IBinaryFloatingPointIeee754<T>, IRootFunctions<T>;
    }

#pragma warning disable CS1591
    public struct FAdd : IFpOp { public static T Apply<T>(T a, T b, uint mx, ref uint f) where T : IBinaryFloatingPointIeee754<T>, IRootFunctions<T> => SseFloat.Add(a, b, mx, ref f); }
    public struct FSub : IFpOp { public static T Apply<T>(T a, T b, uint mx, ref uint f) where T : IBinaryFloatingPointIeee754<T>, IRootFunctions<T> => SseFloat.Sub(a, b, mx, ref f); }
    public struct FMul : IFpOp { public static T Apply<T>(T a, T b, uint mx, ref uint f) where T : IBinaryFloatingPointIeee754<T>, IRootFunctions<T> => SseFloat.Mul(a, b, mx, ref f); }
    public struct FDiv : IFpOp { public static T Apply<T>(T a, T b, uint mx, ref uint f) where T : IBinaryFloatingPointIeee754<T>, IRootFunctions<T> => SseFloat.Div(a, b, mx, ref f); }
    public struct FMin : IFpOp { public static T Apply<T>(T a, T b, uint mx, ref uint f) where T : IBinaryFloatingPointIeee754<T>, IRootFunctions<T> => SseFloat.MinMax(a, b, false, mx, ref f); }
    public struct FMax : IFpOp { public static T Apply<T>(T a, T b, uint mx, ref uint f) where T : IBinaryFloatingPointIeee754<T>, IRootFunctions<T> => SseFloat.MinMax(a, b, true, mx, ref f); }
    public struct FSqrt : IFpOp { public static T Apply<T>(T a, T b, uint mx, ref uint f) where T : IBinaryFloatingPointIeee754<T>, IRootFunctions<T> => SseFloat.Sqrt(b, mx, ref f); }
#pragma warning restore CS1591

    static bool BindFp(in Instruction ins, ref Op op)
    {
        if (!Prep(ins, ref op))
        {
            return false;
        }
        op.Sub = (byte)op.Imm;
        op.Exec = ins.Mnemonic switch
        {
            Mnemonic.Addps => &Packed<FAdd, float>,
            Mnemonic.Addpd => &Packed<FAdd, double>,
            Mnemonic.Addss => &Scalar<FAdd, float>,
            Mnemonic.Addsd => &Scalar<FAdd, double>,
            Mnemonic.Subps => &Packed<FSub, float>,
            Mnemonic.Subpd => &Packed<FSub, double>,
            Mnemonic.Subss => &Scalar<FSub, float>,
            Mnemonic.Subsd => &Scalar<FSub, double>,
            Mnemonic.Mulps => &Packed<FMul, float>,
            Mnemonic.Mulpd => &Packed<FMul, double>,
            Mnemonic.Mulss => &Scalar<FMul, float>,
            Mnemonic.Mulsd => &Scalar<FMul, double>,
            Mnemonic.Divps => &Packed<FDiv, float>,
            Mnemonic.Divpd => &Packed<FDiv, double>,
            Mnemonic.Divss => &Scalar<FDiv, float>,
            Mnemonic.Divsd => &Scalar<FDiv, double>,
            Mnemonic.Minps => &Packed<FMin, float>,
            Mnemonic.Minpd => &Packed<FMin, double>,
            Mnemonic.Minss => &Scalar<FMin, float>,
            Mnemonic.Minsd => &Scalar<FMin, double>,
            Mnemonic.Maxps => &Packed<FMax, float>,
            Mnemonic.Maxpd => &Packed<FMax, double>,
            Mnemonic.Maxss => &Scalar<FMax, float>,
            Mnemonic.Maxsd => &Scalar<FMax, double>,
            Mnemonic.Sqrtps => &Packed<FSqrt, float>,
            Mnemonic.Sqrtpd => &Packed<FSqrt, double>,
            Mnemonic.Sqrtss => &Scalar<FSqrt, float>,
            Mnemonic.Sqrtsd => &Scalar<FSqrt, double>,
            Mnemonic.Cmpps => &ComparePacked<float>,
            Mnemonic.Cmppd => &ComparePacked<double>,
            Mnemonic.Cmpss => &CompareScalar<float>,
            Mnemonic.Comiss => &Comis<float>,
            Mnemonic.Ucomiss => &Comis<float>,
            Mnemonic.Comisd => &Comis<double>,
            Mnemonic.Ucomisd => &Comis<double>,
            Mnemonic.Rcpps => &Approx,
            Mnemonic.Rcpss => &Approx,
            Mnemonic.Rsqrtps => &Approx,
            Mnemonic.Rsqrtss => &Approx,
            _ => null,
        };
        if (ins.Mnemonic is Mnemonic.Comiss or Mnemonic.Comisd)
        {
            op.Sub = 1; // signalling compare
        }
        if (ins.Mnemonic is Mnemonic.Rcpps or Mnemonic.Rcpss or Mnemonic.Rsqrtps or Mnemonic.Rsqrtss)
        {
            op.Sub = (byte)(ins.Mnemonic switch { Mnemonic.Rcpps => 0, Mnemonic.Rcpss => 1, Mnemonic.Rsqrtps => 2, _ => 3 });
        }
        if (ins.Mnemonic is Mnemonic.Cmpps or Mnemonic.Cmppd or Mnemonic.Cmpss)
        {
            op.Sub &= 7; // legacy encodings use imm8[2:0] only (predicates 8-31 are VEX-only)
        }
        return op.Exec != null;
    }

    /// <summary>SSE2 CMPSD xmm, xmm/m64, imm8 (forwarded here when the string family owns the mnemonic).</summary>
    public static bool BindCmpsd(in Instruction ins, ref Op op)
    {
        if (ins.Code != Code.Cmpsd_xmm_xmmm64_imm8 || !Prep(ins, ref op))
        {
            return false;
        }
        op.Sub = (byte)(op.Imm & 7);
        op.Exec = &CompareScalar<double>;
        return true;
    }

    static void Packed<TOp, T>(Cpu c, ref Op op) where TOp : IFpOp where T : struct, IBinaryFloatingPointIeee754<T>, IRootFunctions<T>
    {
        Check(c);
        var s = Src(c, ref op).As<byte, T>();
        var d = c.Fpu.Xmm[op.R1].As<byte, T>();
        uint mx = c.Fpu.Mxcsr, flags = 0;
        var r = d;
        for (int i = 0; i < Vector128<T>.Count; i++)
        {
            r = r.WithElement(i, TOp.Apply(d.GetElement(i), s.GetElement(i), mx, ref flags));
        }
        Commit(c, flags);
        c.Fpu.Xmm[op.R1] = r.AsByte();
    }

    static void Scalar<TOp, T>(Cpu c, ref Op op) where TOp : IFpOp where T : struct, IBinaryFloatingPointIeee754<T>, IRootFunctions<T>
    {
        Check(c);
        var s = Src(c, ref op).As<byte, T>();
        var d = c.Fpu.Xmm[op.R1].As<byte, T>();
        uint flags = 0;
        T r = TOp.Apply(d.GetElement(0), s.GetElement(0), c.Fpu.Mxcsr, ref flags);
        Commit(c, flags);
        c.Fpu.Xmm[op.R1] = d.WithElement(0, r).AsByte();
    }

    static Vector128<byte> CompareMask<T>(Vector128<T> d, Vector128<T> s, int n, int predicate, uint mx, ref uint flags)
        where T : struct, IBinaryFloatingPointIeee754<T>
    {
        var r = d.AsByte();
        for (int i = 0; i < n; i++)
        {
            bool t = SseFloat.Compare(d.GetElement(i), s.GetElement(i), predicate, mx, ref flags);
            r = typeof(T) == typeof(double)
                ? r.AsUInt64().WithElement(i, t ? ulong.MaxValue : 0).AsByte()
                : r.AsUInt32().WithElement(i, t ? uint.MaxValue : 0).AsByte();
        }
        return r;
    }

    static void ComparePacked<T>(Cpu c, ref Op op) where T : struct, IBinaryFloatingPointIeee754<T>
    {
        Check(c);
        var s = Src(c, ref op).As<byte, T>();
        var d = c.Fpu.Xmm[op.R1].As<byte, T>();
        uint flags = 0;
        var r = CompareMask(d, s, Vector128<T>.Count, op.Sub, c.Fpu.Mxcsr, ref flags);
        Commit(c, flags);
        c.Fpu.Xmm[op.R1] = r;
    }

    static void CompareScalar<T>(Cpu c, ref Op op) where T : struct, IBinaryFloatingPointIeee754<T>
    {
        Check(c);
        var s = Src(c, ref op).As<byte, T>();
        var d = c.Fpu.Xmm[op.R1].As<byte, T>();
        uint flags = 0;
        var r = CompareMask(d, s, 1, op.Sub, c.Fpu.Mxcsr, ref flags);
        Commit(c, flags);
        c.Fpu.Xmm[op.R1] = r;
    }

    /// <summary>COMIS*/UCOMIS*: ZF, PF, CF from the comparison; OF, SF, AF cleared.</summary>
    static void Comis<T>(Cpu c, ref Op op) where T : struct, IBinaryFloatingPointIeee754<T>
    {
        Check(c);
        var s = Src(c, ref op).As<byte, T>();
        var d = c.Fpu.Xmm[op.R1].As<byte, T>();
        uint flags = 0;
        ulong f = SseFloat.CompareFlags(d.GetElement(0), s.GetElement(0), op.Sub != 0, c.Fpu.Mxcsr, ref flags);
        Commit(c, flags);
        c.SetArithFlags(f);
    }

    /// <summary>
    /// RCPPS/RCPSS/RSQRTPS/RSQRTSS: the SDM only bounds the relative error (|err| ≤ 1.5 * 2^-12)
    /// and Intel and AMD tables differ; we return the correctly rounded single-precision value,
    /// which is within the bound. Denormal inputs count as zero (→ ±inf), tiny results flush to
    /// ±0, no MXCSR flags (SDM Vol. 2B RCPPS).
    /// </summary>
    static void Approx(Cpu c, ref Op op)
    {
        Check(c);
        var s = Src(c, ref op).AsSingle();
        var d = c.Fpu.Xmm[op.R1].AsSingle();
        bool rsqrt = op.Sub >= 2;
        int n = (op.Sub & 1) != 0 ? 1 : 4;
        var r = d;
        for (int i = 0; i < n; i++)
        {
            r = r.WithElement(i, ApproxOne(s.GetElement(i), rsqrt));
        }
        c.Fpu.Xmm[op.R1] = r.AsByte();
    }

    static float ApproxOne(float x, bool rsqrt)
    {
        if (float.IsNaN(x))
        {
            return SseFloat.Quiet(x);
        }
        if (x == 0 || float.IsSubnormal(x))
        {
            return float.IsNegative(x) ? float.NegativeInfinity : float.PositiveInfinity;
        }
        if (rsqrt)
        {
            if (x < 0)
            {
                return SseFloat.Indefinite<float>();
            }
            return float.IsInfinity(x) ? 0f : (float)(1.0 / Math.Sqrt(x));
        }
        float r = (float)(1.0 / x);
        return float.IsSubnormal(r) ? (r < 0 ? -0f : 0f) : r;
    }

    // ------------------------------------------------------------------ conversions

    static bool BindCvt(in Instruction ins, ref Op op)
    {
        if (!Prep(ins, ref op))
        {
            return false;
        }
        switch (ins.Mnemonic)
        {
            case Mnemonic.Cvtsi2ss:
            case Mnemonic.Cvtsi2sd:
                op.Sub = (byte)(ins.Op1Kind == OpKind.Memory ? (int)op.Imm2 : ins.Op1Register.GetSize());
                op.Exec = ins.Mnemonic == Mnemonic.Cvtsi2ss ? &CvtSi2S<float> : &CvtSi2S<double>;
                return true;
            case Mnemonic.Cvtss2si:
            case Mnemonic.Cvttss2si:
                op.Sub = (byte)(ins.Mnemonic == Mnemonic.Cvttss2si ? 1 : 0);
                op.Exec = op.Size == 8 ? &CvtS2Si<float, S64> : &CvtS2Si<float, S32>;
                return true;
            case Mnemonic.Cvtsd2si:
            case Mnemonic.Cvttsd2si:
                op.Sub = (byte)(ins.Mnemonic == Mnemonic.Cvttsd2si ? 1 : 0);
                op.Exec = op.Size == 8 ? &CvtS2Si<double, S64> : &CvtS2Si<double, S32>;
                return true;
            case Mnemonic.Cvtss2sd: op.Exec = &Cvtss2sd; return true;
            case Mnemonic.Cvtsd2ss: op.Exec = &Cvtsd2ss; return true;
            case Mnemonic.Cvtps2pd: op.Exec = &Cvtps2pd; return true;
            case Mnemonic.Cvtpd2ps: op.Exec = &Cvtpd2ps; return true;
            case Mnemonic.Cvtdq2ps: op.Exec = &Cvtdq2ps; return true;
            case Mnemonic.Cvtdq2pd: op.Exec = &Cvtdq2pd; return true;
            case Mnemonic.Cvtps2dq: op.Exec = &Cvtps2dq; return true;
            case Mnemonic.Cvttps2dq: op.Sub = 1; op.Exec = &Cvtps2dq; return true;
            case Mnemonic.Cvtpd2dq: op.Exec = &Cvtpd2dq; return true;
            case Mnemonic.Cvttpd2dq: op.Sub = 1; op.Exec = &Cvtpd2dq; return true;
            default: return false;
        }
    }

    static void CvtSi2S<T>(Cpu c, ref Op op) where T : struct, IBinaryFloatingPointIeee754<T>
    {
        Check(c);
        long v;
        if ((op.Aux & MemSrc) != 0)
        {
            ulong la = op.Linear(c);
            v = op.Sub == 8 ? (long)c.Read64(la) : (int)c.Read32(la);
        }
        else
        {
            v = op.Sub == 8 ? (long)c.Regs.Gpr[op.R2] : (int)c.Regs.Gpr[op.R2];
        }
        uint flags = 0;
        T r = SseFloat.FromInt<T>(v, c.Fpu.Mxcsr, ref flags);
        Commit(c, flags);
        c.Fpu.Xmm[op.R1] = c.Fpu.Xmm[op.R1].As<byte, T>().WithElement(0, r).AsByte();
    }

    static void CvtS2Si<T, S>(Cpu c, ref Op op) where T : struct, IBinaryFloatingPointIeee754<T> where S : IOpSize
    {
        Check(c);
        T v = Src(c, ref op).As<byte, T>().GetElement(0);
        uint flags = 0;
        long r = SseFloat.ToInt(v, op.Sub != 0, S.Bits == 64, c.Fpu.Mxcsr, ref flags);
        Commit(c, flags);
        S.SetReg(c, op.R1, (ulong)r);
    }

    static void Cvtss2sd(Cpu c, ref Op op)
    {
        Check(c);
        float v = Src(c, ref op).AsSingle().GetElement(0);
        uint flags = 0;
        double r = SseFloat.ToDouble(v, c.Fpu.Mxcsr, ref flags);
        Commit(c, flags);
        c.Fpu.Xmm[op.R1] = c.Fpu.Xmm[op.R1].AsDouble().WithElement(0, r).AsByte();
    }

    static void Cvtsd2ss(Cpu c, ref Op op)
    {
        Check(c);
        double v = Src(c, ref op).AsDouble().GetElement(0);
        uint flags = 0;
        float r = SseFloat.ToSingle(v, c.Fpu.Mxcsr, ref flags);
        Commit(c, flags);
        c.Fpu.Xmm[op.R1] = c.Fpu.Xmm[op.R1].AsSingle().WithElement(0, r).AsByte();
    }

    static void Cvtps2pd(Cpu c, ref Op op)
    {
        Check(c);
        var s = Src(c, ref op).AsSingle();
        uint mx = c.Fpu.Mxcsr, flags = 0;
        var r = Vector128.Create(SseFloat.ToDouble(s.GetElement(0), mx, ref flags), SseFloat.ToDouble(s.GetElement(1), mx, ref flags));
        Commit(c, flags);
        c.Fpu.Xmm[op.R1] = r.AsByte();
    }

    static void Cvtpd2ps(Cpu c, ref Op op)
    {
        Check(c);
        var s = Src(c, ref op).AsDouble();
        uint mx = c.Fpu.Mxcsr, flags = 0;
        var r = Vector128.Create(SseFloat.ToSingle(s.GetElement(0), mx, ref flags), SseFloat.ToSingle(s.GetElement(1), mx, ref flags), 0f, 0f);
        Commit(c, flags);
        c.Fpu.Xmm[op.R1] = r.AsByte();
    }

    static void Cvtdq2ps(Cpu c, ref Op op)
    {
        Check(c);
        var s = Src(c, ref op).AsInt32();
        uint mx = c.Fpu.Mxcsr, flags = 0;
        var r = Vector128<float>.Zero;
        for (int i = 0; i < 4; i++)
        {
            r = r.WithElement(i, SseFloat.FromInt<float>(s.GetElement(i), mx, ref flags));
        }
        Commit(c, flags);
        c.Fpu.Xmm[op.R1] = r.AsByte();
    }

    static void Cvtdq2pd(Cpu c, ref Op op)
    {
        Check(c);
        var s = Src(c, ref op).AsInt32();
        c.Fpu.Xmm[op.R1] = Vector128.Create((double)s.GetElement(0), s.GetElement(1)).AsByte(); // exact
    }

    static void Cvtps2dq(Cpu c, ref Op op)
    {
        Check(c);
        var s = Src(c, ref op).AsSingle();
        uint mx = c.Fpu.Mxcsr, flags = 0;
        var r = Vector128<int>.Zero;
        for (int i = 0; i < 4; i++)
        {
            r = r.WithElement(i, (int)SseFloat.ToInt(s.GetElement(i), op.Sub != 0, false, mx, ref flags));
        }
        Commit(c, flags);
        c.Fpu.Xmm[op.R1] = r.AsByte();
    }

    static void Cvtpd2dq(Cpu c, ref Op op)
    {
        Check(c);
        var s = Src(c, ref op).AsDouble();
        uint mx = c.Fpu.Mxcsr, flags = 0;
        int a = (int)SseFloat.ToInt(s.GetElement(0), op.Sub != 0, false, mx, ref flags);
        int b = (int)SseFloat.ToInt(s.GetElement(1), op.Sub != 0, false, mx, ref flags);
        Commit(c, flags);
        c.Fpu.Xmm[op.R1] = Vector128.Create(a, b, 0, 0).AsByte();
    }

    // ------------------------------------------------------------------ MXCSR, FXSAVE/FXRSTOR

    /// <summary>MXCSR bits this CPU implements (DAZ included): MXCSR_MASK as FXSAVE reports it.</summary>
    public const uint MxcsrMask = 0xFFFF;

    static bool BindMxcsr(in Instruction ins, ref Op op)
    {
        if (ins.Op0Kind != OpKind.Memory)
        {
            return false;
        }
        op.Exec = ins.Mnemonic == Mnemonic.Ldmxcsr ? &Ldmxcsr : &Stmxcsr;
        return true;
    }

    static void Ldmxcsr(Cpu c, ref Op op)
    {
        Check(c);
        uint v = c.Read32(op.Linear(c));
        if ((v & ~MxcsrMask) != 0)
        {
            throw c.GeneralProtection(0); // reserved bits (SDM Vol. 2A LDMXCSR)
        }
        c.Fpu.Mxcsr = v;
    }

    static void Stmxcsr(Cpu c, ref Op op)
    {
        Check(c);
        c.Write32(op.Linear(c), c.Fpu.Mxcsr);
    }

    static bool BindFxsave(in Instruction ins, ref Op op)
    {
        if (ins.Op0Kind != OpKind.Memory)
        {
            return false;
        }
        op.Sub = (byte)(ins.Mnemonic is Mnemonic.Fxsave64 or Mnemonic.Fxrstor64 ? 1 : 0);
        op.Exec = ins.Mnemonic is Mnemonic.Fxsave or Mnemonic.Fxsave64 ? &Fxsave : &Fxrstor;
        return true;
    }

    /// <summary>FXSAVE/FXRSTOR: CR0.EM or CR0.TS → #NM (SDM Vol. 2A FXSAVE "Protected Mode Exceptions").</summary>
    static void CheckFx(Cpu c, ulong la)
    {
        if ((c.Cr0Value & (X86.Cr0.EM | X86.Cr0.TS)) != 0)
        {
            throw c.Fault(Vector.NM);
        }
        // With alignment checks active the host raises #AC below 4-byte alignment and #GP above it
        // (SDM Vol. 2A FXSAVE: "the width of the alignment check may also vary with implementation").
        c.CheckAlignment(la, 4);
        if ((la & 15) != 0)
        {
            throw c.GeneralProtection(0);
        }
    }

    /// <summary>Number of XMM registers in the image: 16 in 64-bit mode, 8 elsewhere (SDM Vol. 1 10.5.1).</summary>
    static int FxXmmCount(Cpu c) => c.Mode == CpuMode.Long64 ? 16 : 8;

    /// <summary>
    /// FXSAVE (SDM Vol. 1 Table 10-2/10-3): FCW, FSW, abridged FTW (bit per physical register, 1 =
    /// not empty), FOP, FIP/FDP (64-bit with REX.W, else 32-bit offset + selector), MXCSR,
    /// MXCSR_MASK, ST0-ST7 in stack order (10 bytes each in 16-byte slots), XMM registers.
    /// Bytes 464-511 are left untouched (available to software).
    /// </summary>
    static void Fxsave(Cpu c, ref Op op)
    {
        ulong la = op.Linear(c);
        CheckFx(c, la);
        var f = c.Fpu;
        // Probe the whole area for writability first: a #PF must leave memory untouched.
        for (ulong p = la; p < la + 512; p += 4096)
        {
            c.Translate(p, Access.Write, c.Cpl == 3);
        }
        c.Translate(la + 511, Access.Write, c.Cpl == 3);
        byte abridged = 0;
        for (int i = 0; i < 8; i++)
        {
            if (((f.Tag >> (2 * i)) & 3) != 3)
            {
                abridged |= (byte)(1 << i);
            }
        }
        c.Write16(la, f.Control);
        c.Write16(la + 2, f.Status);
        c.Write8(la + 4, abridged);
        c.Write8(la + 5, 0);
        c.Write16(la + 6, f.LastOpcode);
        if (op.Sub != 0)
        {
            c.Write64(la + 8, f.LastIp);
            c.Write64(la + 16, f.LastDp);
        }
        else
        {
            c.Write32(la + 8, (uint)f.LastIp);
            c.Write32(la + 12, f.LastCs);
            c.Write32(la + 16, (uint)f.LastDp);
            c.Write32(la + 20, f.LastDs);
        }
        c.Write32(la + 24, f.Mxcsr);
        c.Write32(la + 28, MxcsrMask);
        for (int i = 0; i < 8; i++)
        {
            int phys = (f.Top + i) & 7;
            ulong at = la + 32 + (ulong)(16 * i);
            c.Write64(at, f.Mantissa[phys]);
            c.Write16(at + 8, f.SignExp[phys]);
            c.Write16(at + 10, 0);
            c.Write32(at + 12, 0);
        }
        int n = FxXmmCount(c);
        for (int i = 0; i < n; i++)
        {
            var q = f.Xmm[i].AsUInt64();
            c.Write64(la + 160 + (ulong)(16 * i), q.GetElement(0));
            c.Write64(la + 168 + (ulong)(16 * i), q.GetElement(1));
        }
    }

    /// <summary>FXRSTOR: reserved MXCSR bits → #GP(0); the full tag word is rebuilt from the abridged one and the register contents.</summary>
    static void Fxrstor(Cpu c, ref Op op)
    {
        ulong la = op.Linear(c);
        CheckFx(c, la);
        var f = c.Fpu;
        uint mxcsr = c.Read32(la + 24);
        if ((mxcsr & ~MxcsrMask) != 0)
        {
            throw c.GeneralProtection(0);
        }
        // Read everything before changing any state (a #PF mid-way must leave the state intact).
        ushort fcw = c.Read16(la), fsw = c.Read16(la + 2), fop = c.Read16(la + 6);
        byte abridged = c.Read8(la + 4);
        ulong fip, fdp;
        ushort fcs = f.LastCs, fds = f.LastDs;
        if (op.Sub != 0)
        {
            fip = c.Read64(la + 8);
            fdp = c.Read64(la + 16);
        }
        else
        {
            fip = c.Read32(la + 8);
            fcs = c.Read16(la + 12);
            fdp = c.Read32(la + 16);
            fds = c.Read16(la + 20);
        }
        Span<ulong> mant = stackalloc ulong[8];
        Span<ushort> se = stackalloc ushort[8];
        for (int i = 0; i < 8; i++)
        {
            mant[i] = c.Read64(la + 32 + (ulong)(16 * i));
            se[i] = c.Read16(la + 40 + (ulong)(16 * i));
        }
        int n = FxXmmCount(c);
        Span<ulong> xmm = stackalloc ulong[32];
        for (int i = 0; i < 2 * n; i++)
        {
            xmm[i] = c.Read64(la + 160 + (ulong)(8 * i));
        }
        f.Control = fcw;
        f.Status = fsw;
        f.LastOpcode = (ushort)(fop & 0x7FF);
        f.LastIp = fip;
        f.LastDp = fdp;
        f.LastCs = fcs;
        f.LastDs = fds;
        f.Mxcsr = mxcsr;
        int top = (fsw >> 11) & 7;
        ushort tag = 0;
        for (int i = 0; i < 8; i++)
        {
            int phys = (top + i) & 7;
            f.Mantissa[phys] = mant[i];
            f.SignExp[phys] = se[i];
        }
        for (int phys = 0; phys < 8; phys++)
        {
            int t;
            if ((abridged & (1 << phys)) == 0)
            {
                t = 3; // empty
            }
            else
            {
                int exp = f.SignExp[phys] & 0x7FFF;
                ulong m = f.Mantissa[phys];
                t = exp == 0x7FFF ? 2 : exp == 0 ? (m == 0 ? 1 : 2) : (m >> 63) == 0 ? 2 : 0;
            }
            tag |= (ushort)(t << (2 * phys));
        }
        f.Tag = tag;
        for (int i = 0; i < n; i++)
        {
            f.Xmm[i] = Vector128.Create(xmm[2 * i], xmm[2 * i + 1]).AsByte();
        }
    }
}
