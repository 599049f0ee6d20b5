using System.Runtime.CompilerServices;
using Iced.Intel;
using SharpVisor.Cpu.X86.Decode;

namespace SharpVisor.Cpu.X86.Semantics;

/// <summary>Near control transfers: JMP, Jcc, CALL, RET, JCXZ/JECXZ/JRCXZ, LOOP/LOOPE/LOOPNE (SDM Vol. 2).</summary>
public static unsafe class Control
{
    /// <summary>This family's rows of <see cref="InstructionTable"/> (every form is a branch: Iced's
    /// flow control ends the block and marks it as able to fault, e.g. a non-canonical target).</summary>
    internal static FormSpec[] Forms =>
    [
        new(Mnemonic.Jmp, &BindJmp),
        // Far JMP reads the GDT/LDT (a call gate, a TSS) besides its operand; far CALL also pushes.
        new(Code.Jmp_ptr1616, &BindJmp, FormTraits.ImplicitMemory),
        new(Code.Jmp_ptr1632, &BindJmp, FormTraits.ImplicitMemory),
        new(Code.Jmp_m1616, &BindJmp, FormTraits.ImplicitMemory),
        new(Code.Jmp_m1632, &BindJmp, FormTraits.ImplicitMemory),
        new(Code.Jmp_m1664, &BindJmp, FormTraits.ImplicitMemory),
        new(Mnemonic.Call, &BindCall),
        new(Mnemonic.Ret, &BindRet),
        .. FormSpec.Each(&BindJcc, FormTraits.None, Mnemonic.Jo, Mnemonic.Jno, Mnemonic.Jb, Mnemonic.Jae, Mnemonic.Je, Mnemonic.Jne,
            Mnemonic.Jbe, Mnemonic.Ja, Mnemonic.Js, Mnemonic.Jns, Mnemonic.Jp, Mnemonic.Jnp, Mnemonic.Jl, Mnemonic.Jge, Mnemonic.Jle, Mnemonic.Jg),
        .. FormSpec.Each(&BindJcxz, FormTraits.None, Mnemonic.Jcxz, Mnemonic.Jecxz, Mnemonic.Jrcxz),
        .. FormSpec.Each(&BindLoop, FormTraits.None, Mnemonic.Loop, Mnemonic.Loope, Mnemonic.Loopne),
    ];

    /// <summary>Operand size of a near branch: the width the new RIP is truncated to.</summary>
    static byte BranchSize(in Instruction ins)
    {
        for (int i = 0; i < ins.OpCount; i++)
        {
            switch (ins.GetOpKind(i))
            {
                case OpKind.NearBranch16: return 2;
                case OpKind.NearBranch32: return 4;
                case OpKind.NearBranch64: return 8;
            }
        }
        return ins.CodeSize switch { CodeSize.Code16 => 2, CodeSize.Code32 => 4, _ => 8 };
    }

    static ulong IpMask(int size) => size switch { 2 => 0xFFFF, 4 => 0xFFFF_FFFF, _ => ulong.MaxValue };

    static bool BindJmp(in Instruction ins, ref Op op)
    {
        if (ins.Op0Kind is OpKind.FarBranch16 or OpKind.FarBranch32 || ins.IsJmpFarIndirect)
        {
            return SystemOps.BindFar(ins, ref op);
        }
        if (ins.Op0Kind is OpKind.NearBranch16 or OpKind.NearBranch32 or OpKind.NearBranch64)
        {
            op.Size = BranchSize(ins);
            op.AddrMask = IpMask(op.Size);
            op.Exec = &JmpRel;
            return true;
        }
        op.AddrMask = ins.Op0Kind == OpKind.Memory ? op.AddrMask : ulong.MaxValue;
        op.Imm2 = (uint)op.Size;
        op.Exec = ins.Op0Kind == OpKind.Memory
            ? Binder.BySize(op.Size, null, &JmpM<S16>, &JmpM<S32>, &JmpM<S64>)
            : Binder.BySize(op.Size, null, &JmpR<S16>, &JmpR<S32>, &JmpR<S64>);
        return true;
    }

    // Relative branches keep the IP mask in AddrMask (no memory operand uses it).
    // Every near branch checks its target against the CS limit (a no-op in 64-bit mode and with a 4 GiB CS).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void JmpRel(Cpu c, ref Op op) => Branch(c, (c.NextRip + op.Imm) & op.AddrMask);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void JmpR<S>(Cpu c, ref Op op) where S : IOpSize => Branch(c, S.GetReg(c, op.R1));
    static void JmpM<S>(Cpu c, ref Op op) where S : IOpSize => Branch(c, S.Load(c, op.Linear(c)));

    /// <summary>A near branch to <paramref name="target"/>: checked (CS limit, canonical form), then taken.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void Branch(Cpu c, ulong target)
    {
        c.CheckNearBranchTarget(target);
        c.NextRip = target;
    }

