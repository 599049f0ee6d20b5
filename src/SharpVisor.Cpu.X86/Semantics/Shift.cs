using System.Runtime.CompilerServices;
using Iced.Intel;
using SharpVisor.Cpu.X86.Decode;

namespace SharpVisor.Cpu.X86.Semantics;

/// <summary>A shift or rotate as a type: computes the result and sets the flags for a non-zero masked count.</summary>
public interface IShiftOp
{
    /// <summary><paramref name="count"/> is already masked (5 bits, 6 for 64-bit) and non-zero.</summary>
    static abstract ulong Apply<S>(Cpu c, ulong a, int count) where S : IOpSize;
}

/// <summary>
/// Shifts and rotates: SHL/SAL, SHR, SAR, ROL, ROR, RCL, RCR (by 1, CL, imm8) and SHLD/SHRD, every
/// width (SDM Vol. 2B "SAL/SAR/SHL/SHR", "RCL/RCR/ROL/ROR", "SHLD", "SHRD"). The count is masked to
/// 5 bits (6 for 64-bit operands); a masked count of 0 changes no flag. Rotates change only CF and OF.
/// Where the SDM leaves a flag undefined (OF for counts other than 1, AF for shifts) the value we
/// produce is the count-1 formula or 0; callers must not rely on it, and the tests do not compare it.
/// </summary>
public static unsafe class Shift
{
    /// <summary>This family's rows of <see cref="InstructionTable"/>.</summary>
    internal static FormSpec[] Forms =>
    [
        new(Mnemonic.Rol, &Bind<ShRol>),
        new(Mnemonic.Ror, &Bind<ShRor>),
        new(Mnemonic.Rcl, &Bind<ShRcl>),
        new(Mnemonic.Rcr, &Bind<ShRcr>),
        new(Mnemonic.Shl, &Bind<ShShl>),
        new(Mnemonic.Sal, &Bind<ShShl>), // /6 is an alias of /4 (SDM Table A-6 note)
        new(Mnemonic.Shr, &Bind<ShShr>),
        new(Mnemonic.Sar, &Bind<ShSar>),
        new(Mnemonic.Shld, &BindDouble),
        new(Mnemonic.Shrd, &BindDouble),
    ];

