using System.Runtime.CompilerServices;
using Iced.Intel;
using SharpVisor.Cpu.X86.Decode;

namespace SharpVisor.Cpu.X86.Semantics;

/// <summary>A two-operand ALU operation as a type (so handlers specialise per operation and width).</summary>
public interface IAluOp
{
    /// <summary>Computes the result and, unless <typeparamref name="F"/> skips them, sets the flags; the
    /// result is masked to the operand width.</summary>
    static abstract ulong Apply<S, F>(Cpu c, ulong a, ulong b) where S : IOpSize where F : IFlagUpdate;
    /// <summary>False for CMP and TEST, which only set flags.</summary>
    static abstract bool WritesResult { get; }
}

public readonly struct OpAdd : IAluOp
{
    public static bool WritesResult => true;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Apply<S, F>(Cpu c, ulong a, ulong b) where S : IOpSize where F : IFlagUpdate { ulong r = (a + b) & S.Mask; if (F.Update) c.FlagsAdd(a, b, r, S.Bits); return r; }
}

public readonly struct OpOr : IAluOp
{
    public static bool WritesResult => true;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Apply<S, F>(Cpu c, ulong a, ulong b) where S : IOpSize where F : IFlagUpdate { ulong r = (a | b) & S.Mask; if (F.Update) c.FlagsLogic(r, S.Bits); return r; }
}

public readonly struct OpAdc : IAluOp
{
    public static bool WritesResult => true;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Apply<S, F>(Cpu c, ulong a, ulong b) where S : IOpSize where F : IFlagUpdate { ulong r = (a + b + (c.CF() ? 1UL : 0)) & S.Mask; if (F.Update) c.FlagsAdd(a, b, r, S.Bits); return r; }
}

public readonly struct OpSbb : IAluOp
{
    public static bool WritesResult => true;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Apply<S, F>(Cpu c, ulong a, ulong b) where S : IOpSize where F : IFlagUpdate { ulong r = (a - b - (c.CF() ? 1UL : 0)) & S.Mask; if (F.Update) c.FlagsSub(a, b, r, S.Bits); return r; }
}

public readonly struct OpAnd : IAluOp
{
    public static bool WritesResult => true;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Apply<S, F>(Cpu c, ulong a, ulong b) where S : IOpSize where F : IFlagUpdate { ulong r = a & b & S.Mask; if (F.Update) c.FlagsLogic(r, S.Bits); return r; }
}

public readonly struct OpSub : IAluOp
{
    public static bool WritesResult => true;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Apply<S, F>(Cpu c, ulong a, ulong b) where S : IOpSize where F : IFlagUpdate { ulong r = (a - b) & S.Mask; if (F.Update) c.FlagsSub(a, b, r, S.Bits); return r; }
}

public readonly struct OpXor : IAluOp
{
    public static bool WritesResult => true;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Apply<S, F>(Cpu c, ulong a, ulong b) where S : IOpSize where F : IFlagUpdate { ulong r = (a ^ b) & S.Mask; if (F.Update) c.FlagsLogic(r, S.Bits); return r; }
}

public readonly struct OpCmp : IAluOp
{
    public static bool WritesResult => false;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Apply<S, F>(Cpu c, ulong a, ulong b) where S : IOpSize where F : IFlagUpdate { ulong r = (a - b) & S.Mask; if (F.Update) c.FlagsSub(a, b, r, S.Bits); return r; }
}

public readonly struct OpTest : IAluOp
{
    public static bool WritesResult => false;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Apply<S, F>(Cpu c, ulong a, ulong b) where S : IOpSize where F : IFlagUpdate { ulong r = a & b & S.Mask; if (F.Update) c.FlagsLogic(r, S.Bits); return r; }
}

/// <summary>INC: like ADD 1 but CF is preserved (SDM Vol. 2A INC).</summary>
public readonly struct OpInc : IAluOp
{
    public static bool WritesResult => true;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Apply<S, F>(Cpu c, ulong a, ulong b) where S : IOpSize where F : IFlagUpdate { ulong r = (a + 1) & S.Mask; if (F.Update) { bool cf = c.CF(); c.FlagsAdd(a, 1, r, S.Bits); c.SetCF(cf); } return r; }
}

public readonly struct OpDec : IAluOp
{
    public static bool WritesResult => true;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Apply<S, F>(Cpu c, ulong a, ulong b) where S : IOpSize where F : IFlagUpdate { ulong r = (a - 1) & S.Mask; if (F.Update) { bool cf = c.CF(); c.FlagsSub(a, 1, r, S.Bits); c.SetCF(cf); } return r; }
}

