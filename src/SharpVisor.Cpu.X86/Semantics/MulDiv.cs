using System.Runtime.CompilerServices;
using Iced.Intel;
using SharpVisor.Cpu.X86.Decode;

namespace SharpVisor.Cpu.X86.Semantics;

/// <summary>
/// Multiply and divide: MUL, IMUL (one-, two- and three-operand forms), DIV, IDIV in every width
/// (SDM Vol. 2A/2B). MUL/IMUL set CF = OF = "the high half is significant"; SF, ZF, AF, PF are
/// undefined (we derive SF/ZF/PF from the low half, AF = 0). DIV/IDIV leave every flag undefined:
/// we leave them unchanged. A zero divisor or a quotient too large for the destination raises #DE
/// before any register changes.
/// </summary>
public static unsafe class MulDiv
{
    /// <summary>This family's rows of <see cref="InstructionTable"/>.</summary>
    internal static FormSpec[] Forms =>
    [
        new(Mnemonic.Mul, &BindOneOperand),
        new(Mnemonic.Imul, &BindImul),
        new(Mnemonic.Div, &BindOneOperand, FormTraits.MayFault), // #DE
        new(Mnemonic.Idiv, &BindOneOperand, FormTraits.MayFault),
    ];

    /// <summary>One-operand forms: the source is a register (R1) or memory; Sub = 0 MUL, 1 IMUL, 2 DIV, 3 IDIV.</summary>
    static bool BindOneOperand(in Instruction ins, ref Op op)
    {
        op.Sub = ins.Mnemonic switch { Mnemonic.Mul => 0, Mnemonic.Imul => 1, Mnemonic.Div => 2, _ => 3 };
        bool mem = ins.Op0Kind == OpKind.Memory;
        op.Exec = (op.Sub, mem) switch
        {
            (0, false) => Binder.BySize(op.Size, &MulR<S8>, &MulR<S16>, &MulR<S32>, &MulR<S64>),
            (0, true) => Binder.BySize(op.Size, &MulM<S8>, &MulM<S16>, &MulM<S32>, &MulM<S64>),
            (1, false) => Binder.BySize(op.Size, &ImulR<S8>, &ImulR<S16>, &ImulR<S32>, &ImulR<S64>),
            (1, true) => Binder.BySize(op.Size, &ImulM<S8>, &ImulM<S16>, &ImulM<S32>, &ImulM<S64>),
            (2, false) => Binder.BySize(op.Size, &DivR<S8>, &DivR<S16>, &DivR<S32>, &DivR<S64>),
            (2, true) => Binder.BySize(op.Size, &DivM<S8>, &DivM<S16>, &DivM<S32>, &DivM<S64>),
            (_, false) => Binder.BySize(op.Size, &IdivR<S8>, &IdivR<S16>, &IdivR<S32>, &IdivR<S64>),
            _ => Binder.BySize(op.Size, &IdivM<S8>, &IdivM<S16>, &IdivM<S32>, &IdivM<S64>),
        };
        return true;
    }

    static bool BindImul(in Instruction ins, ref Op op)
    {
        if (ins.OpCount == 1)
        {
            return BindOneOperand(ins, ref op);
        }
        // IMUL r, r/m (R1 = destination, R2 = source) and IMUL r, r/m, imm (the immediate is op.Imm,
        // sign-extended by the decoder). The two-operand form multiplies by the destination.
        bool mem = ins.Op1Kind == OpKind.Memory;
        if (ins.OpCount == 2)
        {
            op.Exec = mem
                ? Binder.BySize(op.Size, &Imul2M<S16>, &Imul2M<S16>, &Imul2M<S32>, &Imul2M<S64>)
                : Binder.BySize(op.Size, &Imul2R<S16>, &Imul2R<S16>, &Imul2R<S32>, &Imul2R<S64>);
        }
        else
        {
            op.Exec = mem
                ? Binder.BySize(op.Size, &Imul3M<S16>, &Imul3M<S16>, &Imul3M<S32>, &Imul3M<S64>)
                : Binder.BySize(op.Size, &Imul3R<S16>, &Imul3R<S16>, &Imul3R<S32>, &Imul3R<S64>);
        }
        return true;
    }

