using Iced.Intel;
using SharpVisor.Cpu.X86.Decode;

namespace SharpVisor.Cpu.X86.Semantics;

/// <summary>
/// CMPXCHG, CMPXCHG8B, CMPXCHG16B and XADD (SDM Vol. 2A/2B). With LOCK (and always for
/// CMPXCHG16B) the memory update is atomic with respect to other vCPUs: a host compare-exchange
/// on the guest RAM bytes, or for MMIO/page-straddling operands a plain sequence under
/// <see cref="CpuPlatform.SplitLock"/>.
/// </summary>
/// <remarks>
/// .NET has no 128-bit compare-exchange on x86-64, so EVERY CMPXCHG16B — locked or not, RAM or MMIO —
/// performs its 16-byte compare-and-store under <see cref="CpuPlatform.SplitLock"/>: CMPXCHG16B operations
/// are atomic with respect to each other and to other split-lock users. A concurrent 8-byte LOCKed
/// instruction on one half of the same location (which no sane guest mixes with CMPXCHG16B) is not
/// serialised against it.
/// </remarks>
public static unsafe class Atomic
{
    /// <summary>This family's rows of <see cref="InstructionTable"/>.</summary>
    internal static FormSpec[] Forms =>
    [
        new(Mnemonic.Cmpxchg, &BindCmpxchg),
        new(Mnemonic.Xadd, &BindXadd),
        new(Mnemonic.Cmpxchg8b, &BindCmpxchg8b),
        new(Mnemonic.Cmpxchg16b, &BindCmpxchg16b),
    ];

    static bool BindCmpxchg(in Instruction ins, ref Op op)
    {
        bool mem = ins.Op0Kind == OpKind.Memory;
        bool locked = (op.Flags & OpFlags.Lock) != 0;
        if (locked && !mem)
        {
            return Alu.BindUd(ref op);
        }
        op.R2 = Binder.Slot(ins.Op1Register);
        op.Exec = !mem ? Binder.BySize(op.Size, &CmpxchgR<S8>, &CmpxchgR<S16>, &CmpxchgR<S32>, &CmpxchgR<S64>)
            : locked ? Binder.BySize(op.Size, &CmpxchgLocked<S8>, &CmpxchgLocked<S16>, &CmpxchgLocked<S32>, &CmpxchgLocked<S64>)
            : Binder.BySize(op.Size, &CmpxchgM<S8>, &CmpxchgM<S16>, &CmpxchgM<S32>, &CmpxchgM<S64>);
        return true;
    }

    /// <summary>
    /// SDM pseudo-code: TEMP ← DEST; IF accumulator = TEMP THEN ZF ← 1; DEST ← SRC ELSE ZF ← 0;
    /// accumulator ← TEMP; DEST ← TEMP. Flags are those of CMP accumulator, TEMP. Processors write
    /// a register destination only on success (zero-extending a 32-bit one) and the accumulator only
    /// on failure.
    /// </summary>
    static void CmpxchgR<S>(Cpu c, ref Op op) where S : IOpSize
    {
        ulong acc = S.GetReg(c, 0);
        ulong temp = S.GetReg(c, op.R1);
        ulong src = S.GetReg(c, op.R2);
        c.FlagsSub(acc, temp, (acc - temp) & S.Mask, S.Bits);
        if (acc == temp)
        {
            S.SetReg(c, op.R1, src);
        }
        else
        {
            // A register destination is not written back on failure (unlike memory): Intel and AMD
            // hosts both keep bits 63:32 of a 32-bit one; only the accumulator takes TEMP.
            S.SetReg(c, 0, temp);
        }
    }

    /// <summary>Unlocked memory form: the destination is written back even on failure (with its own value).</summary>
    static void CmpxchgM<S>(Cpu c, ref Op op) where S : IOpSize
    {
        ulong la = op.Linear(c);
        ulong acc = S.GetReg(c, 0);
        ulong temp = S.Load(c, la);
        bool equal = acc == temp;
        S.Store(c, la, equal ? S.GetReg(c, op.R2) : temp);
        FinishCmpxchg<S>(c, acc, temp, equal);
    }