/// <summary>NEG: 0 - a; CF = (a != 0) falls out of the borrow computation.</summary>
public readonly struct OpNeg : IAluOp
{
    public static bool WritesResult => true;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Apply<S, F>(Cpu c, ulong a, ulong b) where S : IOpSize where F : IFlagUpdate { ulong r = (0 - a) & S.Mask; if (F.Update) c.FlagsSub(0, a, r, S.Bits); return r; }
}

/// <summary>NOT: no flags change.</summary>
public readonly struct OpNot : IAluOp
{
    public static bool WritesResult => true;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Apply<S, F>(Cpu c, ulong a, ulong b) where S : IOpSize where F : IFlagUpdate => ~a & S.Mask;
}

/// <summary>
/// Integer ALU instructions: ADD, OR, ADC, SBB, AND, SUB, XOR, CMP, TEST, INC, DEC, NEG, NOT in
/// every operand form and width (SDM Vol. 2). Memory destinations with LOCK are atomic with respect
/// to other vCPUs (a compare-exchange loop on the host location).
/// </summary>
public static unsafe class Alu
{
    /// <summary>This family's rows of <see cref="InstructionTable"/>.</summary>
    internal static FormSpec[] Forms =>
    [
        new(Mnemonic.Add, &Bind<OpAdd>),
        new(Mnemonic.Or, &Bind<OpOr>),
        new(Mnemonic.Adc, &Bind<OpAdc>),
        new(Mnemonic.Sbb, &Bind<OpSbb>),
        new(Mnemonic.And, &Bind<OpAnd>),
        new(Mnemonic.Sub, &Bind<OpSub>),
        new(Mnemonic.Xor, &Bind<OpXor>),
        new(Mnemonic.Cmp, &Bind<OpCmp>),
        new(Mnemonic.Test, &Bind<OpTest>),
        new(Mnemonic.Inc, &BindUnary<OpInc>),
        new(Mnemonic.Dec, &BindUnary<OpDec>),
        new(Mnemonic.Neg, &BindUnary<OpNeg>),
        new(Mnemonic.Not, &BindUnary<OpNot>),
    ];

    static bool Bind<T>(in Instruction ins, ref Op op) where T : IAluOp
    {
        bool mem0 = ins.Op0Kind == OpKind.Memory;
        bool lockOk = mem0 && T.WritesResult;
        if ((op.Flags & OpFlags.Lock) != 0 && !lockOk)
        {
            return BindUd(ref op);
        }
        bool locked = (op.Flags & OpFlags.Lock) != 0;
        switch (ins.Op1Kind)
        {
            case OpKind.Register when !mem0:
                op.Exec = Binder.BySize(op.Size, &RR<S8, T, UpdateFlags>, &RR<S16, T, UpdateFlags>, &RR<S32, T, UpdateFlags>, &RR<S64, T, UpdateFlags>);
                return true;
            case OpKind.Register:
                op.Exec = locked
                    ? Binder.BySize(op.Size, &MRLocked<S8, T>, &MRLocked<S16, T>, &MRLocked<S32, T>, &MRLocked<S64, T>)
                    : Binder.BySize(op.Size, &MR<S8, T>, &MR<S16, T>, &MR<S32, T>, &MR<S64, T>);
                return true;
            case OpKind.Memory:
                op.Exec = Binder.BySize(op.Size, &RM<S8, T>, &RM<S16, T>, &RM<S32, T>, &RM<S64, T>);
                return true;
            default: // immediates
                if (!mem0)
                {
                    op.Exec = Binder.BySize(op.Size, &RI<S8, T, UpdateFlags>, &RI<S16, T, UpdateFlags>, &RI<S32, T, UpdateFlags>, &RI<S64, T, UpdateFlags>);
                }
                else
                {
                    op.Exec = locked
                        ? Binder.BySize(op.Size, &MILocked<S8, T>, &MILocked<S16, T>, &MILocked<S32, T>, &MILocked<S64, T>)
                        : Binder.BySize(op.Size, &MI<S8, T>, &MI<S16, T>, &MI<S32, T>, &MI<S64, T>);
                }
                return true;
        }
    }

