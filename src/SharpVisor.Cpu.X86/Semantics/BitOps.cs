using System.Numerics;
using System.Runtime.CompilerServices;
using Iced.Intel;
using SharpVisor.Cpu.X86.Decode;

namespace SharpVisor.Cpu.X86.Semantics;

/// <summary>What BT/BTS/BTR/BTC do to the selected bit (BT leaves it).</summary>
public interface IBitOp
{
    static abstract ulong Apply(ulong value, ulong bit);
    static abstract bool Writes { get; }
}

public readonly struct BitTest : IBitOp
{
    public static bool Writes => false;
    public static ulong Apply(ulong v, ulong bit) => v;
}

public readonly struct BitSet : IBitOp
{
    public static bool Writes => true;
    public static ulong Apply(ulong v, ulong bit) => v | bit;
}

public readonly struct BitReset : IBitOp
{
    public static bool Writes => true;
    public static ulong Apply(ulong v, ulong bit) => v & ~bit;
}

public readonly struct BitComplement : IBitOp
{
    public static bool Writes => true;
    public static ulong Apply(ulong v, ulong bit) => v ^ bit;
}

/// <summary>
/// Bit instructions: BT, BTS, BTR, BTC (SDM Vol. 2A "BT"), BSF, BSR, and the F3-prefixed LZCNT/TZCNT
/// encodings, which — since CPUID advertises neither ABM nor BMI1 — execute as BSR/BSF exactly as
/// on a processor without those features (the F3 prefix is ignored). POPCNT is not advertised: #UD.
/// </summary>
/// <remarks>
/// BT* flags: CF = the selected bit; ZF is unaffected; OF, SF, AF, PF are undefined (we leave them).
/// BSF/BSR: ZF = (source = 0); with a zero source the destination is left unchanged (AMD documents
/// this; Intel documents "undefined" but its processors behave the same); CF, OF, SF, AF, PF undefined.
/// </remarks>
public static unsafe class BitOps
{
    /// <summary>This family's rows of <see cref="InstructionTable"/>.</summary>
    internal static FormSpec[] Forms =>
    [
        new(Mnemonic.Bt, &BindBt<BitTest>),
        new(Mnemonic.Bts, &BindBt<BitSet>),
        new(Mnemonic.Btr, &BindBt<BitReset>),
        new(Mnemonic.Btc, &BindBt<BitComplement>),
        new(Mnemonic.Bsf, &BindScan),
        new(Mnemonic.Bsr, &BindScan),
        new(Mnemonic.Tzcnt, &BindScan),
        new(Mnemonic.Lzcnt, &BindScan),
        new(Mnemonic.Popcnt, &BindPopcnt, FormTraits.MayFault), // #UD: not advertised
    ];

