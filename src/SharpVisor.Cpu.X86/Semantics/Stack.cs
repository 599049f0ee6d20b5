using System.Runtime.CompilerServices;
using Iced.Intel;
using SharpVisor.Cpu.X86.Decode;
using IcedReg = Iced.Intel.Register;

namespace SharpVisor.Cpu.X86.Semantics;

/// <summary>PUSH, POP (incl. segment registers), PUSHF/POPF, LEAVE, ENTER, PUSHA/POPA (SDM Vol. 2).</summary>
public static unsafe class Stack
{
    /// <summary>This family's rows of <see cref="InstructionTable"/> (stack forms touch memory and may
    /// fault, as Iced's stack-instruction flag says).</summary>
    internal static FormSpec[] Forms =>
    [
        new(Mnemonic.Push, &BindPush),
        new(Mnemonic.Pop, &BindPop),
        // POP to a segment register: see DataMove's MOV to Sreg; POP SS opens an interrupt shadow.
        new(Code.Popw_ES, &BindPop, PopSreg),
        new(Code.Popd_ES, &BindPop, PopSreg),
        new(Code.Popw_DS, &BindPop, PopSreg),
        new(Code.Popd_DS, &BindPop, PopSreg),
        new(Code.Popw_FS, &BindPop, PopSreg),
        new(Code.Popd_FS, &BindPop, PopSreg),
        new(Code.Popq_FS, &BindPop, PopSreg),
        new(Code.Popw_GS, &BindPop, PopSreg),
        new(Code.Popd_GS, &BindPop, PopSreg),
        new(Code.Popq_GS, &BindPop, PopSreg),
        new(Code.Popw_SS, &BindPop, PopSreg | FormTraits.InterruptShadow),
        new(Code.Popd_SS, &BindPop, PopSreg | FormTraits.InterruptShadow),
        FormSpec.NotImplemented(Code.Popw_CS), // 8086 only: 0F is a prefix since the 286
        .. FormSpec.Each(&BindPushf, FormTraits.MayFault, Mnemonic.Pushf, Mnemonic.Pushfd, Mnemonic.Pushfq), // #GP in V86 mode with IOPL < 3
        // POPF may change IF, TF, AC and IOPL, which the run loop and the alignment checks read.
        .. FormSpec.Each(&BindPopf, FormTraits.MayFault | FormTraits.ChangesMode, Mnemonic.Popf, Mnemonic.Popfd, Mnemonic.Popfq),
        new(Mnemonic.Leave, &BindLeave),
        new(Mnemonic.Enter, &BindEnter),
        new(Mnemonic.Pusha, &BindPusha),
        new(Mnemonic.Pushad, &BindPusha),
        new(Mnemonic.Popa, &BindPopa),
        new(Mnemonic.Popad, &BindPopa),
    ];

    const FormTraits PopSreg = FormTraits.MayFault | FormTraits.ChangesMode | FormTraits.ImplicitMemory;

    /// <summary>Operand size of an implicit stack operation in bytes (Iced knows it from the code).</summary>
    static int StackSize(in Instruction ins) => ins.StackPointerIncrement switch { -2 or 2 => 2, -4 or 4 => 4, _ => 8 };

