using System.Runtime.Intrinsics;
using Iced.Intel;
using SharpVisor.Cpu.X86.Decode;
using SharpVisor.Cpu.X86.Simd;
using IcedReg = Iced.Intel.Register;

namespace SharpVisor.Cpu.X86.Semantics;

/// <summary>
/// MMX (SDM Vol. 1 ch. 9) and the SSE/SSE2 instructions on MMX registers. MM0-MM7 are the
/// significands of the PHYSICAL x87 registers R0-R7 (SDM Vol. 1 9.5). Every MMX instruction
/// except EMMS sets TOP to 0 and all tags to valid; a write to MMi also sets R[i]'s sign and
/// exponent bits to all ones; EMMS marks all registers empty.
/// </summary>
/// <remarks>
/// Op fields: R1 = MM/XMM index (or GPR slot) of operand 0, R2 = index of the register source
/// (or GPR slot), Aux bit 0 = memory source, Imm = imm8, Sub = <see cref="UnpackHigh"/> /
/// <see cref="Pack"/> adjustments for running the 128-bit lane operation on 64-bit values.
/// </remarks>
public static unsafe partial class Sse
{
    const byte UnpackHigh = 1, Pack = 2;

    static bool IsMmxForm(in Instruction ins)
    {
        for (int i = 0; i < ins.OpCount; i++)
        {
            if (ins.GetOpKind(i) == OpKind.Register && IsMmx(ins.GetOpRegister(i)))
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>MMX state checks (SDM Vol. 2 MMX instruction exceptions): EM → #UD, TS → #NM, pending x87 exception → #MF.</summary>
    static void CheckMmx(Cpu c)
    {
        if ((c.Cr0Value & X86.Cr0.EM) != 0)
        {
            throw c.InvalidOpcode();
        }
        if ((c.Cr0Value & X86.Cr0.TS) != 0)
        {
            throw c.Fault(Vector.NM);
        }
        if ((c.Fpu.Status & 0x80) != 0)
        {
            throw c.Fault(Vector.MF);
        }
    }

    /// <summary>The x87 side effect of an MMX instruction: TOP = 0, all tags valid.</summary>
    static void MmxEnter(Cpu c)
    {
        c.Fpu.Top = 0;
        c.Fpu.Tag = 0;
    }

    static void SetMm(Cpu c, int i, ulong v)
    {
        c.Fpu.Mantissa[i] = v;
        c.Fpu.SignExp[i] = 0xFFFF;
    }

    static int MmIndex(IcedReg r) => r - IcedReg.MM0;

    static bool PrepMmx(in Instruction ins, ref Op op)
    {
        bool haveSrc = false;
        for (int i = 0; i < ins.OpCount; i++)
        {
            var kind = ins.GetOpKind(i);
            if (kind == OpKind.Register)
            {
                var r = ins.GetOpRegister(i);
                int idx = IsMmx(r) ? MmIndex(r) : r.IsXMM() ? XmmIndex(r) : -1;
                if (idx < 0)
                {
                    continue; // a GPR: the binder already put its slot in R1/R2
                }
                if (i == 0)
                {
                    op.R1 = (byte)idx;
                }
                else if (!haveSrc)
                {
                    op.R2 = (byte)idx;
                    haveSrc = true;
                }
            }
            else if (kind == OpKind.Memory)
            {
                op.Imm2 = (uint)ins.MemorySize.GetSize();
                if (i > 0)
                {
                    op.Aux |= MemSrc;
                }
            }
        }
        op.Imm &= 0xFF;
        return true;
    }

    static bool BindMmx(in Instruction ins, ref Op op)
    {
        if (!PrepMmx(ins, ref op))
        {
            return false;
        }
        var m = ins.Mnemonic;
        switch ((Code)op.Code)
        {
            case Code.Movd_mm_rm32:
            case Code.Movq_mm_rm64:
                op.Sub = (byte)(ins.Code == Code.Movd_mm_rm32 ? 4 : 8);
                op.Exec = &MmFromGprOrMem;
                return true;
            case Code.Movd_rm32_mm:
            case Code.Movq_rm64_mm:
            case Code.Movq_mmm64_mm:
            case Code.Movntq_m64_mm:
                op.Sub = (byte)(ins.Code == Code.Movd_rm32_mm ? 4 : 8);
                if (ins.Op0Kind != OpKind.Memory && ins.Code == Code.Movq_mmm64_mm)
                {
                    (op.R1, op.R2) = ((byte)MmIndex(ins.Op0Register), (byte)MmIndex(ins.Op1Register));
                    op.Exec = &MmxOp<Mov>;
                    return true;
                }
                op.Exec = &MmToGprOrMem;
                return true;
            case Code.Movq_mm_mmm64:
                op.Exec = &MmxOp<Mov>;
                return true;
            case Code.Movq2dq_xmm_mm:
                op.Exec = &Movq2dq;
                return true;
            case Code.Movdq2q_mm_xmm:
                op.Exec = &Movdq2q;
                return true;
            case Code.Pmovmskb_r32_mm:
            case Code.Pmovmskb_r64_mm:
                op.Exec = &PmovmskbMm;
                return true;
            case Code.Pextrw_r32_mm_imm8:
            case Code.Pextrw_r64_mm_imm8:
                op.Exec = &PextrwMm;
                return true;
            case Code.Pinsrw_mm_r32m16_imm8:
            case Code.Pinsrw_mm_r64m16_imm8:
                op.Exec = &PinsrwMm;
                return true;
            case Code.Pshufw_mm_mmm64_imm8:
                op.Exec = &MmxOp<Pshuflw>;
                return true;
            case Code.Maskmovq_rDI_mm_mm:
                if (!BindMaskmovdqu(ins, ref op))
                {
                    return false;
                }
                op.R1 = (byte)MmIndex(ins.Op1Register);
                op.R2 = (byte)MmIndex(ins.Op2Register);
                op.Exec = &Maskmovq;
                return true;
        }
        if (ins.OpCount == 2 && ins.Op1Kind == OpKind.Immediate8)
        {
            op.Exec = m switch
            {
                Mnemonic.Psllw => &MmxImm<Psllw>,
                Mnemonic.Pslld => &MmxImm<Pslld>,
                Mnemonic.Psllq => &MmxImm<Psllq>,
                Mnemonic.Psrlw => &MmxImm<Psrlw>,
                Mnemonic.Psrld => &MmxImm<Psrld>,
                Mnemonic.Psrlq => &MmxImm<Psrlq>,
                Mnemonic.Psraw => &MmxImm<Psraw>,
                Mnemonic.Psrad => &MmxImm<Psrad>,
                _ => null,
            };
            return op.Exec != null;
        }
        if (m is Mnemonic.Punpckhbw or Mnemonic.Punpckhwd or Mnemonic.Punpckhdq)
        {
            op.Sub = UnpackHigh;
        }
        if (m is Mnemonic.Packsswb or Mnemonic.Packssdw or Mnemonic.Packuswb)
        {
            op.Sub = Pack;
        }
        op.Exec = m switch
        {
            // The high unpacks are the low unpacks of the upper 32 bits.
            Mnemonic.Punpckhbw => &MmxOp<Punpcklbw>,
            Mnemonic.Punpckhwd => &MmxOp<Punpcklwd>,
            Mnemonic.Punpckhdq => &MmxOp<Punpckldq>,
            Mnemonic.Paddb or Mnemonic.Paddw or Mnemonic.Paddd or Mnemonic.Paddq or Mnemonic.Psubb or Mnemonic.Psubw or Mnemonic.Psubd or Mnemonic.Psubq
                or Mnemonic.Paddsb or Mnemonic.Paddsw or Mnemonic.Paddusb or Mnemonic.Paddusw or Mnemonic.Psubsb or Mnemonic.Psubsw or Mnemonic.Psubusb
                or Mnemonic.Psubusw or Mnemonic.Pmullw or Mnemonic.Pmulhw or Mnemonic.Pmulhuw or Mnemonic.Pmuludq or Mnemonic.Pmaddwd or Mnemonic.Psadbw
                or Mnemonic.Pavgb or Mnemonic.Pavgw or Mnemonic.Pminub or Mnemonic.Pmaxub or Mnemonic.Pminsw or Mnemonic.Pmaxsw or Mnemonic.Pcmpeqb
                or Mnemonic.Pcmpeqw or Mnemonic.Pcmpeqd or Mnemonic.Pcmpgtb or Mnemonic.Pcmpgtw or Mnemonic.Pcmpgtd or Mnemonic.Pand or Mnemonic.Pandn
                or Mnemonic.Por or Mnemonic.Pxor or Mnemonic.Packsswb or Mnemonic.Packssdw or Mnemonic.Packuswb or Mnemonic.Punpcklbw
                or Mnemonic.Punpcklwd or Mnemonic.Punpckldq or Mnemonic.Psllw or Mnemonic.Pslld or Mnemonic.Psllq or Mnemonic.Psrlw or Mnemonic.Psrld
                or Mnemonic.Psrlq or Mnemonic.Psraw or Mnemonic.Psrad => MmxVecHandler(m),
            _ => null,
        };
        return op.Exec != null;
    }

    static delegate*<Cpu, ref Op, void> MmxVecHandler(Mnemonic m) => m switch
    {
        Mnemonic.Paddb => &MmxOp<Paddb>,
        Mnemonic.Paddw => &MmxOp<Paddw>,
        Mnemonic.Paddd => &MmxOp<Paddd>,
        Mnemonic.Paddq => &MmxOp<Paddq>,
        Mnemonic.Psubb => &MmxOp<Psubb>,
        Mnemonic.Psubw => &MmxOp<Psubw>,
        Mnemonic.Psubd => &MmxOp<Psubd>,
        Mnemonic.Psubq => &MmxOp<Psubq>,
        Mnemonic.Paddsb => &MmxOp<Paddsb>,
        Mnemonic.Paddsw => &MmxOp<Paddsw>,
        Mnemonic.Paddusb => &MmxOp<Paddusb>,
        Mnemonic.Paddusw => &MmxOp<Paddusw>,
        Mnemonic.Psubsb => &MmxOp<Psubsb>,
        Mnemonic.Psubsw => &MmxOp<Psubsw>,
        Mnemonic.Psubusb => &MmxOp<Psubusb>,
        Mnemonic.Psubusw => &MmxOp<Psubusw>,
        Mnemonic.Pmullw => &MmxOp<Pmullw>,
        Mnemonic.Pmulhw => &MmxOp<Pmulhw>,
        Mnemonic.Pmulhuw => &MmxOp<Pmulhuw>,
        Mnemonic.Pmuludq => &MmxOp<Pmuludq>,
        Mnemonic.Pmaddwd => &MmxOp<Pmaddwd>,
        Mnemonic.Psadbw => &MmxOp<Psadbw>,
        Mnemonic.Pavgb => &MmxOp<Pavgb>,
        Mnemonic.Pavgw => &MmxOp<Pavgw>,
        Mnemonic.Pminub => &MmxOp<Pminub>,
        Mnemonic.Pmaxub => &MmxOp<Pmaxub>,
        Mnemonic.Pminsw => &MmxOp<Pminsw>,
        Mnemonic.Pmaxsw => &MmxOp<Pmaxsw>,
        Mnemonic.Pcmpeqb => &MmxOp<Pcmpeqb>,
        Mnemonic.Pcmpeqw => &MmxOp<Pcmpeqw>,
        Mnemonic.Pcmpeqd => &MmxOp<Pcmpeqd>,
        Mnemonic.Pcmpgtb => &MmxOp<Pcmpgtb>,
        Mnemonic.Pcmpgtw => &MmxOp<Pcmpgtw>,
        Mnemonic.Pcmpgtd => &MmxOp<Pcmpgtd>,
        Mnemonic.Pand => &MmxOp<Pand>,
        Mnemonic.Pandn => &MmxOp<Pandn>,
        Mnemonic.Por => &MmxOp<Por>,
        Mnemonic.Pxor => &MmxOp<Pxor>,
        Mnemonic.Packsswb => &MmxOp<Packsswb>,
        Mnemonic.Packssdw => &MmxOp<Packssdw>,
        Mnemonic.Packuswb => &MmxOp<Packuswb>,
        Mnemonic.Punpcklbw => &MmxOp<Punpcklbw>,
        Mnemonic.Punpcklwd => &MmxOp<Punpcklwd>,
        Mnemonic.Punpckldq => &MmxOp<Punpckldq>,
        Mnemonic.Psllw => &MmxOp<Psllw>,
        Mnemonic.Pslld => &MmxOp<Pslld>,
        Mnemonic.Psllq => &MmxOp<Psllq>,
        Mnemonic.Psrlw => &MmxOp<Psrlw>,
        Mnemonic.Psrld => &MmxOp<Psrld>,
        Mnemonic.Psrlq => &MmxOp<Psrlq>,
        Mnemonic.Psraw => &MmxOp<Psraw>,
        _ => &MmxOp<Psrad>,
    };

    /// <summary>The source operand: an MMX register, or 8 bytes of memory — 4 for PUNPCKLBW/WD/DQ mm, m32, which read only those (#PF, #AC).</summary>
    static ulong MmSrc(Cpu c, ref Op op) =>
        (op.Aux & MemSrc) == 0 ? c.Fpu.Mantissa[op.R2] : op.MemSize == 4 ? c.Read32(op.Linear(c)) : c.Read64(op.Linear(c));

    /// <summary>
    /// A 128-bit lane operation on 64-bit values: lane-wise operations give the MMX result in the
    /// low half; packs see [dst, src] as one register; high unpacks are low unpacks of bits 63:32.
    /// </summary>
    static void MmxOp<T>(Cpu c, ref Op op) where T : IVecOp
    {
        CheckMmx(c);
        ulong s = MmSrc(c, ref op);
        ulong d = c.Fpu.Mantissa[op.R1];
        Vector128<byte> r;
        if (op.Sub == Pack)
        {
            var both = Vector128.Create(d, s).AsByte();
            r = T.Apply(both, both, (byte)op.Imm);
        }
        else if (op.Sub == UnpackHigh)
        {
            r = T.Apply(Vector128.CreateScalar(d >> 32).AsByte(), Vector128.CreateScalar(s >> 32).AsByte(), (byte)op.Imm);
        }
        else
        {
            r = T.Apply(Vector128.CreateScalar(d).AsByte(), Vector128.CreateScalar(s).AsByte(), (byte)op.Imm);
        }
        MmxEnter(c);
        SetMm(c, op.R1, r.AsUInt64().GetElement(0));
    }

    static void MmxImm<T>(Cpu c, ref Op op) where T : IVecOp
    {
        CheckMmx(c);
        var r = T.Apply(Vector128.CreateScalar(c.Fpu.Mantissa[op.R1]).AsByte(), Vector128.CreateScalar(op.Imm).AsByte(), (byte)op.Imm);
        MmxEnter(c);
        SetMm(c, op.R1, r.AsUInt64().GetElement(0));
    }

    static void MmFromGprOrMem(Cpu c, ref Op op)
    {
        CheckMmx(c);
        ulong v = (op.Aux & MemSrc) != 0 ? (op.Sub == 4 ? c.Read32(op.Linear(c)) : c.Read64(op.Linear(c))) : c.Regs.Gpr[op.R2];
        MmxEnter(c);
        SetMm(c, op.R1, op.Sub == 4 ? (uint)v : v);
    }

    static void MmToGprOrMem(Cpu c, ref Op op)
    {
        CheckMmx(c);
        ulong v = c.Fpu.Mantissa[op.R2];
        if ((op.Flags & OpFlags.MemoryOperand) != 0)
        {
            if (op.Sub == 4)
            {
                c.Write32(op.Linear(c), (uint)v);
            }
            else
            {
                c.Write64(op.Linear(c), v);
            }
        }
        else
        {
            c.Regs.Gpr[op.R1] = op.Sub == 4 ? (uint)v : v;
        }
        MmxEnter(c);
    }

    static void Movq2dq(Cpu c, ref Op op)
    {
        Check(c);
        CheckMmx(c);
        ulong v = c.Fpu.Mantissa[op.R2];
        MmxEnter(c);
        c.Fpu.Xmm[op.R1] = Vector128.CreateScalar(v).AsByte();
    }

    static void Movdq2q(Cpu c, ref Op op)
    {
        Check(c);
        CheckMmx(c);
        ulong v = c.Fpu.Xmm[op.R2].AsUInt64().GetElement(0);
        MmxEnter(c);
        SetMm(c, op.R1, v);
    }

    static void PmovmskbMm(Cpu c, ref Op op)
    {
        CheckMmx(c);
        ulong v = c.Fpu.Mantissa[op.R2];
        MmxEnter(c);
        c.Regs.Gpr[op.R1] = (uint)System.Runtime.Intrinsics.X86.Sse2.MoveMask(Vector128.CreateScalar(v).AsByte()) & 0xFF;
    }

    static void PextrwMm(Cpu c, ref Op op)
    {
        CheckMmx(c);
        ulong v = c.Fpu.Mantissa[op.R2];
        MmxEnter(c);
        c.Regs.Gpr[op.R1] = (ushort)(v >> (16 * (int)(op.Imm & 3)));
    }

    static void PinsrwMm(Cpu c, ref Op op)
    {
        CheckMmx(c);
        ushort w = (op.Aux & MemSrc) != 0 ? c.Read16(op.Linear(c)) : (ushort)c.Regs.Gpr[op.R2];
        int sh = 16 * (int)(op.Imm & 3);
        ulong v = (c.Fpu.Mantissa[op.R1] & ~(0xFFFFUL << sh)) | ((ulong)w << sh);
        MmxEnter(c);
        SetMm(c, op.R1, v);
    }

    static void Maskmovq(Cpu c, ref Op op)
    {
        CheckMmx(c);
        ulong data = c.Fpu.Mantissa[op.R1], mask = c.Fpu.Mantissa[op.R2];
        ulong la = op.Linear(c);
        // #AC below 8-byte alignment and #PF before any byte is stored, even with a zero mask (as
        // MASKMOVDQU, and the host).
        c.CheckAlignment(la, 8);
        c.Translate(la, Access.Write, c.Cpl == 3);
        c.Translate(la + 7, Access.Write, c.Cpl == 3);
        for (int i = 0; i < 8; i++)
        {
            if (((mask >> (8 * i + 7)) & 1) != 0)
            {
                c.Write8(la + (ulong)i, (byte)(data >> (8 * i)));
            }
        }
        MmxEnter(c);
    }

    static bool BindEmms(in Instruction ins, ref Op op)
    {
        op.Exec = &Emms;
        return true;
    }

    /// <summary>EMMS: all x87 tags empty (SDM Vol. 2A EMMS).</summary>
    static void Emms(Cpu c, ref Op op)
    {
        CheckMmx(c);
        c.Fpu.Tag = 0xFFFF;
    }

    /// <summary>CVTPI2PS/PD, CVT[T]PS2PI, CVT[T]PD2PI: conversions between MMX and XMM registers.</summary>
    static bool BindCvtMmx(in Instruction ins, ref Op op)
    {
        if (!PrepMmx(ins, ref op))
        {
            return false;
        }
        if (op.Imm2 == 16)
        {
            op.Aux |= Aligned; // CVTPD2PI m128
        }
        op.Sub = (byte)(ins.Mnemonic is Mnemonic.Cvttps2pi or Mnemonic.Cvttpd2pi ? 1 : 0);
        op.Exec = ins.Mnemonic switch
        {
            Mnemonic.Cvtpi2ps => &Cvtpi2ps,
            Mnemonic.Cvtpi2pd => &Cvtpi2pd,
            Mnemonic.Cvtps2pi or Mnemonic.Cvttps2pi => &Cvtps2pi,
            _ => &Cvtpd2pi,
        };
        return true;
    }

    /// <summary>CVTPI2PS: two int32 to the low two floats (rounded by MXCSR.RC); an MM source is an MMX transition, a memory one is not.</summary>
    static void Cvtpi2ps(Cpu c, ref Op op)
    {
        Check(c);
        bool mm = (op.Aux & MemSrc) == 0;
        if (mm)
        {
            CheckMmx(c);
        }
        ulong s = MmSrc(c, ref op);
        uint mx = c.Fpu.Mxcsr, flags = 0;
        float a = SseFloat.FromInt<float>((int)s, mx, ref flags), b = SseFloat.FromInt<float>((int)(s >> 32), mx, ref flags);
        Commit(c, flags);
        if (mm)
        {
            MmxEnter(c);
        }
        c.Fpu.Xmm[op.R1] = c.Fpu.Xmm[op.R1].AsSingle().WithElement(0, a).WithElement(1, b).AsByte();
    }

    static void Cvtpi2pd(Cpu c, ref Op op)
    {
        Check(c);
        bool mm = (op.Aux & MemSrc) == 0;
        if (mm)
        {
            CheckMmx(c);
        }
        ulong s = MmSrc(c, ref op);
        if (mm)
        {
            MmxEnter(c);
        }
        c.Fpu.Xmm[op.R1] = Vector128.Create((double)(int)s, (int)(s >> 32)).AsByte(); // exact
    }

    static void Cvtps2pi(Cpu c, ref Op op)
    {
        Check(c);
        CheckMmx(c);
        var s = Src(c, ref op).AsSingle();
        uint mx = c.Fpu.Mxcsr, flags = 0;
        long a = SseFloat.ToInt(s.GetElement(0), op.Sub != 0, false, mx, ref flags);
        long b = SseFloat.ToInt(s.GetElement(1), op.Sub != 0, false, mx, ref flags);
        Commit(c, flags);
        MmxEnter(c);
        SetMm(c, op.R1, (uint)a | ((ulong)(uint)b << 32));
    }

    static void Cvtpd2pi(Cpu c, ref Op op)
    {
        Check(c);
        CheckMmx(c);
        var s = Src(c, ref op).AsDouble();
        uint mx = c.Fpu.Mxcsr, flags = 0;
        long a = SseFloat.ToInt(s.GetElement(0), op.Sub != 0, false, mx, ref flags);
        long b = SseFloat.ToInt(s.GetElement(1), op.Sub != 0, false, mx, ref flags);
        Commit(c, flags);
        MmxEnter(c);
        SetMm(c, op.R1, (uint)a | ((ulong)(uint)b << 32));
    }
}