    static bool BindBt<T>(in Instruction ins, ref Op op) where T : IBitOp
    {
        bool mem = ins.Op0Kind == OpKind.Memory;
        bool locked = (op.Flags & OpFlags.Lock) != 0;
        if (locked && (!mem || !T.Writes))
        {
            return Alu.BindUd(ref op); // LOCK only with a memory destination of BTS/BTR/BTC
        }
        bool regOffset = ins.Op1Kind == OpKind.Register;
        if (regOffset)
        {
            op.R2 = Binder.Slot(ins.Op1Register);
        }
        else
        {
            op.Imm = ins.GetImmediate(1);
        }
        if (!mem)
        {
            op.Sub = (byte)(regOffset ? 1 : 0);
            op.Exec = Binder.BySize(op.Size, &BtR<S16, T>, &BtR<S16, T>, &BtR<S32, T>, &BtR<S64, T>);
        }
        else if (regOffset)
        {
            op.Exec = locked
                ? Binder.BySize(op.Size, &BtMRLocked<S16, T>, &BtMRLocked<S16, T>, &BtMRLocked<S32, T>, &BtMRLocked<S64, T>)
                : Binder.BySize(op.Size, &BtMR<S16, T>, &BtMR<S16, T>, &BtMR<S32, T>, &BtMR<S64, T>);
        }
        else
        {
            op.Exec = locked
                ? Binder.BySize(op.Size, &BtMILocked<S16, T>, &BtMILocked<S16, T>, &BtMILocked<S32, T>, &BtMILocked<S64, T>)
                : Binder.BySize(op.Size, &BtMI<S16, T>, &BtMI<S16, T>, &BtMI<S32, T>, &BtMI<S64, T>);
        }
        return true;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void BtR<S, T>(Cpu c, ref Op op) where S : IOpSize where T : IBitOp
    {
        ulong offset = op.Sub != 0 ? S.GetReg(c, op.R2) : op.Imm;
        ulong bit = 1UL << (int)(offset & (ulong)(S.Bits - 1));
        ulong v = S.GetReg(c, op.R1);
        c.SetCF((v & bit) != 0);
        if (T.Writes)
        {
            S.SetReg(c, op.R1, T.Apply(v, bit));
        }
    }

    /// <summary>
    /// Memory operand with a register bit offset: the offset is a signed integer over the whole bit
    /// string starting at the operand, so the accessed unit is at EA + (offset SAR log2(width)) * width/8
    /// (SDM Vol. 2A "BT", Figure 3-2 and the "bit base / bit offset" description).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static ulong UnitAddress<S>(Cpu c, ref Op op, out ulong bit) where S : IOpSize
    {
        long offset = (long)Cpu.SignExtend(S.GetReg(c, op.R2), S.Bits);
        int log = BitOperations.Log2((uint)S.Bits);
        long byteDisp = (offset >> log) * (S.Bits / 8);
        bit = 1UL << (int)(offset & (S.Bits - 1));
        ulong ea = (c.Regs.Gpr[op.Base] + (c.Regs.Gpr[op.Index] << op.Scale) + (ulong)op.Disp + (ulong)byteDisp) & op.AddrMask;
        c.CheckDataAccess(op.Seg, ea, (uint)(S.Bits / 8), op.MemAccess);
        ulong la = (c.Regs.SegBase[op.Seg] + ea) & c.Regs.LinearMask;
        if (Cpu.MaybeNonCanonical(la, (uint)(S.Bits / 8)))
        {
            c.CheckOperandCanonical(la, (uint)(S.Bits / 8), op.Base); // as Op.Linear: #SS for an RSP/RBP base
        }
        return la;
    }

    static void BtMR<S, T>(Cpu c, ref Op op) where S : IOpSize where T : IBitOp
    {
        ulong la = UnitAddress<S>(c, ref op, out ulong bit);
        BtMemory<S, T>(c, la, bit);
    }

    static void BtMI<S, T>(Cpu c, ref Op op) where S : IOpSize where T : IBitOp =>
        BtMemory<S, T>(c, op.Linear(c), 1UL << (int)(op.Imm & (ulong)(S.Bits - 1)));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void BtMemory<S, T>(Cpu c, ulong la, ulong bit) where S : IOpSize where T : IBitOp
    {
        ulong v = S.Load(c, la);
        if (T.Writes)
        {
            S.Store(c, la, T.Apply(v, bit));
        }
        c.SetCF((v & bit) != 0);
    }

    static void BtMRLocked<S, T>(Cpu c, ref Op op) where S : IOpSize where T : IBitOp
    {
        ulong la = UnitAddress<S>(c, ref op, out ulong bit);
        BtLocked<S, T>(c, la, bit);
    }

    static void BtMILocked<S, T>(Cpu c, ref Op op) where S : IOpSize where T : IBitOp =>
        BtLocked<S, T>(c, op.Linear(c), 1UL << (int)(op.Imm & (ulong)(S.Bits - 1)));

    /// <summary>LOCK BTS/BTR/BTC: an atomic read-modify-write (compare-exchange loop, or the split lock for MMIO/page-straddling units).</summary>
    static void BtLocked<S, T>(Cpu c, ulong la, ulong bit) where S : IOpSize where T : IBitOp
    {
        byte* p = c.WritablePointer(la, S.Bits / 8);
        ulong old;
        if (p == null)
        {
            lock (c.SplitLock)
            {
                old = S.Load(c, la);
                S.Store(c, la, T.Apply(old, bit));
            }
        }
        else
        {
            do
            {
                old = S.LoadHost(p);
            }
            while (S.CompareExchange(p, T.Apply(old, bit), old) != old);
        }
        c.SetCF((old & bit) != 0);
    }

    /// <summary>BSF/BSR (and TZCNT/LZCNT executed as them). Sub = 1 for reverse (BSR).</summary>
    static bool BindScan(in Instruction ins, ref Op op)
    {
        bool reverse = ins.Mnemonic is Mnemonic.Bsr or Mnemonic.Lzcnt;
        if (ins.Op1Kind == OpKind.Register)
        {
            op.R2 = Binder.Slot(ins.Op1Register);
            op.Exec = reverse
                ? Binder.BySize(op.Size, &ScanR<S16, Reverse>, &ScanR<S16, Reverse>, &ScanR<S32, Reverse>, &ScanR<S64, Reverse>)
                : Binder.BySize(op.Size, &ScanR<S16, Forward>, &ScanR<S16, Forward>, &ScanR<S32, Forward>, &ScanR<S64, Forward>);
        }
        else
        {
            op.Exec = reverse
                ? Binder.BySize(op.Size, &ScanM<S16, Reverse>, &ScanM<S16, Reverse>, &ScanM<S32, Reverse>, &ScanM<S64, Reverse>)
                : Binder.BySize(op.Size, &ScanM<S16, Forward>, &ScanM<S16, Forward>, &ScanM<S32, Forward>, &ScanM<S64, Forward>);
        }
        return true;
    }

    interface IScanDirection
    {
        static abstract ulong Index(ulong nonZero);
    }

    readonly struct Forward : IScanDirection
    {
        public static ulong Index(ulong v) => (ulong)BitOperations.TrailingZeroCount(v);
    }

    readonly struct Reverse : IScanDirection
    {
        public static ulong Index(ulong v) => (ulong)(63 - BitOperations.LeadingZeroCount(v));
    }

    static void ScanR<S, D>(Cpu c, ref Op op) where S : IOpSize where D : IScanDirection =>
        Scan<S, D>(c, ref op, S.GetReg(c, op.R2));

    static void ScanM<S, D>(Cpu c, ref Op op) where S : IOpSize where D : IScanDirection =>
        Scan<S, D>(c, ref op, S.Load(c, op.Linear(c)));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Scan<S, D>(Cpu c, ref Op op, ulong src) where S : IOpSize where D : IScanDirection
    {
        if (src == 0)
        {
            c.FlagsResult(0, S.Bits, false, false); // ZF = 1; the others are undefined
            return; // destination unchanged (all 64 bits)
        }
        ulong index = D.Index(src);
        c.FlagsResult(1, S.Bits, false, false); // ZF = 0
        S.SetReg(c, op.R1, index);
    }

    static bool BindPopcnt(in Instruction ins, ref Op op) => Alu.BindUd(ref op); // CPUID.1:ECX.POPCNT = 0
}