    static bool BindPush(in Instruction ins, ref Op op)
    {
        op.Size = (byte)StackSize(ins);
        switch (ins.Op0Kind)
        {
            case OpKind.Register when ins.Op0Register >= IcedReg.ES && ins.Op0Register <= IcedReg.GS:
                op.Sub = Binder.SegSlot(ins.Op0Register);
                op.Exec = Binder.BySize(op.Size, null, &PushSeg<S16>, &PushSeg<S32>, &PushSeg<S64>);
                return true;
            case OpKind.Register:
                op.Exec = Binder.BySize(op.Size, null, &PushR<S16>, &PushR<S32>, &PushR<S64>);
                return true;
            case OpKind.Memory:
                op.Exec = Binder.BySize(op.Size, null, &PushM<S16>, &PushM<S32>, &PushM<S64>);
                return true;
            default:
                op.Exec = Binder.BySize(op.Size, null, &PushI<S16>, &PushI<S32>, &PushI<S64>);
                return true;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void PushR<S>(Cpu c, ref Op op) where S : IOpSize => c.Push<S>(S.GetReg(c, op.R1));
    static void PushM<S>(Cpu c, ref Op op) where S : IOpSize => c.Push<S>(S.Load(c, op.Linear(c)));
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void PushI<S>(Cpu c, ref Op op) where S : IOpSize => c.Push<S>(op.Imm);

    /// <summary>PUSH Sreg: the selector, zero-extended (a 32-bit push may write only 16 bits on some CPUs; we write all).</summary>
    static void PushSeg<S>(Cpu c, ref Op op) where S : IOpSize => c.Push<S>(c.Segs[op.Sub].Selector);

    static bool BindPop(in Instruction ins, ref Op op)
    {
        op.Size = (byte)StackSize(ins);
        switch (ins.Op0Kind)
        {
            case OpKind.Register when ins.Op0Register >= IcedReg.ES && ins.Op0Register <= IcedReg.GS:
                op.Sub = Binder.SegSlot(ins.Op0Register);
                op.Exec = Binder.BySize(op.Size, null, &PopSeg<S16>, &PopSeg<S32>, &PopSeg<S64>);
                return true;
            case OpKind.Register:
                op.Exec = Binder.BySize(op.Size, null, &PopR<S16>, &PopR<S32>, &PopR<S64>);
                return true;
            default:
                op.Exec = Binder.BySize(op.Size, null, &PopM<S16>, &PopM<S32>, &PopM<S64>);
                return true;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void PopR<S>(Cpu c, ref Op op) where S : IOpSize
    {
        ulong v = c.PeekStack<S>();
        c.AdjustStack((ulong)(S.Bits / 8));
        S.SetReg(c, op.R1, v); // POP RSP loads the popped value, after the increment
    }

    /// <summary>POP m: the address is computed after RSP is incremented (SDM Vol. 2B POP); a fault leaves RSP unchanged.</summary>
    static void PopM<S>(Cpu c, ref Op op) where S : IOpSize
    {
        ulong v = c.PeekStack<S>();
        ulong oldSp = c.Regs.Gpr[4];
        c.AdjustStack((ulong)(S.Bits / 8));
        try
        {
            S.Store(c, op.Linear(c), v);
        }
        catch (GuestFault)
        {
            c.Regs.Gpr[4] = oldSp;
            throw;
        }
    }

    static void PopSeg<S>(Cpu c, ref Op op) where S : IOpSize
    {
        ulong v = c.PeekStack<S>();
        c.LoadDataSegment((Seg)op.Sub, (ushort)v);
        c.AdjustStack((ulong)(S.Bits / 8));
        if (op.Sub == (byte)Seg.SS)
        {
            c.SetInterruptShadow();
        }
    }

    static bool BindPushf(in Instruction ins, ref Op op)
    {
        op.Size = (byte)StackSize(ins);
        op.Exec = Binder.BySize(op.Size, null, &Pushf<S16>, &Pushf<S32>, &Pushf<S64>);
        return true;
    }

    /// <summary>PUSHF: RFLAGS with VM and RF cleared in the image (SDM Vol. 2B PUSHF).</summary>
    static void Pushf<S>(Cpu c, ref Op op) where S : IOpSize
    {
        if (c.Mode == CpuMode.Virtual8086 && c.Iopl < 3)
        {
            throw c.GeneralProtection();
        }
        c.Push<S>(c.GetFlags() & ~(RFlags.VM | RFlags.RF));
    }

    static bool BindPopf(in Instruction ins, ref Op op)
    {
        op.Size = (byte)StackSize(ins);
        op.Exec = Binder.BySize(op.Size, null, &Popf<S16>, &Popf<S32>, &Popf<S64>);
        return true;
    }

    /// <summary>
    /// POPF: which bits change depends on CPL and IOPL (SDM Vol. 2B POPF, Table 4-15): IOPL only at
    /// CPL 0, IF only when CPL &lt;= IOPL; VM, VIP, VIF never; RF cleared.
    /// </summary>
    static void Popf<S>(Cpu c, ref Op op) where S : IOpSize
    {
        if (c.Mode == CpuMode.Virtual8086 && c.Iopl < 3)
        {
            throw c.GeneralProtection();
        }
        ulong v = c.PeekStack<S>();
        ulong old = c.GetFlags();
        ulong changeable = RFlags.Arith | RFlags.TF | RFlags.DF | RFlags.NT | RFlags.AC | RFlags.ID;
        if (c.Cpl == 0)
        {
            changeable |= RFlags.IOPL;
        }
        if (c.Cpl <= c.Iopl)
        {
            changeable |= RFlags.IF;
        }
        changeable &= S.Mask;
        ulong nf = (old & ~changeable) | (v & changeable);
        nf &= ~RFlags.RF;
        c.AdjustStack((ulong)(S.Bits / 8));
        c.SetFlags(nf);
        if ((nf & RFlags.IF) != 0 && (old & RFlags.IF) == 0)
        {
            c.RecheckInterrupts();
        }
    }

    /// <summary>Operand size of ENTER/LEAVE from the form (Iced's stack increment of ENTER includes the frame size).</summary>
    static int EnterLeaveSize(in Instruction ins) => ins.Code switch
    {
        Code.Enterw_imm16_imm8 or Code.Leavew => 2,
        Code.Enterd_imm16_imm8 or Code.Leaved => 4,
        _ => 8,
    };

    static bool BindLeave(in Instruction ins, ref Op op)
    {
        op.Size = (byte)EnterLeaveSize(ins);
        op.Exec = Binder.BySize(op.Size, null, &Leave<S16>, &Leave<S32>, &Leave<S64>);
        return true;
    }

    /// <summary>LEAVE: (E/R)SP = (E/R)BP per the stack size, then POP (E/R)BP per the operand size.</summary>
    static void Leave<S>(Cpu c, ref Op op) where S : IOpSize
    {
        ulong frame = c.Regs.Gpr[5];
        c.CheckStackAccess(frame & c.StackMask, (uint)(S.Bits / 8), SegmentAccess.Read);
        ulong v = S.Load(c, (c.Regs.SegBase[(int)Seg.SS] + (frame & c.StackMask)) & c.Regs.LinearMask);
        c.Regs.Gpr[4] = (c.Regs.Gpr[4] & ~c.StackMask) | ((frame + (ulong)(S.Bits / 8)) & c.StackMask);
        S.SetReg(c, 5, v);
    }

    static bool BindEnter(in Instruction ins, ref Op op)
    {
        op.Size = (byte)EnterLeaveSize(ins); // not StackSize: ENTER's stack increment is size + frame bytes
        op.Imm = ins.Immediate16;
        op.Imm2 = ins.Immediate8_2nd;
        op.Exec = Binder.BySize(op.Size, null, &Enter<S16>, &Enter<S32>, &Enter<S64>);
        return true;
    }

    /// <summary>ENTER size, level (SDM Vol. 2A ENTER, the nested-procedure algorithm).</summary>
    static void Enter<S>(Cpu c, ref Op op) where S : IOpSize
    {
        int level = (int)(op.Imm2 & 31);
        ulong savedSp = c.Regs.Gpr[4], savedBp = c.Regs.Gpr[5];
        try
        {
            c.Push<S>(S.GetReg(c, 5));
            ulong frameTemp = c.Regs.Gpr[4] & c.StackMask;
            ulong bp = c.Regs.Gpr[5];
            int width = S.Bits / 8;
            for (int i = 1; i < level; i++)
            {
                bp -= (ulong)width;
                c.CheckStackAccess(bp & c.StackMask, (uint)width, SegmentAccess.Read);
                c.Push<S>(S.Load(c, (c.Regs.SegBase[(int)Seg.SS] + (bp & c.StackMask)) & c.Regs.LinearMask));
            }
            if (level > 0)
            {
                c.Push<S>(frameTemp);
            }
            // SDM ENTER "#SS(0) If the new value of the SP or ESP register is outside the stack segment limit".
            // Processors also probe the byte at the new stack pointer for a write: a frame reaching an
            // unmapped page faults on ENTER itself (seen on Intel hosts by the ring-3 instruction test).
            ulong newSp = (c.Regs.Gpr[4] - op.Imm) & c.StackMask;
            c.CheckStackAccess(newSp, 1, SegmentAccess.Write);
            c.Translate((c.Regs.SegBase[(int)Seg.SS] + newSp) & c.Regs.LinearMask, Access.Write, c.Cpl == 3);
            S.SetReg(c, 5, frameTemp);
            c.AdjustStack(0 - op.Imm);
        }
        catch (GuestFault)
        {
            c.Regs.Gpr[4] = savedSp;
            c.Regs.Gpr[5] = savedBp;
            throw;
        }
    }

    static bool BindPusha(in Instruction ins, ref Op op)
    {
        op.Exec = ins.Mnemonic == Mnemonic.Pusha ? &Pusha<S16> : &Pusha<S32>;
        return true;
    }

    static void Pusha<S>(Cpu c, ref Op op) where S : IOpSize
    {
        ulong sp = c.Regs.Gpr[4];
        for (int r = 0; r < 8; r++)
        {
            c.Push<S>(r == 4 ? sp : S.GetReg(c, r));
        }
    }

    static bool BindPopa(in Instruction ins, ref Op op)
    {
        op.Exec = ins.Mnemonic == Mnemonic.Popa ? &Popa<S16> : &Popa<S32>;
        return true;
    }

    static void Popa<S>(Cpu c, ref Op op) where S : IOpSize
    {
        for (int r = 7; r >= 0; r--)
        {
            ulong v = c.Pop<S>();
            if (r != 4)
            {
                S.SetReg(c, r, v);
            }
        }
    }
}