    static void CmpxchgLocked<S>(Cpu c, ref Op op) where S : IOpSize
    {
        ulong la = op.Linear(c);
        ulong acc = S.GetReg(c, 0);
        ulong src = S.GetReg(c, op.R2);
        byte* p = c.WritablePointer(la, S.Bits / 8);
        ulong temp;
        if (p == null)
        {
            lock (c.SplitLock)
            {
                temp = S.Load(c, la);
                S.Store(c, la, temp == acc ? src : temp);
            }
        }
        else
        {
            temp = S.CompareExchange(p, src, acc); // a failed compare leaves memory as it was: the write-back of TEMP
        }
        FinishCmpxchg<S>(c, acc, temp, acc == temp);
    }

    static void FinishCmpxchg<S>(Cpu c, ulong acc, ulong temp, bool equal) where S : IOpSize
    {
        c.FlagsSub(acc, temp, (acc - temp) & S.Mask, S.Bits);
        if (!equal)
        {
            S.SetReg(c, 0, temp);
        }
    }

    // ------------------------------------------------------------------ XADD

    static bool BindXadd(in Instruction ins, ref Op op)
    {
        bool mem = ins.Op0Kind == OpKind.Memory;
        bool locked = (op.Flags & OpFlags.Lock) != 0;
        if (locked && !mem)
        {
            return Alu.BindUd(ref op);
        }
        op.R2 = Binder.Slot(ins.Op1Register);
        op.Exec = !mem ? Binder.BySize(op.Size, &XaddR<S8>, &XaddR<S16>, &XaddR<S32>, &XaddR<S64>)
            : locked ? Binder.BySize(op.Size, &XaddLocked<S8>, &XaddLocked<S16>, &XaddLocked<S32>, &XaddLocked<S64>)
            : Binder.BySize(op.Size, &XaddM<S8>, &XaddM<S16>, &XaddM<S32>, &XaddM<S64>);
        return true;
    }

    /// <summary>TEMP ← SRC + DEST; SRC ← DEST; DEST ← TEMP (so with one register for both, it gets the sum).</summary>
    static void XaddR<S>(Cpu c, ref Op op) where S : IOpSize
    {
        ulong d = S.GetReg(c, op.R1), s = S.GetReg(c, op.R2);
        ulong sum = (d + s) & S.Mask;
        c.FlagsAdd(d, s, sum, S.Bits);
        S.SetReg(c, op.R2, d);
        S.SetReg(c, op.R1, sum);
    }

    static void XaddM<S>(Cpu c, ref Op op) where S : IOpSize
    {
        ulong la = op.Linear(c);
        ulong d = S.Load(c, la), s = S.GetReg(c, op.R2);
        ulong sum = (d + s) & S.Mask;
        S.Store(c, la, sum);
        c.FlagsAdd(d, s, sum, S.Bits);
        S.SetReg(c, op.R2, d);
    }

    static void XaddLocked<S>(Cpu c, ref Op op) where S : IOpSize
    {
        ulong la = op.Linear(c);
        ulong s = S.GetReg(c, op.R2);
        byte* p = c.WritablePointer(la, S.Bits / 8);
        ulong d;
        if (p == null)
        {
            lock (c.SplitLock)
            {
                d = S.Load(c, la);
                S.Store(c, la, (d + s) & S.Mask);
            }
        }
        else
        {
            do
            {
                d = S.LoadHost(p);
            }
            while (S.CompareExchange(p, (d + s) & S.Mask, d) != d);
        }
        c.FlagsAdd(d, s, (d + s) & S.Mask, S.Bits);
        S.SetReg(c, op.R2, d);
    }

    // ------------------------------------------------------------------ CMPXCHG8B / CMPXCHG16B

