using System.Runtime.CompilerServices;
using Iced.Intel;
using SharpVisor.Cpu.X86.Decode;
using IcedReg = Iced.Intel.Register;

namespace SharpVisor.Cpu.X86.Semantics;

/// <summary>
/// Data movement: MOV (incl. segment registers), MOVZX/MOVSX/MOVSXD, LEA, XCHG, CMOVcc, SETcc, NOP,
/// CBW/CWDE/CDQE, CWD/CDQ/CQO, BSWAP (SDM Vol. 2).
/// </summary>
public static unsafe class DataMove
{
    const FormTraits MovToSreg = FormTraits.MayFault | FormTraits.ChangesMode | FormTraits.ImplicitMemory;

    /// <summary>This family's rows of <see cref="InstructionTable"/>.</summary>
    internal static FormSpec[] Forms =>
    [
        new(Mnemonic.Mov, &BindMov),
        // MOV to a segment register reads the descriptor table, faults on a bad selector, changes the
        // segment bases and checks the block's code relies on, and for SS opens an interrupt shadow
        // (the Code does not say which register, so the row says the first).
        new(Code.Mov_Sreg_rm16, &BindMov, MovToSreg),
        new(Code.Mov_Sreg_r32m16, &BindMov, MovToSreg),
        new(Code.Mov_Sreg_r64m16, &BindMov, MovToSreg),
        // MOV to and from control and debug registers (SystemOps.BindMovSystem): CPL 0 only (Iced: privileged).
        new(Code.Mov_cr_r32, &BindMov, FormTraits.ChangesMode, VmExit.ControlRegisterAccess),
        new(Code.Mov_cr_r64, &BindMov, FormTraits.ChangesMode, VmExit.ControlRegisterAccess),
        new(Code.Mov_r32_cr, &BindMov, FormTraits.None, VmExit.ControlRegisterAccess),
        new(Code.Mov_r64_cr, &BindMov, FormTraits.None, VmExit.ControlRegisterAccess),
        new(Code.Mov_dr_r32, &BindMov, FormTraits.ChangesMode, VmExit.MovDr),
        new(Code.Mov_dr_r64, &BindMov, FormTraits.ChangesMode, VmExit.MovDr),
        new(Code.Mov_r32_dr, &BindMov, FormTraits.None, VmExit.MovDr),
        new(Code.Mov_r64_dr, &BindMov, FormTraits.None, VmExit.MovDr),
        // The 386/486 test registers do not exist on later processors.
        FormSpec.NotImplemented(Code.Mov_r32_tr),
        FormSpec.NotImplemented(Code.Mov_tr_r32),
        new(Mnemonic.Movzx, &BindExtend),
        new(Mnemonic.Movsx, &BindExtend),
        new(Mnemonic.Movsxd, &BindExtend),
        new(Mnemonic.Lea, &BindLea),
        new(Mnemonic.Xchg, &BindXchg),
        new(Mnemonic.Nop, &BindNop),
        .. FormSpec.Each(&BindConvert, FormTraits.None, Mnemonic.Cbw, Mnemonic.Cwde, Mnemonic.Cdqe, Mnemonic.Cwd, Mnemonic.Cdq, Mnemonic.Cqo),
        new(Mnemonic.Bswap, &BindBswap),
        .. FormSpec.Each(&BindCmov, FormTraits.None, Mnemonic.Cmovo, Mnemonic.Cmovno, Mnemonic.Cmovb, Mnemonic.Cmovae, Mnemonic.Cmove,
            Mnemonic.Cmovne, Mnemonic.Cmovbe, Mnemonic.Cmova, Mnemonic.Cmovs, Mnemonic.Cmovns, Mnemonic.Cmovp, Mnemonic.Cmovnp,
            Mnemonic.Cmovl, Mnemonic.Cmovge, Mnemonic.Cmovle, Mnemonic.Cmovg),
        .. FormSpec.Each(&BindSetcc, FormTraits.None, Mnemonic.Seto, Mnemonic.Setno, Mnemonic.Setb, Mnemonic.Setae, Mnemonic.Sete,
            Mnemonic.Setne, Mnemonic.Setbe, Mnemonic.Seta, Mnemonic.Sets, Mnemonic.Setns, Mnemonic.Setp, Mnemonic.Setnp,
            Mnemonic.Setl, Mnemonic.Setge, Mnemonic.Setle, Mnemonic.Setg),
    ];