    static bool BindJcc(in Instruction ins, ref Op op)
    {
        op.Sub = DataMove.ConditionOf(ins);
        op.Size = BranchSize(ins);
        op.AddrMask = IpMask(op.Size);
        op.Exec = &Jcc;
        return true;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Jcc(Cpu c, ref Op op)
    {
        if (c.Condition(op.Sub))
        {
            Branch(c, (c.NextRip + op.Imm) & op.AddrMask);
        }
    }

    static bool BindCall(in Instruction ins, ref Op op)
    {
        if (ins.Op0Kind is OpKind.FarBranch16 or OpKind.FarBranch32 || ins.IsCallFarIndirect)
        {
            return SystemOps.BindFar(ins, ref op);
        }
        if (ins.Op0Kind is OpKind.NearBranch16 or OpKind.NearBranch32 or OpKind.NearBranch64)
        {
            op.Size = BranchSize(ins);
            op.AddrMask = IpMask(op.Size);
            op.Exec = Binder.BySize(op.Size, null, &CallRel<S16>, &CallRel<S32>, &CallRel<S64>);
            return true;
        }
        op.Exec = ins.Op0Kind == OpKind.Memory
            ? Binder.BySize(op.Size, null, &CallM<S16>, &CallM<S32>, &CallM<S64>)
            : Binder.BySize(op.Size, null, &CallR<S16>, &CallR<S32>, &CallR<S64>);
        return true;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void CallRel<S>(Cpu c, ref Op op) where S : IOpSize
    {
        ulong ret = c.NextRip;
        ulong target = (ret + op.Imm) & op.AddrMask;
        c.CheckNearBranchTarget(target); // before the push
        c.Push<S>(ret);
        c.NextRip = target;
    }

    static void CallR<S>(Cpu c, ref Op op) where S : IOpSize
    {
        ulong target = S.GetReg(c, op.R1);
        c.CheckNearBranchTarget(target);
        c.Push<S>(c.NextRip);
        c.NextRip = target;
    }

    static void CallM<S>(Cpu c, ref Op op) where S : IOpSize
    {
        ulong target = S.Load(c, op.Linear(c)); // read before the push (a fault leaves RSP alone)
        c.CheckNearBranchTarget(target);
        c.Push<S>(c.NextRip);
        c.NextRip = target;
    }

    static bool BindRet(in Instruction ins, ref Op op)
    {
        op.Size = (byte)(ins.StackPointerIncrement - (ins.OpCount > 0 ? (int)ins.Immediate16 : 0));
        if (op.Size is not (2 or 4 or 8))
        {
            op.Size = (byte)(ins.CodeSize switch { CodeSize.Code16 => 2, CodeSize.Code32 => 4, _ => 8 });
        }
        op.Imm = ins.OpCount > 0 ? (ulong)ins.Immediate16 : 0;
        op.Exec = Binder.BySize(op.Size, null, &Ret<S16>, &Ret<S32>, &Ret<S64>);
        return true;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Ret<S>(Cpu c, ref Op op) where S : IOpSize
    {
        ulong target = c.PeekStack<S>();
        c.CheckNearBranchTarget(target);
        c.AdjustStack((ulong)(S.Bits / 8) + op.Imm);
        c.NextRip = target;
    }

    /// <summary>
    /// Width of the count register of JCXZ/JECXZ/JRCXZ and LOOP/LOOPE/LOOPNE: CX, ECX or RCX by the
    /// ADDRESS size, not the operand size (SDM Vol. 2A Jcc: "JRCXZ ... if RCX register is 0", with 67H
    /// selecting JECXZ in 64-bit mode; LOOP/LOOPcc: "IF AddressSize = 32 THEN Count is ECX"). Iced names
    /// it in the mnemonic for the jumps and at the end of the code for the loops (Loop_rel8_64_ECX).
    /// </summary>
    static byte CountSize(in Instruction ins) => ins.Mnemonic switch
    {
        Mnemonic.Jcxz => 2,
        Mnemonic.Jecxz => 4,
        Mnemonic.Jrcxz => 8,
        _ => s_loopCountSize[ins.Code],
    };

    static readonly Dictionary<Code, byte> s_loopCountSize = BuildLoopCountSizes();

    static Dictionary<Code, byte> BuildLoopCountSizes()
    {
        var d = new Dictionary<Code, byte>();
        foreach (var code in Enum.GetValues<Code>())
        {
            string n = code.ToString();
            if (n.StartsWith("Loop", StringComparison.Ordinal))
            {
                d[code] = n.EndsWith("_RCX", StringComparison.Ordinal) ? (byte)8 : n.EndsWith("_ECX", StringComparison.Ordinal) ? (byte)4 : (byte)2;
            }
        }
        return d;
    }

    static bool BindJcxz(in Instruction ins, ref Op op)
    {
        op.Size = BranchSize(ins);
        op.AddrMask = IpMask(op.Size);
        op.Aux = CountSize(ins);
        op.Exec = &Jcxz;
        return true;
    }

    static void Jcxz(Cpu c, ref Op op)
    {
        if ((c.Regs.Gpr[1] & IpMask(op.Aux)) == 0)
        {
            Branch(c, (c.NextRip + op.Imm) & op.AddrMask);
        }
    }

    static bool BindLoop(in Instruction ins, ref Op op)
    {
        op.Size = BranchSize(ins);
        op.AddrMask = IpMask(op.Size);
        op.Aux = CountSize(ins);
        op.Sub = ins.Mnemonic switch { Mnemonic.Loope => 1, Mnemonic.Loopne => 2, _ => 0 };
        op.Exec = &Loop;
        return true;
    }

    /// <summary>
    /// LOOP/LOOPE/LOOPNE: decrement the count register (no flags) and branch while non-zero (and ZF
    /// condition). The count is written as CX (bits 63:16 kept), ECX (zero-extended, as every 32-bit
    /// register write: SDM Vol. 1 3.4.1.1) or RCX — what the host does with 67H LOOP in 64-bit mode.
    /// </summary>
    static void Loop(Cpu c, ref Op op)
    {
        ulong mask = IpMask(op.Aux);
        ulong count = (c.Regs.Gpr[1] - 1) & mask;
        bool take = count != 0 && op.Sub switch { 1 => c.ZF(), 2 => !c.ZF(), _ => true };
        if (take)
        {
            c.CheckNearBranchTarget((c.NextRip + op.Imm) & op.AddrMask); // faults before the count changes
            c.NextRip = (c.NextRip + op.Imm) & op.AddrMask;
        }
        StringOps.SetAddrReg(c, 1, count, mask);
    }
}