    static bool BindCmpxchg8b(in Instruction ins, ref Op op)
    {
        if (ins.Op0Kind != OpKind.Memory)
        {
            return Alu.BindUd(ref op); // the register form is #UD (SDM CMPXCHG8B)
        }
        op.Exec = &Cmpxchg8b;
        return true;
    }

    static bool BindCmpxchg16b(in Instruction ins, ref Op op)
    {
        if (ins.Op0Kind != OpKind.Memory)
        {
            return Alu.BindUd(ref op);
        }
        op.Exec = &Cmpxchg16b;
        return true;
    }

    /// <summary>Sets ZF only (CMPXCHG8B/16B leave CF, PF, AF, SF, OF unchanged).</summary>
    static void SetZfOnly(Cpu c, bool zf)
    {
        ulong f = c.GetFlags();
        c.SetArithFlags(zf ? f | RFlags.ZF : f & ~RFlags.ZF);
    }

    /// <summary>
    /// CMPXCHG8B m64: compare EDX:EAX with m64; equal: ZF = 1, m64 ← ECX:EBX; else ZF = 0,
    /// EDX:EAX ← m64 (and m64 written back). Always performed atomically here (LOCK or not: an
    /// unlocked one may legally be atomic too).
    /// </summary>
    static void Cmpxchg8b(Cpu c, ref Op op)
    {
        ulong la = op.Linear(c);
        ulong expected = ((ulong)(uint)c.Regs.Gpr[2] << 32) | (uint)c.Regs.Gpr[0];
        ulong desired = ((ulong)(uint)c.Regs.Gpr[1] << 32) | (uint)c.Regs.Gpr[3];
        byte* p = c.WritablePointer(la, 8);
        ulong old;
        if (p == null)
        {
            lock (c.SplitLock)
            {
                old = c.Read64(la);
                c.Write64(la, old == expected ? desired : old);
            }
        }
        else
        {
            old = Interlocked.CompareExchange(ref *(ulong*)p, desired, expected);
        }
        bool equal = old == expected;
        SetZfOnly(c, equal);
        if (!equal)
        {
            c.Regs.Gpr[0] = (uint)old;         // 32-bit register writes: zero-extended in 64-bit mode
            c.Regs.Gpr[2] = (uint)(old >> 32);
        }
    }

    /// <summary>
    /// CMPXCHG16B m128: compare RDX:RAX with m128; equal: m128 ← RCX:RBX. The operand must be
    /// 16-byte aligned (#GP(0) otherwise, SDM CMPXCHG16B "Protected Mode Exceptions").
    /// </summary>
    static void Cmpxchg16b(Cpu c, ref Op op)
    {
        ulong la = op.Linear(c);
        if ((la & 15) != 0)
        {
            throw c.GeneralProtection();
        }
        ulong expLo = c.Regs.Gpr[0], expHi = c.Regs.Gpr[2];
        ulong newLo = c.Regs.Gpr[3], newHi = c.Regs.Gpr[1];
        ulong oldLo, oldHi;
        byte* p = c.WritablePointer(la, 16); // aligned: never straddles a page; checks write access (#PF)
        lock (c.SplitLock)
        {
            if (p != null)
            {
                ulong* q = (ulong*)p;
                oldLo = Volatile.Read(ref q[0]);
                oldHi = Volatile.Read(ref q[1]);
                if (oldLo == expLo && oldHi == expHi)
                {
                    q[0] = newLo;
                    q[1] = newHi;
                }
            }
            else
            {
                oldLo = c.Read64(la);
                oldHi = c.Read64(la + 8);
                bool eq = oldLo == expLo && oldHi == expHi;
                c.Write64(la, eq ? newLo : oldLo);
                c.Write64(la + 8, eq ? newHi : oldHi);
            }
        }
        bool equal = oldLo == expLo && oldHi == expHi;
        SetZfOnly(c, equal);
        if (!equal)
        {
            c.Regs.Gpr[0] = oldLo;
            c.Regs.Gpr[2] = oldHi;
        }
    }
}