    /// <summary>Op.Sub = 1 when the count comes from CL, else it is op.Imm (1 for the D0/D1 forms).</summary>
    static bool Bind<T>(in Instruction ins, ref Op op) where T : IShiftOp
    {
        op.Sub = (byte)(ins.Op1Kind == OpKind.Register ? 1 : 0);
        if (ins.Op1Kind != OpKind.Register)
        {
            op.Imm = ins.GetImmediate(1);
        }
        op.Exec = ins.Op0Kind == OpKind.Memory
            ? Binder.BySize(op.Size, &ShiftM<S8, T>, &ShiftM<S16, T>, &ShiftM<S32, T>, &ShiftM<S64, T>)
            : Binder.BySize(op.Size, &ShiftR<S8, T>, &ShiftR<S16, T>, &ShiftR<S32, T>, &ShiftR<S64, T>);
        return true;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static int Count<S>(Cpu c, ref Op op) where S : IOpSize =>
        (int)(op.Sub != 0 ? c.Regs.Gpr[1] : op.Imm) & (S.Bits == 64 ? 63 : 31);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void ShiftR<S, T>(Cpu c, ref Op op) where S : IOpSize where T : IShiftOp
    {
        int n = Count<S>(c, ref op);
        ulong a = S.GetReg(c, op.R1);
        // A zero count still writes the register: a 32-bit destination is zero-extended (as on hardware).
        S.SetReg(c, op.R1, n == 0 ? a : T.Apply<S>(c, a, n));
    }

    static void ShiftM<S, T>(Cpu c, ref Op op) where S : IOpSize where T : IShiftOp
    {
        int n = Count<S>(c, ref op);
        ulong la = op.Linear(c);
        ulong a = S.Load(c, la);
        if (n != 0)
        {
            // Compute into a temporary flag state first: the store may fault and must leave flags alone.
            ulong res = c.Regs.FlagRes, aux = c.Regs.FlagAux;
            ulong r = T.Apply<S>(c, a, n);
            ulong newRes = c.Regs.FlagRes, newAux = c.Regs.FlagAux;
            c.Regs.FlagRes = res;
            c.Regs.FlagAux = aux;
            S.Store(c, la, r);
            c.Regs.FlagRes = newRes;
            c.Regs.FlagAux = newAux;
        }
    }

    /// <summary>Rotates change only CF and OF: update those bits of the lazy state in place (see Cpu.Flags.cs:
    /// CF and OF are stored directly in FlagAux; SF/ZF/PF come from FlagRes and the inverter bits).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void SetCfOf(Cpu c, ulong cf, ulong of) =>
        c.Regs.FlagAux = (c.Regs.FlagAux & ~(RFlags.CF | RFlags.OF)) | (cf & 1) | ((of & 1) << 11);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static ulong Msb<S>(ulong v) where S : IOpSize => (v >> (S.Bits - 1)) & 1;

    /// <summary>x &gt;&gt; k with k up to 64 (C# masks shift counts).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static ulong Shr(ulong x, int k) => k >= 64 ? 0 : x >> k;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static ulong Shl(ulong x, int k) => k >= 64 ? 0 : x << k;

    /// <summary>SHLD/SHRD: Sub = 1 for the CL forms, 2 for SHRD; R2 = the source register.</summary>
    static bool BindDouble(in Instruction ins, ref Op op)
    {
        op.R2 = Binder.Slot(ins.Op1Register);
        bool cl = ins.Op2Kind == OpKind.Register;
        op.Sub = (byte)(cl ? 1 : 0);
        if (!cl)
        {
            op.Imm = ins.GetImmediate(2);
        }
        bool right = ins.Mnemonic == Mnemonic.Shrd;
        op.Exec = (ins.Op0Kind == OpKind.Memory, right) switch
        {
            (false, false) => Binder.BySize(op.Size, &DoubleR<S16, ShldOp>, &DoubleR<S16, ShldOp>, &DoubleR<S32, ShldOp>, &DoubleR<S64, ShldOp>),
            (false, true) => Binder.BySize(op.Size, &DoubleR<S16, ShrdOp>, &DoubleR<S16, ShrdOp>, &DoubleR<S32, ShrdOp>, &DoubleR<S64, ShrdOp>),
            (true, false) => Binder.BySize(op.Size, &DoubleM<S16, ShldOp>, &DoubleM<S16, ShldOp>, &DoubleM<S32, ShldOp>, &DoubleM<S64, ShldOp>),
            (true, true) => Binder.BySize(op.Size, &DoubleM<S16, ShrdOp>, &DoubleM<S16, ShrdOp>, &DoubleM<S32, ShrdOp>, &DoubleM<S64, ShrdOp>),
        };
        return true;
    }

    internal interface IDoubleOp
    {
        static abstract ulong Apply<S>(Cpu c, ulong dest, ulong src, int count) where S : IOpSize;
    }

    /// <summary>
    /// SHLD: dest shifted left, vacated bits filled from the top of src. For 16-bit operands a count
    /// above 16 is undefined; we shift the 48-bit string dest:src:dest (what Intel cores do).
    /// </summary>
    internal readonly struct ShldOp : IDoubleOp
    {
        public static ulong Apply<S>(Cpu c, ulong d, ulong s, int n) where S : IOpSize
        {
            ulong r, cf;
            if (S.Bits == 16)
            {
                ulong wide = (d << 32) | (s << 16) | d; // 48 bits
                r = (wide << n >> 32) & 0xFFFF;
                cf = (wide >> (48 - n)) & 1;
            }
            else
            {
                int w = S.Bits;
                r = ((d << n) | Shr(s, w - n)) & S.Mask;
                cf = (d >> (w - n)) & 1;
            }
            ulong of = Msb<S>(r) ^ Msb<S>(d); // defined for count 1: sign change
            c.FlagsResult(r, S.Bits, cf != 0, of != 0);
            return r;
        }
    }

    /// <summary>SHRD: dest shifted right, vacated bits filled from the bottom of src.</summary>
    internal readonly struct ShrdOp : IDoubleOp
    {
        public static ulong Apply<S>(Cpu c, ulong d, ulong s, int n) where S : IOpSize
        {
            ulong r, cf;
            if (S.Bits == 16)
            {
                // dest:src:dest as for SHLD: counts above 16 reach into the upper copy of dest.
                ulong wide2 = (d << 32) | (s << 16) | d;
                r = (wide2 >> n) & 0xFFFF;
                cf = (wide2 >> (n - 1)) & 1;
            }
            else
            {
                int w = S.Bits;
                r = ((d >> n) | Shl(s, w - n)) & S.Mask;
                cf = (d >> (n - 1)) & 1;
            }
            ulong of = Msb<S>(r) ^ Msb<S>(d);
            c.FlagsResult(r, S.Bits, cf != 0, of != 0);
            return r;
        }
    }

    static void DoubleR<S, T>(Cpu c, ref Op op) where S : IOpSize where T : IDoubleOp
    {
        int n = Count<S>(c, ref op);
        ulong d = S.GetReg(c, op.R1);
        S.SetReg(c, op.R1, n == 0 ? d : T.Apply<S>(c, d, S.GetReg(c, op.R2), n));
    }

    static void DoubleM<S, T>(Cpu c, ref Op op) where S : IOpSize where T : IDoubleOp
    {
        int n = Count<S>(c, ref op);
        ulong la = op.Linear(c);
        ulong d = S.Load(c, la);
        if (n != 0)
        {
            ulong res = c.Regs.FlagRes, aux = c.Regs.FlagAux;
            ulong r = T.Apply<S>(c, d, S.GetReg(c, op.R2), n);
            ulong newRes = c.Regs.FlagRes, newAux = c.Regs.FlagAux;
            c.Regs.FlagRes = res;
            c.Regs.FlagAux = aux;
            S.Store(c, la, r);
            c.Regs.FlagRes = newRes;
            c.Regs.FlagAux = newAux;
        }
    }
}

/// <summary>SHL/SAL: CF = last bit shifted out (0 once the count passes the width: the SDM pseudo-code); OF (count 1) = MSB(r) ^ CF.</summary>
public readonly struct ShShl : IShiftOp
{
    public static ulong Apply<S>(Cpu c, ulong a, int n) where S : IOpSize
    {
        ulong r = (a << n) & S.Mask;
        ulong cf = n <= S.Bits ? (a >> (S.Bits - n)) & 1 : 0;
        ulong of = Shift.Msb<S>(r) ^ cf;
        c.FlagsResult(r, S.Bits, cf != 0, of != 0);
        return r;
    }
}

/// <summary>SHR: CF = last bit shifted out; OF (count 1) = MSB of the original operand.</summary>
public readonly struct ShShr : IShiftOp
{
    public static ulong Apply<S>(Cpu c, ulong a, int n) where S : IOpSize
    {
        ulong r = a >> n;
        ulong cf = (a >> (n - 1)) & 1;
        ulong of = n == 1 ? Shift.Msb<S>(a) : Shift.Msb<S>(r) ^ Shift.Msb<S>(a);
        c.FlagsResult(r, S.Bits, cf != 0, of != 0);
        return r;
    }
}

/// <summary>SAR: signed shift; CF = last bit shifted out; OF (count 1) = 0.</summary>
public readonly struct ShSar : IShiftOp
{
    public static ulong Apply<S>(Cpu c, ulong a, int n) where S : IOpSize
    {
        long sa = (long)Cpu.SignExtend(a, S.Bits);
        ulong r = (ulong)(sa >> n) & S.Mask;
        ulong cf = (ulong)(sa >> (n - 1)) & 1;
        c.FlagsResult(r, S.Bits, cf != 0, false);
        return r;
    }
}

/// <summary>ROL: CF = LSB(result); OF (count 1) = MSB(result) ^ CF. For 8/16-bit the rotation is count mod width,
/// but CF/OF are set whenever the masked count is non-zero (SDM pseudo-code).</summary>
public readonly struct ShRol : IShiftOp
{
    public static ulong Apply<S>(Cpu c, ulong a, int n) where S : IOpSize
    {
        int k = n & (S.Bits - 1);
        ulong r = k == 0 ? a : ((a << k) | (a >> (S.Bits - k))) & S.Mask;
        ulong cf = r & 1;
        Shift.SetCfOf(c, cf, Shift.Msb<S>(r) ^ cf);
        return r;
    }
}

/// <summary>ROR: CF = MSB(result); OF (count 1) = MSB(result) ^ MSB-1(result).</summary>
public readonly struct ShRor : IShiftOp
{
    public static ulong Apply<S>(Cpu c, ulong a, int n) where S : IOpSize
    {
        int k = n & (S.Bits - 1);
        ulong r = k == 0 ? a : ((a >> k) | (a << (S.Bits - k))) & S.Mask;
        ulong cf = Shift.Msb<S>(r);
        Shift.SetCfOf(c, cf, cf ^ ((r >> (S.Bits - 2)) & 1));
        return r;
    }
}

/// <summary>RCL: rotate through CF by count mod 9 / mod 17 (8/16-bit) or the masked count; OF (count 1) = MSB(result) ^ CF.</summary>
public readonly struct ShRcl : IShiftOp
{
    public static ulong Apply<S>(Cpu c, ulong a, int n) where S : IOpSize
    {
        int w = S.Bits;
        int k = w == 8 ? n % 9 : w == 16 ? n % 17 : n;
        if (k == 0)
        {
            return a; // a count that is a multiple of 9 (17): no rotation, and hardware leaves every flag as it was
        }
        ulong cfIn = c.CF() ? 1UL : 0;
        // (CF:a) is a (w+1)-bit value rotated left by k.
        ulong r = ((a << k) | (cfIn << (k - 1)) | (k == 1 ? 0 : a >> (w + 1 - k))) & S.Mask;
        ulong cf = (a >> (w - k)) & 1;
        Shift.SetCfOf(c, cf, Shift.Msb<S>(r) ^ cf);
        return r;
    }
}

/// <summary>RCR: rotate right through CF; OF (count 1) = MSB(dest) ^ CF before the rotation = MSB(r) ^ MSB-1(r).</summary>
public readonly struct ShRcr : IShiftOp
{
    public static ulong Apply<S>(Cpu c, ulong a, int n) where S : IOpSize
    {
        int w = S.Bits;
        int k = w == 8 ? n % 9 : w == 16 ? n % 17 : n;
        if (k == 0)
        {
            return a; // a count that is a multiple of 9 (17): no rotation, and hardware leaves every flag as it was
        }
        ulong cfIn = c.CF() ? 1UL : 0;
        ulong r = ((a >> k) | (cfIn << (w - k)) | (k == 1 ? 0 : a << (w + 1 - k))) & S.Mask;
        ulong cf = (a >> (k - 1)) & 1;
        Shift.SetCfOf(c, cf, Shift.Msb<S>(r) ^ ((r >> (w - 2)) & 1));
        return r;
    }
}