    static bool BindUnary<T>(in Instruction ins, ref Op op) where T : IAluOp
    {
        bool mem = ins.Op0Kind == OpKind.Memory;
        bool locked = (op.Flags & OpFlags.Lock) != 0;
        if (locked && !mem)
        {
            return BindUd(ref op);
        }
        // The unary forms reuse the immediate handlers with an unused immediate.
        op.Exec = !mem ? Binder.BySize(op.Size, &RI<S8, T, UpdateFlags>, &RI<S16, T, UpdateFlags>, &RI<S32, T, UpdateFlags>, &RI<S64, T, UpdateFlags>)
            : locked ? Binder.BySize(op.Size, &MILocked<S8, T>, &MILocked<S16, T>, &MILocked<S32, T>, &MILocked<S64, T>)
            : Binder.BySize(op.Size, &MI<S8, T>, &MI<S16, T>, &MI<S32, T>, &MI<S64, T>);
        return true;
    }

    internal static bool BindUd(ref Op op)
    {
        op.Exec = &Ud;
        return true;
    }

    static void Ud(Cpu c, ref Op op) => throw c.InvalidOpcode();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void RR<S, T, F>(Cpu c, ref Op op) where S : IOpSize where T : IAluOp where F : IFlagUpdate
    {
        ulong r = T.Apply<S, F>(c, S.GetReg(c, op.R1), S.GetReg(c, op.R2));
        if (T.WritesResult) S.SetReg(c, op.R1, r);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void RI<S, T, F>(Cpu c, ref Op op) where S : IOpSize where T : IAluOp where F : IFlagUpdate
    {
        ulong r = T.Apply<S, F>(c, S.GetReg(c, op.R1), op.Imm & S.Mask);
        if (T.WritesResult) S.SetReg(c, op.R1, r);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void RM<S, T>(Cpu c, ref Op op) where S : IOpSize where T : IAluOp
    {
        ulong b = S.Load(c, op.Linear(c));
        ulong r = T.Apply<S, UpdateFlags>(c, S.GetReg(c, op.R1), b);
        if (T.WritesResult) S.SetReg(c, op.R1, r);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void MR<S, T>(Cpu c, ref Op op) where S : IOpSize where T : IAluOp
    {
        ulong la = op.Linear(c);
        ReadModifyWrite<S, T>(c, la, S.Load(c, la), S.GetReg(c, op.R2));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void MI<S, T>(Cpu c, ref Op op) where S : IOpSize where T : IAluOp
    {
        ulong la = op.Linear(c);
        ReadModifyWrite<S, T>(c, la, S.Load(c, la), op.Imm & S.Mask);
    }

    /// <summary>
    /// The result stored, then the flags: a store that faults (a write-protected page, say) leaves
    /// the flags as they were, as a faulting instruction leaves all state (SDM Vol. 3A 6.5). The
    /// operation is computed twice (without, then with the flag update) — it is a few ALU
    /// instructions; CMP and TEST store nothing and compute once.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void ReadModifyWrite<S, T>(Cpu c, ulong la, ulong a, ulong b) where S : IOpSize where T : IAluOp
    {
        if (T.WritesResult)
        {
            S.Store(c, la, T.Apply<S, SkipFlags>(c, a, b));
        }
        T.Apply<S, UpdateFlags>(c, a, b);
    }

    static void MRLocked<S, T>(Cpu c, ref Op op) where S : IOpSize where T : IAluOp =>
        LockedRmw<S, T>(c, op.Linear(c), S.GetReg(c, op.R2));

    static void MILocked<S, T>(Cpu c, ref Op op) where S : IOpSize where T : IAluOp =>
        LockedRmw<S, T>(c, op.Linear(c), op.Imm & S.Mask);

    /// <summary>
    /// An atomic read-modify-write (SDM Vol. 3A 9.1.2.2): a compare-exchange loop on the host bytes,
    /// or, for MMIO and page-straddling operands, a plain sequence under the machine-wide split lock.
    /// </summary>
    internal static void LockedRmw<S, T>(Cpu c, ulong la, ulong b) where S : IOpSize where T : IAluOp
    {
        byte* p = c.WritablePointer(la, S.Bits / 8);
        if (p == null)
        {
            lock (c.SplitLock)
            {
                ReadModifyWrite<S, T>(c, la, S.Load(c, la), b);
            }
            return;
        }
        while (true)
        {
            ulong old = S.LoadHost(p);
            ulong r = T.Apply<S, UpdateFlags>(c, old, b);
            if (S.CompareExchange(p, r, old) == old)
            {
                return;
            }
        }
    }
}