    // ------------------------------------------------------------------ MUL / IMUL, one operand

    static void MulR<S>(Cpu c, ref Op op) where S : IOpSize => Mul<S>(c, S.GetReg(c, op.R1));
    static void MulM<S>(Cpu c, ref Op op) where S : IOpSize => Mul<S>(c, S.Load(c, op.Linear(c)));
    static void ImulR<S>(Cpu c, ref Op op) where S : IOpSize => Imul<S>(c, S.GetReg(c, op.R1));
    static void ImulM<S>(Cpu c, ref Op op) where S : IOpSize => Imul<S>(c, S.Load(c, op.Linear(c)));

    /// <summary>Writes a double-width product: AX for 8-bit, else rDX:rAX.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void StoreWide<S>(Cpu c, ulong low, ulong high) where S : IOpSize
    {
        if (S.Bits == 8)
        {
            S16.SetReg(c, 0, (high << 8) | low);
        }
        else
        {
            S.SetReg(c, 0, low);
            S.SetReg(c, 2, high);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Mul<S>(Cpu c, ulong src) where S : IOpSize
    {
        ulong a = S.GetReg(c, 0);
        ulong low, high;
        if (S.Bits == 64)
        {
            high = Math.BigMul(a, src, out low);
        }
        else
        {
            ulong p = a * src;
            low = p & S.Mask;
            high = p >> S.Bits;
        }
        StoreWide<S>(c, low, high);
        c.FlagsResult(low, S.Bits, high != 0, high != 0);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Imul<S>(Cpu c, ulong src) where S : IOpSize
    {
        long a = (long)Cpu.SignExtend(S.GetReg(c, 0), S.Bits);
        long b = (long)Cpu.SignExtend(src, S.Bits);
        ulong low, high;
        bool overflow;
        if (S.Bits == 64)
        {
            long h = Math.BigMul(a, b, out long l);
            low = (ulong)l;
            high = (ulong)h;
            overflow = h != (l >> 63);
        }
        else
        {
            long p = a * b;
            low = (ulong)p & S.Mask;
            high = ((ulong)p >> S.Bits) & S.Mask;
            overflow = p != (long)Cpu.SignExtend((ulong)p, S.Bits);
        }
        StoreWide<S>(c, low, high);
        c.FlagsResult(low, S.Bits, overflow, overflow);
    }

    // ------------------------------------------------------------------ IMUL, two and three operands

    /// <summary>Truncated signed product; CF = OF = the full product does not fit the destination.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static ulong ImulTruncate<S>(Cpu c, ulong x, ulong y) where S : IOpSize
    {
        long a = (long)Cpu.SignExtend(x, S.Bits);
        long b = (long)Cpu.SignExtend(y, S.Bits);
        ulong r;
        bool overflow;
        if (S.Bits == 64)
        {
            long h = Math.BigMul(a, b, out long l);
            r = (ulong)l;
            overflow = h != (l >> 63);
        }
        else
        {
            long p = a * b;
            r = (ulong)p & S.Mask;
            overflow = p != (long)Cpu.SignExtend((ulong)p, S.Bits);
        }
        c.FlagsResult(r, S.Bits, overflow, overflow);
        return r;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Imul2R<S>(Cpu c, ref Op op) where S : IOpSize =>
        S.SetReg(c, op.R1, ImulTruncate<S>(c, S.GetReg(c, op.R1), S.GetReg(c, op.R2)));

    static void Imul2M<S>(Cpu c, ref Op op) where S : IOpSize
    {
        ulong src = S.Load(c, op.Linear(c));
        S.SetReg(c, op.R1, ImulTruncate<S>(c, S.GetReg(c, op.R1), src));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Imul3R<S>(Cpu c, ref Op op) where S : IOpSize =>
        S.SetReg(c, op.R1, ImulTruncate<S>(c, S.GetReg(c, op.R2), op.Imm & S.Mask));

    static void Imul3M<S>(Cpu c, ref Op op) where S : IOpSize
    {
        ulong src = S.Load(c, op.Linear(c));
        S.SetReg(c, op.R1, ImulTruncate<S>(c, src, op.Imm & S.Mask));
    }

    // ------------------------------------------------------------------ DIV / IDIV

    static void DivR<S>(Cpu c, ref Op op) where S : IOpSize => Div<S>(c, S.GetReg(c, op.R1));
    static void DivM<S>(Cpu c, ref Op op) where S : IOpSize => Div<S>(c, S.Load(c, op.Linear(c)));
    static void IdivR<S>(Cpu c, ref Op op) where S : IOpSize => Idiv<S>(c, S.GetReg(c, op.R1));
    static void IdivM<S>(Cpu c, ref Op op) where S : IOpSize => Idiv<S>(c, S.Load(c, op.Linear(c)));

    /// <summary>Reads the double-width dividend: AX for 8-bit, else rDX:rAX (high, low).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void LoadWide<S>(Cpu c, out ulong high, out ulong low) where S : IOpSize
    {
        if (S.Bits == 8)
        {
            ulong ax = (ushort)c.Regs.Gpr[0];
            high = ax >> 8;
            low = ax & 0xFF;
        }
        else
        {
            high = S.GetReg(c, 2);
            low = S.GetReg(c, 0);
        }
    }

    /// <summary>Quotient in AL/AX/EAX/RAX, remainder in AH/DX/EDX/RDX (SDM Vol. 2A DIV, Table 3-15).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void StoreQuotient<S>(Cpu c, ulong q, ulong r) where S : IOpSize
    {
        if (S.Bits == 8)
        {
            S16.SetReg(c, 0, (r << 8) | (q & 0xFF));
        }
        else
        {
            S.SetReg(c, 0, q);
            S.SetReg(c, 2, r);
        }
    }

    static void Div<S>(Cpu c, ulong divisor) where S : IOpSize
    {
        LoadWide<S>(c, out ulong high, out ulong low);
        // A zero divisor, or a high half >= divisor (the quotient would not fit), is #DE.
        if (divisor == 0 || high >= divisor)
        {
            throw c.Fault(Vector.DE);
        }
        ulong q, r;
        if (S.Bits == 64)
        {
            if (high == 0)
            {
                q = low / divisor;
                r = low % divisor;
            }
            else
            {
                var n = new UInt128(high, low);
                q = (ulong)(n / divisor);
                r = (ulong)(n % divisor);
            }
        }
        else
        {
            ulong n = (high << S.Bits) | low;
            q = n / divisor;
            r = n % divisor;
        }
        StoreQuotient<S>(c, q, r);
    }

    static void Idiv<S>(Cpu c, ulong divisorRaw) where S : IOpSize
    {
        LoadWide<S>(c, out ulong high, out ulong low);
        if (divisorRaw == 0)
        {
            throw c.Fault(Vector.DE);
        }
        long divisor = (long)Cpu.SignExtend(divisorRaw, S.Bits);
        long q, r;
        if (S.Bits == 64)
        {
            var n = (Int128)new UInt128(high, low);
            // Int128 MinValue / -1 overflows: that quotient is out of range anyway.
            if (n == Int128.MinValue && divisor == -1)
            {
                throw c.Fault(Vector.DE);
            }
            Int128 q128 = n / divisor;
            if (q128 > long.MaxValue || q128 < long.MinValue)
            {
                throw c.Fault(Vector.DE);
            }
            q = (long)q128;
            r = (long)(n % divisor);
        }
        else
        {
            long n = (long)Cpu.SignExtend((high << S.Bits) | low, S.Bits * 2);
            if (n == long.MinValue && divisor == -1)
            {
                throw c.Fault(Vector.DE); // (only 32-bit reaches this) the host division would trap
            }
            q = n / divisor;
            r = n % divisor;
            long max = (long)(S.Mask >> 1);
            if (q > max || q < -max - 1)
            {
                throw c.Fault(Vector.DE);
            }
        }
        StoreQuotient<S>(c, (ulong)q & S.Mask, (ulong)r & S.Mask);
    }
}