    /// <summary>Iced's condition codes run o, no, b, ae... from 1; x86 encodes them from 0 (SDM Vol. 1 B.1).</summary>
    internal static byte ConditionOf(in Instruction ins) => (byte)((int)ins.ConditionCode - 1);

    static bool IsSegment(IcedReg r) => r >= IcedReg.ES && r <= IcedReg.GS;

    static bool BindMov(in Instruction ins, ref Op op)
    {
        IcedReg r0 = ins.Op0Kind == OpKind.Register ? ins.Op0Register : IcedReg.None;
        IcedReg r1 = ins.Op1Kind == OpKind.Register ? ins.Op1Register : IcedReg.None;
        if (r0.IsCR() || r0.IsDR() || r1.IsCR() || r1.IsDR())
        {
            return SystemOps.BindMovSystem(ins, ref op);
        }
        if (IsSegment(r0))
        {
            if (r0 == IcedReg.CS)
            {
                return Alu.BindUd(ref op); // MOV CS is #UD (SDM Vol. 2B MOV)
            }
            op.Sub = Binder.SegSlot(r0);
            op.Exec = ins.Op1Kind == OpKind.Memory ? &MovSregMem : &MovSregReg;
            return true;
        }
        if (IsSegment(r1))
        {
            op.Sub = Binder.SegSlot(r1);
            if (ins.Op0Kind == OpKind.Memory)
            {
                op.Exec = &MovMemSreg; // always a 16-bit store
            }
            else
            {
                op.Exec = Binder.BySize(op.Size, &MovRegSreg<S16>, &MovRegSreg<S16>, &MovRegSreg<S32>, &MovRegSreg<S64>);
            }
            return true;
        }
        bool mem0 = ins.Op0Kind == OpKind.Memory;
        switch (ins.Op1Kind)
        {
            case OpKind.Register when !mem0:
                op.Exec = Binder.BySize(op.Size, &MovRR<S8>, &MovRR<S16>, &MovRR<S32>, &MovRR<S64>);
                return true;
            case OpKind.Register:
                op.Exec = Binder.BySize(op.Size, &MovMR<S8>, &MovMR<S16>, &MovMR<S32>, &MovMR<S64>);
                return true;
            case OpKind.Memory:
                op.Exec = Binder.BySize(op.Size, &MovRM<S8>, &MovRM<S16>, &MovRM<S32>, &MovRM<S64>);
                return true;
            default:
                op.Exec = mem0
                    ? Binder.BySize(op.Size, &MovMI<S8>, &MovMI<S16>, &MovMI<S32>, &MovMI<S64>)
                    : Binder.BySize(op.Size, &MovRI<S8>, &MovRI<S16>, &MovRI<S32>, &MovRI<S64>);
                return true;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void MovRR<S>(Cpu c, ref Op op) where S : IOpSize => S.SetReg(c, op.R1, S.GetReg(c, op.R2));
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void MovRM<S>(Cpu c, ref Op op) where S : IOpSize => S.SetReg(c, op.R1, S.Load(c, op.Linear(c)));
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void MovMR<S>(Cpu c, ref Op op) where S : IOpSize => S.Store(c, op.Linear(c), S.GetReg(c, op.R2));
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void MovRI<S>(Cpu c, ref Op op) where S : IOpSize => S.SetReg(c, op.R1, op.Imm);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void MovMI<S>(Cpu c, ref Op op) where S : IOpSize => S.Store(c, op.Linear(c), op.Imm);

    static void MovSregReg(Cpu c, ref Op op) => LoadSreg(c, op.Sub, (ushort)c.Regs.Gpr[op.R2]);
    static void MovSregMem(Cpu c, ref Op op) => LoadSreg(c, op.Sub, c.Read16(op.Linear(c)));

    static void LoadSreg(Cpu c, byte seg, ushort selector)
    {
        c.LoadDataSegment((Seg)seg, selector);
        if (seg == (byte)Seg.SS)
        {
            c.SetInterruptShadow(); // MOV SS inhibits interrupts until after the next instruction
        }
    }

    static void MovMemSreg(Cpu c, ref Op op) => c.Write16(op.Linear(c), c.Segs[op.Sub].Selector);
    // A register destination gets the selector zero-extended at 32/64 bits (SDM Vol. 2B MOV).
    static void MovRegSreg<S>(Cpu c, ref Op op) where S : IOpSize => S.SetReg(c, op.R1, c.Segs[op.Sub].Selector);

    /// <summary>MOVZX/MOVSX/MOVSXD: Aux = source width in bytes, Sub = 1 when sign-extending.</summary>
    static bool BindExtend(in Instruction ins, ref Op op)
    {
        op.Aux = (byte)(ins.Op1Kind == OpKind.Memory ? ins.MemorySize.GetSize() : ins.Op1Register.GetSize());
        op.Sub = (byte)(ins.Mnemonic == Mnemonic.Movzx ? 0 : 1);
        bool mem = ins.Op1Kind == OpKind.Memory;
        op.Exec = mem
            ? Binder.BySize(op.Size, &ExtendM<S16>, &ExtendM<S16>, &ExtendM<S32>, &ExtendM<S64>)
            : Binder.BySize(op.Size, &ExtendR<S16>, &ExtendR<S16>, &ExtendR<S32>, &ExtendR<S64>);
        return true;
    }

    static ulong Extend(ulong v, ref Op op) => op.Sub == 0 ? v : Cpu.SignExtend(v, op.Aux * 8);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void ExtendR<S>(Cpu c, ref Op op) where S : IOpSize
    {
        ulong v = op.Aux switch { 1 => c.GetReg8(op.R2), 2 => (ushort)c.Regs.Gpr[op.R2], 4 => (uint)c.Regs.Gpr[op.R2], _ => c.Regs.Gpr[op.R2] };
        S.SetReg(c, op.R1, Extend(v, ref op));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void ExtendM<S>(Cpu c, ref Op op) where S : IOpSize =>
        S.SetReg(c, op.R1, Extend(c.ReadSized(op.Linear(c), op.Aux), ref op));

    static bool BindLea(in Instruction ins, ref Op op)
    {
        if (ins.Op1Kind != OpKind.Memory)
        {
            return Alu.BindUd(ref op);
        }
        op.Exec = Binder.BySize(op.Size, &Lea<S16>, &Lea<S16>, &Lea<S32>, &Lea<S64>);
        return true;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Lea<S>(Cpu c, ref Op op) where S : IOpSize => S.SetReg(c, op.R1, op.Offset(c));

    static bool BindXchg(in Instruction ins, ref Op op)
    {
        if (ins.Op0Kind == OpKind.Memory || ins.Op1Kind == OpKind.Memory)
        {
            if (ins.Op1Kind == OpKind.Memory)
            {
                op.R2 = op.R1; // normalise to (memory, register)
            }
            op.Exec = Binder.BySize(op.Size, &XchgM<S8>, &XchgM<S16>, &XchgM<S32>, &XchgM<S64>);
            return true;
        }
        op.Exec = Binder.BySize(op.Size, &XchgRR<S8>, &XchgRR<S16>, &XchgRR<S32>, &XchgRR<S64>);
        return true;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void XchgRR<S>(Cpu c, ref Op op) where S : IOpSize
    {
        ulong a = S.GetReg(c, op.R1), b = S.GetReg(c, op.R2);
        S.SetReg(c, op.R1, b);
        S.SetReg(c, op.R2, a);
    }

    /// <summary>XCHG with memory is always locked (SDM Vol. 2B XCHG).</summary>
    static void XchgM<S>(Cpu c, ref Op op) where S : IOpSize
    {
        ulong la = op.Linear(c);
        ulong reg = S.GetReg(c, op.R2);
        byte* p = c.WritablePointer(la, S.Bits / 8);
        ulong old;
        if (p == null)
        {
            lock (c.SplitLock)
            {
                old = S.Load(c, la);
                S.Store(c, la, reg);
            }
        }
        else
        {
            do
            {
                old = S.LoadHost(p);
            }
            while (S.CompareExchange(p, reg, old) != old);
        }
        S.SetReg(c, op.R2, old);
    }

    static bool BindNop(in Instruction ins, ref Op op)
    {
        op.Exec = &Nop;
        return true;
    }

    static void Nop(Cpu c, ref Op op)
    {
    }

    static bool BindConvert(in Instruction ins, ref Op op)
    {
        op.Exec = ins.Mnemonic switch
        {
            Mnemonic.Cbw => &Cbw,
            Mnemonic.Cwde => &Cwde,
            Mnemonic.Cdqe => &Cdqe,
            Mnemonic.Cwd => &Cwd,
            Mnemonic.Cdq => &Cdq,
            _ => &Cqo,
        };
        return true;
    }

    static void Cbw(Cpu c, ref Op op) => S16.SetReg(c, 0, (ulong)(long)(sbyte)c.Regs.Gpr[0]);
    static void Cwde(Cpu c, ref Op op) => c.Regs.Gpr[0] = (uint)(int)(short)c.Regs.Gpr[0];
    static void Cdqe(Cpu c, ref Op op) => c.Regs.Gpr[0] = (ulong)(long)(int)c.Regs.Gpr[0];
    static void Cwd(Cpu c, ref Op op) => S16.SetReg(c, 2, (short)c.Regs.Gpr[0] < 0 ? 0xFFFFUL : 0);
    static void Cdq(Cpu c, ref Op op) => c.Regs.Gpr[2] = (int)c.Regs.Gpr[0] < 0 ? 0xFFFF_FFFFUL : 0;
    static void Cqo(Cpu c, ref Op op) => c.Regs.Gpr[2] = (long)c.Regs.Gpr[0] < 0 ? ulong.MaxValue : 0;

    static bool BindBswap(in Instruction ins, ref Op op)
    {
        op.Exec = Binder.BySize(op.Size, &Bswap<S16>, &Bswap<S16>, &Bswap<S32>, &Bswap<S64>);
        return true;
    }

    static void Bswap<S>(Cpu c, ref Op op) where S : IOpSize
    {
        ulong v = S.GetReg(c, op.R1);
        ulong r = S.Bits switch
        {
            16 => 0, // undefined by the SDM; hardware clears the low word
            32 => System.Buffers.Binary.BinaryPrimitives.ReverseEndianness((uint)v),
            _ => System.Buffers.Binary.BinaryPrimitives.ReverseEndianness(v),
        };
        S.SetReg(c, op.R1, r);
    }

    static bool BindCmov(in Instruction ins, ref Op op)
    {
        op.Sub = ConditionOf(ins);
        op.Exec = ins.Op1Kind == OpKind.Memory
            ? Binder.BySize(op.Size, &CmovM<S16>, &CmovM<S16>, &CmovM<S32>, &CmovM<S64>)
            : Binder.BySize(op.Size, &CmovR<S16>, &CmovR<S16>, &CmovR<S32>, &CmovR<S64>);
        return true;
    }

    // A false condition still writes the destination with its own value: a 32-bit CMOV zero-extends.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void CmovR<S>(Cpu c, ref Op op) where S : IOpSize =>
        S.SetReg(c, op.R1, c.Condition(op.Sub) ? S.GetReg(c, op.R2) : S.GetReg(c, op.R1));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void CmovM<S>(Cpu c, ref Op op) where S : IOpSize
    {
        ulong v = S.Load(c, op.Linear(c)); // the source is read (and may fault) whatever the condition
        S.SetReg(c, op.R1, c.Condition(op.Sub) ? v : S.GetReg(c, op.R1));
    }

    static bool BindSetcc(in Instruction ins, ref Op op)
    {
        op.Sub = ConditionOf(ins);
        op.Exec = ins.Op0Kind == OpKind.Memory ? &SetccM : &SetccR;
        return true;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void SetccR(Cpu c, ref Op op) => c.SetReg8(op.R1, c.Condition(op.Sub) ? (byte)1 : (byte)0);
    static void SetccM(Cpu c, ref Op op) => c.Write8(op.Linear(c), c.Condition(op.Sub) ? (byte)1 : (byte)0);
}
