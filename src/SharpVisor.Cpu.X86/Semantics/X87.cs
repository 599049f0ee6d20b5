using Iced.Intel;
using SharpVisor.Core;
using SharpVisor.Cpu.X86.Decode;
using SharpVisor.Cpu.X86.Fpu;
using static SharpVisor.Cpu.X86.Fpu.X87Stack;

namespace SharpVisor.Cpu.X86.Semantics;

/// <summary>
/// The x87 FPU instructions (Intel SDM Vol. 1 chapter 8, Vol. 2 per instruction) over the bit-exact
/// arithmetic of <see cref="X87Arith"/>. What every handler shares:
/// <list type="bullet">
/// <item>#NM when CR0.EM or CR0.TS is set (WAIT: when CR0.MP and CR0.TS are set), SDM Vol. 3A table 2-2.</item>
/// <item>"Waiting" instructions (all but FNINIT, FNCLEX, FNSTSW, FNSTCW, FNSTENV, FNSAVE) first take a
/// pending unmasked exception (FSW.ES) as #MF when CR0.NE is set (SDM Vol. 1 §8.6).</item>
/// <item>Exceptions (SDM Vol. 1 §8.5): masked ones get the masked response X87Arith already applied;
/// unmasked IE/DE/ZE leave the destination and the stack unchanged; unmasked OE/UE store the
/// rebiased result to a register (nothing to memory); any unmasked one sets ES and B, and the NEXT
/// waiting instruction raises #MF.</item>
/// <item>Stack overflow (push onto a non-empty ST(7)): IE+SF, C1=1, masked → the QNaN indefinite is
/// pushed. Stack underflow (an empty source): IE+SF, C1=0, masked → the indefinite is the result.</item>
/// <item>Non-control instructions record FIP/FCS, the 11-bit opcode and, with a memory operand, FDP/FDS.</item>
/// </list>
/// Op fields: R1/R2 are ST indices (destination, source), Sub the operation, Aux the memory format,
/// Imm the pop count plus option bits, Imm2 the 11-bit x87 opcode (FOP).
/// </summary>
public static unsafe class X87
{
    // Status word bits (SDM Vol. 1 figure 8-4).
    const ushort IE = 0x01, DE = 0x02, ZE = 0x04, OE = 0x08, UE = 0x10, PE = 0x20;
    const ushort C0 = 0x100, C1 = 0x200, C2 = 0x400, C3 = 0x4000;
    const ushort ConditionCodes = C0 | C1 | C2 | C3;

    // op.Aux: memory operand format.
    const byte M32Fp = 1, M64Fp = 2, M80Fp = 3, M16Int = 4, M32Int = 5, M64Int = 6, M80Bcd = 7;

    // op.Imm: bits 0-1 the pop count, then options.
    const ulong PopMask = 3, Quiet = 4, SetsEflags = 8, Truncate = 16, Waits = 32;

    // op.Sub for the arithmetic family: the ModRM reg field of D8 /r.
    const byte Add = 0, Mul = 1, Sub = 4, SubR = 5, Div = 6, DivR = 7;

    /// <summary>This family's rows of <see cref="InstructionTable"/>: every x87 form may fault (#NM with
    /// CR0.EM or TS, #MF for a pending unmasked exception, stack faults through #MF).</summary>
    internal static FormSpec[] Forms => FormSpec.Each(&Bind, FormTraits.MayFault,
        Mnemonic.Fninit, Mnemonic.Finit, Mnemonic.Fnclex, Mnemonic.Fclex, Mnemonic.Fnstsw, Mnemonic.Fstsw,
        Mnemonic.Fnstcw, Mnemonic.Fstcw, Mnemonic.Fldcw, Mnemonic.Fnstenv, Mnemonic.Fstenv, Mnemonic.Fldenv,
        Mnemonic.Fnsave, Mnemonic.Fsave, Mnemonic.Frstor, Mnemonic.Wait, Mnemonic.Ffree, Mnemonic.Ffreep,
        Mnemonic.Fincstp, Mnemonic.Fdecstp, Mnemonic.Fnop, Mnemonic.Fneni, Mnemonic.Feni, Mnemonic.Fndisi,
        Mnemonic.Fdisi, Mnemonic.Fnsetpm, Mnemonic.Fsetpm,
        Mnemonic.Fld, Mnemonic.Fst, Mnemonic.Fstp, Mnemonic.Fstpnce, Mnemonic.Fild, Mnemonic.Fist, Mnemonic.Fistp,
        Mnemonic.Fisttp, Mnemonic.Fbld, Mnemonic.Fbstp, Mnemonic.Fld1, Mnemonic.Fldz, Mnemonic.Fldpi,
        Mnemonic.Fldl2e, Mnemonic.Fldl2t, Mnemonic.Fldlg2, Mnemonic.Fldln2, Mnemonic.Fxch,
        Mnemonic.Fcmovb, Mnemonic.Fcmove, Mnemonic.Fcmovbe, Mnemonic.Fcmovu, Mnemonic.Fcmovnb, Mnemonic.Fcmovne,
        Mnemonic.Fcmovnbe, Mnemonic.Fcmovnu,
        Mnemonic.Fadd, Mnemonic.Faddp, Mnemonic.Fiadd, Mnemonic.Fmul, Mnemonic.Fmulp, Mnemonic.Fimul,
        Mnemonic.Fsub, Mnemonic.Fsubp, Mnemonic.Fisub, Mnemonic.Fsubr, Mnemonic.Fsubrp, Mnemonic.Fisubr,
        Mnemonic.Fdiv, Mnemonic.Fdivp, Mnemonic.Fidiv, Mnemonic.Fdivr, Mnemonic.Fdivrp, Mnemonic.Fidivr,
        Mnemonic.Fcom, Mnemonic.Fcomp, Mnemonic.Fcompp, Mnemonic.Fucom, Mnemonic.Fucomp, Mnemonic.Fucompp,
        Mnemonic.Fcomi, Mnemonic.Fcomip, Mnemonic.Fucomi, Mnemonic.Fucomip, Mnemonic.Ficom, Mnemonic.Ficomp,
        Mnemonic.Ftst, Mnemonic.Fxam, Mnemonic.Fchs, Mnemonic.Fabs, Mnemonic.Fsqrt, Mnemonic.Fprem,
        Mnemonic.Fprem1, Mnemonic.Frndint, Mnemonic.Fscale, Mnemonic.Fxtract, Mnemonic.F2xm1, Mnemonic.Fyl2x,
        Mnemonic.Fyl2xp1, Mnemonic.Fptan, Mnemonic.Fpatan, Mnemonic.Fsin, Mnemonic.Fcos, Mnemonic.Fsincos);

    // ================================================================ binding

    static bool Bind(in Instruction ins, ref Op op)
    {
        ushort fop = FpuOpcode(ins);
        op.Imm2 = fop;
        op.Imm = 0;
        int i = fop & 7; // ST(i) of the register forms: the ModRM r/m field
        switch (ins.Code)
        {
            // ---- control
            case Code.Fninit: op.Exec = &Fninit; return true;
            case Code.Finit: op.Exec = &Finit; return true;
            case Code.Fnclex: op.Exec = &Fnclex; return true;
            case Code.Fclex: op.Exec = &Fclex; return true;
            case Code.Fnstsw_AX: op.Exec = &FnstswAx; return true;
            case Code.Fstsw_AX: op.Imm = Waits; op.Exec = &FnstswAx; return true;
            case Code.Fnstsw_m2byte: op.Exec = &FnstswMem; return true;
            case Code.Fstsw_m2byte: op.Imm = Waits; op.Exec = &FnstswMem; return true;
            case Code.Fnstcw_m2byte: op.Exec = &Fnstcw; return true;
            case Code.Fstcw_m2byte: op.Imm = Waits; op.Exec = &Fnstcw; return true;
            case Code.Fldcw_m2byte: op.Exec = &Fldcw; return true;
            case Code.Fnstenv_m14byte or Code.Fnstenv_m28byte: op.Exec = &Fnstenv; return true;
            case Code.Fstenv_m14byte or Code.Fstenv_m28byte: op.Imm = Waits; op.Exec = &Fnstenv; return true;
            case Code.Fldenv_m14byte or Code.Fldenv_m28byte: op.Exec = &Fldenv; return true;
            case Code.Fnsave_m94byte or Code.Fnsave_m108byte: op.Exec = &Fnsave; return true;
            case Code.Fsave_m94byte or Code.Fsave_m108byte: op.Imm = Waits; op.Exec = &Fnsave; return true;
            case Code.Frstor_m94byte or Code.Frstor_m108byte: op.Exec = &Frstor; return true;
            case Code.Wait: op.Exec = &Fwait; return true;
            case Code.Ffree_sti: op.R1 = (byte)i; op.Exec = &Ffree; return true;
            case Code.Ffreep_sti: op.R1 = (byte)i; op.Imm = 1; op.Exec = &Ffree; return true;
            case Code.Fincstp: op.Sub = 1; op.Exec = &Fincdecstp; return true;
            case Code.Fdecstp: op.Sub = 7; op.Exec = &Fincdecstp; return true;
            case Code.Fnop: op.Exec = &Fnop; return true;
            // 8087/287 leftovers: the 387 and later execute them as no-operations (SDM Vol. 2 appendix A, DB E0/E1/E4).
            case Code.Fneni or Code.Fndisi or Code.Fnsetpm: op.Exec = &LegacyNop; return true;
            case Code.Feni or Code.Fdisi or Code.Fsetpm: op.Imm = Waits; op.Exec = &LegacyNop; return true;

            // ---- loads
            case Code.Fld_m32fp: op.Aux = M32Fp; op.Exec = &FldMem; return true;
            case Code.Fld_m64fp: op.Aux = M64Fp; op.Exec = &FldMem; return true;
            case Code.Fld_m80fp: op.Aux = M80Fp; op.Exec = &FldMem; return true;
            case Code.Fild_m16int: op.Aux = M16Int; op.Exec = &FldMem; return true;
            case Code.Fild_m32int: op.Aux = M32Int; op.Exec = &FldMem; return true;
            case Code.Fild_m64int: op.Aux = M64Int; op.Exec = &FldMem; return true;
            case Code.Fbld_m80bcd: op.Aux = M80Bcd; op.Exec = &FldMem; return true;
            case Code.Fld_sti: op.R2 = (byte)i; op.Exec = &FldReg; return true;
            case Code.Fld1: op.Sub = 0; op.Exec = &FldConstant; return true;
            case Code.Fldl2t: op.Sub = 1; op.Exec = &FldConstant; return true;
            case Code.Fldl2e: op.Sub = 2; op.Exec = &FldConstant; return true;
            case Code.Fldpi: op.Sub = 3; op.Exec = &FldConstant; return true;
            case Code.Fldlg2: op.Sub = 4; op.Exec = &FldConstant; return true;
            case Code.Fldln2: op.Sub = 5; op.Exec = &FldConstant; return true;
            case Code.Fldz: op.Sub = 6; op.Exec = &FldConstant; return true;

            // ---- stores
            case Code.Fst_m32fp: op.Aux = M32Fp; op.Exec = &FstMem; return true;
            case Code.Fstp_m32fp: op.Aux = M32Fp; op.Imm = 1; op.Exec = &FstMem; return true;
            case Code.Fst_m64fp: op.Aux = M64Fp; op.Exec = &FstMem; return true;
            case Code.Fstp_m64fp: op.Aux = M64Fp; op.Imm = 1; op.Exec = &FstMem; return true;
            case Code.Fstp_m80fp: op.Aux = M80Fp; op.Imm = 1; op.Exec = &FstMem; return true;
            case Code.Fist_m16int: op.Aux = M16Int; op.Exec = &FstMem; return true;
            case Code.Fist_m32int: op.Aux = M32Int; op.Exec = &FstMem; return true;
            case Code.Fistp_m16int: op.Aux = M16Int; op.Imm = 1; op.Exec = &FstMem; return true;
            case Code.Fistp_m32int: op.Aux = M32Int; op.Imm = 1; op.Exec = &FstMem; return true;
            case Code.Fistp_m64int: op.Aux = M64Int; op.Imm = 1; op.Exec = &FstMem; return true;
            case Code.Fisttp_m16int: op.Aux = M16Int; op.Imm = 1 | Truncate; op.Exec = &FstMem; return true;
            case Code.Fisttp_m32int: op.Aux = M32Int; op.Imm = 1 | Truncate; op.Exec = &FstMem; return true;
            case Code.Fisttp_m64int: op.Aux = M64Int; op.Imm = 1 | Truncate; op.Exec = &FstMem; return true;
            case Code.Fbstp_m80bcd: op.Aux = M80Bcd; op.Imm = 1; op.Exec = &FstMem; return true;
            case Code.Fst_sti: op.R1 = (byte)i; op.Exec = &FstReg; return true;
            // D9 D8+i: FSTP ST(i) without the empty check (FSTPNCE).
            case Code.Fstpnce_sti: op.R1 = (byte)i; op.Imm = 1 | Quiet; op.Exec = &FstReg; return true;
            // DF D0+i, DF D8+i: reserved aliases of FSTP ST(i) (SDM Vol. 2 appendix A.2.4.2 footnotes).
            case Code.Fstp_sti or Code.Fstp_sti_DFD0 or Code.Fstp_sti_DFD8:
                op.R1 = (byte)i; op.Imm = 1; op.Exec = &FstReg; return true;

            // ---- exchange, conditional move
            case Code.Fxch_st0_sti or Code.Fxch_st0_sti_DDC8 or Code.Fxch_st0_sti_DFC8: op.R2 = (byte)i; op.Exec = &Fxch; return true;
            case Code.Fcmovb_st0_sti: return BindFcmov(ref op, i, 2);
            case Code.Fcmove_st0_sti: return BindFcmov(ref op, i, 4);
            case Code.Fcmovbe_st0_sti: return BindFcmov(ref op, i, 6);
            case Code.Fcmovu_st0_sti: return BindFcmov(ref op, i, 0xA);
            case Code.Fcmovnb_st0_sti: return BindFcmov(ref op, i, 3);
            case Code.Fcmovne_st0_sti: return BindFcmov(ref op, i, 5);
            case Code.Fcmovnbe_st0_sti: return BindFcmov(ref op, i, 7);
            case Code.Fcmovnu_st0_sti: return BindFcmov(ref op, i, 0xB);

            // ---- compares
            case Code.Fcom_m32fp: return BindCompareMem(ref op, M32Fp, 0);
            case Code.Fcom_m64fp: return BindCompareMem(ref op, M64Fp, 0);
            case Code.Fcomp_m32fp: return BindCompareMem(ref op, M32Fp, 1);
            case Code.Fcomp_m64fp: return BindCompareMem(ref op, M64Fp, 1);
            case Code.Ficom_m16int: return BindCompareMem(ref op, M16Int, 0);
            case Code.Ficom_m32int: return BindCompareMem(ref op, M32Int, 0);
            case Code.Ficomp_m16int: return BindCompareMem(ref op, M16Int, 1);
            case Code.Ficomp_m32int: return BindCompareMem(ref op, M32Int, 1);
            case Code.Fcom_st0_sti or Code.Fcom_st0_sti_DCD0: return BindCompareReg(ref op, i, 0);
            case Code.Fcomp_st0_sti or Code.Fcomp_st0_sti_DCD8 or Code.Fcomp_st0_sti_DED0: return BindCompareReg(ref op, i, 1);
            case Code.Fcompp: return BindCompareReg(ref op, 1, 2);
            case Code.Fucom_st0_sti: return BindCompareReg(ref op, i, Quiet);
            case Code.Fucomp_st0_sti: return BindCompareReg(ref op, i, Quiet | 1);
            case Code.Fucompp: return BindCompareReg(ref op, 1, Quiet | 2);
            case Code.Fcomi_st0_sti: return BindCompareReg(ref op, i, SetsEflags);
            case Code.Fcomip_st0_sti: return BindCompareReg(ref op, i, SetsEflags | 1);
            case Code.Fucomi_st0_sti: return BindCompareReg(ref op, i, SetsEflags | Quiet);
            case Code.Fucomip_st0_sti: return BindCompareReg(ref op, i, SetsEflags | Quiet | 1);
            case Code.Ftst: op.Exec = &Ftst; return true;
            case Code.Fxam: op.Exec = &Fxam; return true;

            // ---- one-operand arithmetic on ST(0)
            case Code.Fchs: return BindUnary(ref op, 0);
            case Code.Fabs: return BindUnary(ref op, 1);
            case Code.Fsqrt: return BindUnary(ref op, 2);
            case Code.Frndint: return BindUnary(ref op, 3);
            case Code.F2xm1: return BindUnary(ref op, 4);
            case Code.Fsin: return BindUnary(ref op, 5);
            case Code.Fcos: return BindUnary(ref op, 6);
            // ---- ST(0), ST(1) operations
            case Code.Fscale: op.Sub = 0; op.Exec = &Binary01; return true;
            case Code.Fprem: op.Sub = 1; op.Exec = &Binary01; return true;
            case Code.Fprem1: op.Sub = 2; op.Exec = &Binary01; return true;
            case Code.Fyl2x: op.Sub = 3; op.Imm = 1; op.Exec = &Binary01; return true;
            case Code.Fyl2xp1: op.Sub = 4; op.Imm = 1; op.Exec = &Binary01; return true;
            case Code.Fpatan: op.Sub = 5; op.Imm = 1; op.Exec = &Binary01; return true;
            case Code.Fxtract: op.Sub = 0; op.Exec = &Pushing; return true;
            case Code.Fsincos: op.Sub = 1; op.Exec = &Pushing; return true;
            case Code.Fptan: op.Sub = 2; op.Exec = &Pushing; return true;
        }
        // ---- FADD FMUL FSUB FSUBR FDIV FDIVR and the P and I forms
        byte kind = ins.Mnemonic switch
        {
            Mnemonic.Fadd or Mnemonic.Faddp or Mnemonic.Fiadd => Add,
            Mnemonic.Fmul or Mnemonic.Fmulp or Mnemonic.Fimul => Mul,
            Mnemonic.Fsub or Mnemonic.Fsubp or Mnemonic.Fisub => Sub,
            Mnemonic.Fsubr or Mnemonic.Fsubrp or Mnemonic.Fisubr => SubR,
            Mnemonic.Fdiv or Mnemonic.Fdivp or Mnemonic.Fidiv => Div,
            Mnemonic.Fdivr or Mnemonic.Fdivrp or Mnemonic.Fidivr => DivR,
            _ => 0xFF,
        };
        if (kind == 0xFF)
        {
            return false;
        }
        op.Sub = kind;
        if (ins.Op0Kind == OpKind.Memory)
        {
            op.Aux = ins.MemorySize switch
            {
                MemorySize.Float32 => M32Fp,
                MemorySize.Float64 => M64Fp,
                MemorySize.Int16 => M16Int,
                MemorySize.Int32 => M32Int,
                _ => 0,
            };
            if (op.Aux == 0)
            {
                return false;
            }
            op.Exec = &ArithMem;
            return true;
        }
        // DC and DE forms (bit 10 of the opcode) write ST(i); the D8 forms write ST(0).
        bool toSti = (fop & 0x400) != 0;
        op.R1 = (byte)(toSti ? i : 0);
        op.R2 = (byte)(toSti ? 0 : i);
        op.Imm = ins.Mnemonic is Mnemonic.Faddp or Mnemonic.Fmulp or Mnemonic.Fsubp or Mnemonic.Fsubrp or Mnemonic.Fdivp or Mnemonic.Fdivrp ? 1UL : 0;
        op.Exec = &ArithReg;
        return true;
    }

    static bool BindFcmov(ref Op op, int i, byte cc)
    {
        op.R2 = (byte)i;
        op.Sub = cc;
        op.Exec = &Fcmov;
        return true;
    }

    static bool BindCompareMem(ref Op op, byte format, ulong options)
    {
        op.Aux = format;
        op.Imm = options;
        op.Exec = &CompareMem;
        return true;
    }

    static bool BindCompareReg(ref Op op, int i, ulong options)
    {
        op.R2 = (byte)i;
        op.Imm = options;
        op.Exec = &CompareReg;
        return true;
    }

    static bool BindUnary(ref Op op, byte sub)
    {
        op.Sub = sub;
        op.Exec = &Unary;
        return true;
    }

    [ThreadStatic] static ByteWriter? t_writer;

    /// <summary>
    /// The 11-bit x87 opcode FOP the FPU records (SDM Vol. 1 §8.1.9, figure 8-8): the low 3 bits of
    /// the escape byte (D8-DF) and the ModRM byte. Iced does not keep the raw bytes, so the
    /// instruction is re-encoded once at decode time (Iced keeps the displacement size).
    /// </summary>
    static ushort FpuOpcode(in Instruction ins)
    {
        var w = t_writer ??= new ByteWriter();
        int[] sizes = ins.CodeSize switch { CodeSize.Code16 => [16], CodeSize.Code32 => [32], CodeSize.Code64 => [64], _ => [64, 32, 16] };
        foreach (int bits in sizes)
        {
            w.Count = 0;
            if (!Encoder.Create(bits, w).TryEncode(ins, ins.IP, out _, out _))
            {
                continue;
            }
            for (int k = 0; k + 1 < w.Count; k++)
            {
                if (w.Bytes[k] is >= 0xD8 and <= 0xDF)
                {
                    return (ushort)(((w.Bytes[k] & 7) << 8) | w.Bytes[k + 1]);
                }
            }
        }
        return 0;
    }

    sealed class ByteWriter : CodeWriter
    {
        public readonly byte[] Bytes = new byte[16];
        public int Count;

        public override void WriteByte(byte value)
        {
            if (Count < Bytes.Length)
            {
                Bytes[Count++] = value;
            }
        }
    }

    // ================================================================ shared machinery

    /// <summary>#NM for any x87 instruction when CR0.EM or CR0.TS is set (SDM Vol. 3A table 2-2).</summary>
    static void CheckAvailable(Cpu c)
    {
        if ((c.Cr0Value & (Cr0.EM | Cr0.TS)) != 0)
        {
            throw c.Fault(Vector.NM);
        }
    }

    /// <summary>#NM, then a pending unmasked exception as #MF: the start of every waiting instruction.</summary>
    static void CheckWaiting(Cpu c)
    {
        CheckAvailable(c);
        if ((c.Fpu.Status & ErrorSummary) != 0)
        {
            PendingException(c);
        }
    }

    static void PendingException(Cpu c)
    {
        if ((c.Cr0Value & Cr0.NE) != 0)
        {
            throw c.Fault(Vector.MF);
        }
        // CR0.NE=0 is the PC-compatible FERR#/IGNNE# scheme (SDM Vol. 3A §22.18.2): FERR# goes to
        // IRQ13 through the chipset. That wiring is not modelled: the instruction proceeds.
        c.Log.Once("x87-ferr", "cpu", "x87 exception pending with CR0.NE=0: FERR#/IRQ13 is not modelled, continuing");
    }

    /// <summary>FIP/FCS, FOP and (memory forms) FDP/FDS of a non-control instruction (SDM Vol. 1 §8.1.8).</summary>
    static void NotePointers(Cpu c, ref Op op)
    {
        var f = c.Fpu;
        f.LastIp = c.Rip;
        f.LastCs = c.Segs[(int)Seg.CS].Selector;
        f.LastOpcode = (ushort)op.Imm2;
        if ((op.Flags & OpFlags.MemoryOperand) != 0)
        {
            f.LastDp = op.Offset(c);
            f.LastDs = op.Seg < 6 ? c.Segs[op.Seg].Selector : (ushort)0;
        }
    }

    static X87Control Cw(FpuState f) => new(f.Control);

    static bool Masked(FpuState f, ushort exception) => (f.Control & exception) != 0;

    static void SetConditions(FpuState f, ushort which, ushort values) =>
        f.Status = (ushort)((f.Status & ~which) | (values & which));

    /// <summary>
    /// Records the exceptions an operation raised. Returns false when an unmasked IE, DE or ZE means
    /// the destination and the stack must stay unchanged; then only the highest-priority exception is
    /// recorded, as the operation stopped there (SDM Vol. 1 §8.7, priority IE, DE, ZE, OE/UE, PE).
    /// </summary>
    static bool Signal(FpuState f, X87Status flags)
    {
        ushort raised = (ushort)((ushort)flags & 0x3F);
        ushort unmasked = (ushort)(raised & ~f.Control);
        bool proceed = true;
        if ((unmasked & IE) != 0)
        {
            raised = IE;
            proceed = false;
        }
        else if ((unmasked & DE) != 0)
        {
            raised = DE;
            proceed = false;
        }
        else if ((unmasked & ZE) != 0)
        {
            raised &= DE | ZE;
            proceed = false;
        }
        f.Status |= raised;
        if (unmasked != 0)
        {
            f.Status |= ErrorSummary | Busy;
        }
        return proceed;
    }

    /// <summary>Stack overflow or underflow: IE and SF with C1 = <paramref name="overflow"/>. Returns whether IE is masked.</summary>
    static bool StackFaultResponse(FpuState f, bool overflow)
    {
        f.Status = (ushort)((f.Status & ~C1) | IE | StackFault | (overflow ? C1 : 0));
        if (Masked(f, IE))
        {
            return true;
        }
        f.Status |= ErrorSummary | Busy;
        return false;
    }

    /// <summary>Whether a push may go ahead; on overflow applies the response (masked: the indefinite is pushed).</summary>
    static bool CanPush(FpuState f)
    {
        if (IsEmpty(f, 7))
        {
            return true;
        }
        if (StackFaultResponse(f, overflow: true))
        {
            Push(f, Float80.Indefinite);
        }
        return false;
    }

    static void PopTimes(FpuState f, ulong count)
    {
        for (ulong k = 0; k < count; k++)
        {
            Pop(f);
        }
    }

    /// <summary>
    /// Writes an arithmetic result to ST(dst) and pops, unless an unmasked IE/DE/ZE stops the
    /// instruction. C1 is "rounded up"; C0, C2, C3 are undefined and left as they were.
    /// </summary>
    static void Complete(FpuState f, int dst, Float80 result, X87Status flags, ulong pops)
    {
        bool proceed = Signal(f, flags);
        SetConditions(f, C1, proceed ? (ushort)flags : (ushort)0);
        if (!proceed)
        {
            return;
        }
        Set(f, dst, result);
        PopTimes(f, pops);
    }

    static Float80 ReadFloat80(Cpu c, ulong la)
    {
        ulong mantissa = c.Read64(la);
        ushort se = c.Read16(la + 8);
        return new Float80(mantissa, se);
    }

    /// <summary>Checks that every byte of [la, la+length) is writable (at most two pages) before a multi-part store.</summary>
    static void ProbeWrite(Cpu c, ulong la, int length)
    {
        bool user = c.Cpl == 3;
        c.Translate(la & c.Regs.LinearMask, Access.Write, user);
        c.Translate((la + (ulong)length - 1) & c.Regs.LinearMask, Access.Write, user);
    }

    /// <summary>
    /// Stores an environment or FSAVE image. Alignment checking sees it as one operand aligned to 4
    /// bytes, 2 with a 16-bit operand size (SDM Vol. 3A Table 6-7; the host does not check the parts).
    /// </summary>
    static void WriteBytes(Cpu c, ulong la, ReadOnlySpan<byte> bytes, bool size32)
    {
        c.CheckAlignment(la, size32 ? 4 : 2);
        ProbeWrite(c, la, bytes.Length);
        int k = 0;
        for (; k + 8 <= bytes.Length; k += 8)
        {
            c.Write64NoAlignmentCheck(la + (ulong)k, BitConverter.ToUInt64(bytes[k..]));
        }
        for (; k < bytes.Length; k++)
        {
            c.Write8(la + (ulong)k, bytes[k]);
        }
    }

    /// <summary>Loads an environment or FSAVE image, alignment checked as a whole as <see cref="WriteBytes"/>.</summary>
    static void ReadBytes(Cpu c, ulong la, Span<byte> bytes, bool size32)
    {
        c.CheckAlignment(la, size32 ? 4 : 2);
        int k = 0;
        for (; k + 8 <= bytes.Length; k += 8)
        {
            BitConverter.TryWriteBytes(bytes[k..], c.Read64NoAlignmentCheck(la + (ulong)k));
        }
        for (; k < bytes.Length; k++)
        {
            bytes[k] = c.Read8(la + (ulong)k);
        }
    }

    static bool RealLayout(Cpu c) => c.Mode is CpuMode.Real or CpuMode.Virtual8086;

    // ================================================================ control instructions

    /// <summary>FNINIT (SDM Vol. 2 FINIT): FCW 037Fh, FSW 0, all tags empty, pointers and opcode 0; registers keep their contents.</summary>
    static void Fninit(Cpu c, ref Op op)
    {
        CheckAvailable(c);
        Init(c.Fpu);
    }

    static void Finit(Cpu c, ref Op op)
    {
        CheckWaiting(c);
        Init(c.Fpu);
    }

    static void Init(FpuState f) => f.InitX87();

    /// <summary>FNCLEX: clears the exception flags, SF, ES and B (C0-C3 are undefined: kept).</summary>
    static void Fnclex(Cpu c, ref Op op)
    {
        CheckAvailable(c);
        c.Fpu.Status &= 0x7F00;
    }

    static void Fclex(Cpu c, ref Op op)
    {
        CheckWaiting(c);
        c.Fpu.Status &= 0x7F00;
    }

    static void WaitIfNeeded(Cpu c, ref Op op)
    {
        if ((op.Imm & Waits) != 0)
        {
            CheckWaiting(c);
        }
        else
        {
            CheckAvailable(c);
        }
    }

    static void FnstswAx(Cpu c, ref Op op)
    {
        WaitIfNeeded(c, ref op);
        c.Regs.Gpr[0] = (c.Regs.Gpr[0] & ~0xFFFFUL) | c.Fpu.Status;
    }

    static void FnstswMem(Cpu c, ref Op op)
    {
        WaitIfNeeded(c, ref op);
        c.Write16(op.Linear(c), c.Fpu.Status);
    }

    static void Fnstcw(Cpu c, ref Op op)
    {
        WaitIfNeeded(c, ref op);
        c.Write16(op.Linear(c), c.Fpu.Control);
    }

    /// <summary>FLDCW: unmasking an exception whose flag is set makes it pending (SDM Vol. 2 FLDCW).</summary>
    static void Fldcw(Cpu c, ref Op op)
    {
        CheckWaiting(c);
        ushort cw = c.Read16(op.Linear(c));
        c.Fpu.Control = X87Stack.ControlWord(cw);
        UpdateErrorSummary(c.Fpu);
    }

    /// <summary>FNSTENV: stores the environment, then masks every exception (SDM Vol. 2 FSTENV).</summary>
    static void Fnstenv(Cpu c, ref Op op)
    {
        WaitIfNeeded(c, ref op);
        var f = c.Fpu;
        bool size32 = op.Size >= 28;
        Span<byte> image = stackalloc byte[28];
        image = image[..(size32 ? 28 : 14)];
        X87Environment.Build(f, size32, RealLayout(c), image);
        WriteBytes(c, op.Linear(c), image, size32);
        f.Control |= 0x3F;
        UpdateErrorSummary(f); // nothing is unmasked any more: ES and B clear (as the host shows)
    }

    static void Fldenv(Cpu c, ref Op op)
    {
        CheckWaiting(c);
        bool size32 = op.Size >= 28;
        Span<byte> image = stackalloc byte[28];
        image = image[..(size32 ? 28 : 14)];
        ReadBytes(c, op.Linear(c), image, size32);
        X87Environment.Load(c.Fpu, size32, RealLayout(c), image);
    }

    /// <summary>FNSAVE: the environment, ST(0)..ST(7), then the FNINIT state (SDM Vol. 2 FSAVE).</summary>
    static void Fnsave(Cpu c, ref Op op)
    {
        WaitIfNeeded(c, ref op);
        var f = c.Fpu;
        bool size32 = op.Size >= 108;
        int envSize = size32 ? 28 : 14;
        Span<byte> image = stackalloc byte[X87Environment.MaxImage];
        image = image[..(envSize + 80)];
        X87Environment.Build(f, size32, RealLayout(c), image);
        for (int st = 0; st < 8; st++)
        {
            Float80 v = Get(f, st);
            BitConverter.TryWriteBytes(image[(envSize + st * 10)..], v.Mantissa);
            BitConverter.TryWriteBytes(image[(envSize + st * 10 + 8)..], v.SignExponent);
        }
        WriteBytes(c, op.Linear(c), image, size32);
        Init(f);
    }

    static void Frstor(Cpu c, ref Op op)
    {
        CheckWaiting(c);
        var f = c.Fpu;
        bool size32 = op.Size >= 108;
        int envSize = size32 ? 28 : 14;
        Span<byte> image = stackalloc byte[X87Environment.MaxImage];
        image = image[..(envSize + 80)];
        ReadBytes(c, op.Linear(c), image, size32);
        int top = (BitConverter.ToUInt16(image[(size32 ? 4 : 2)..]) >> 11) & 7;
        for (int st = 0; st < 8; st++)
        {
            int reg = (top + st) & 7;
            f.Mantissa[reg] = BitConverter.ToUInt64(image[(envSize + st * 10)..]);
            f.SignExp[reg] = BitConverter.ToUInt16(image[(envSize + st * 10 + 8)..]);
        }
        X87Environment.Load(f, size32, RealLayout(c), image);
    }

    /// <summary>WAIT/FWAIT: #NM only when CR0.MP and CR0.TS are both set; then any pending exception.</summary>
    static void Fwait(Cpu c, ref Op op)
    {
        if ((c.Cr0Value & (Cr0.MP | Cr0.TS)) == (Cr0.MP | Cr0.TS))
        {
            throw c.Fault(Vector.NM);
        }
        if ((c.Fpu.Status & ErrorSummary) != 0)
        {
            PendingException(c);
        }
    }

    /// <summary>FFREE ST(i): tag empty, TOP unchanged; FFREEP (DF C0+i) also pops.</summary>
    static void Ffree(Cpu c, ref Op op)
    {
        CheckWaiting(c);
        var f = c.Fpu;
        NotePointers(c, ref op);
        SetTag(f, Physical(f, op.R1), TagEmpty);
        f.Status &= unchecked((ushort)~C1); // C0-C3 are undefined (SDM Vol. 2 FFREE); the host clears C1
        if (op.Imm != 0)
        {
            Pop(f);
        }
    }

    /// <summary>FINCSTP/FDECSTP: TOP ± 1 without touching tags or contents; C1 = 0.</summary>
    static void Fincdecstp(Cpu c, ref Op op)
    {
        CheckWaiting(c);
        var f = c.Fpu;
        NotePointers(c, ref op);
        f.Top = f.Top + op.Sub;
        f.Status &= unchecked((ushort)~C1);
    }

    static void Fnop(Cpu c, ref Op op)
    {
        CheckWaiting(c);
        NotePointers(c, ref op);
    }

    static void LegacyNop(Cpu c, ref Op op) => WaitIfNeeded(c, ref op);

    // ================================================================ loads

    static void FldMem(Cpu c, ref Op op)
    {
        CheckWaiting(c);
        var f = c.Fpu;
        ulong la = op.Linear(c);
        X87Status flags = X87Status.None;
        Float80 v;
        switch (op.Aux)
        {
            case M32Fp: v = X87Arith.FromFloat32(c.Read32(la), out flags); break;
            case M64Fp: v = X87Arith.FromFloat64(c.Read64(la), out flags); break;
            case M80Fp: v = ReadFloat80(c, la); break;
            case M16Int: v = X87Arith.FromInt16((short)c.Read16(la)); break;
            case M32Int: v = X87Arith.FromInt32((int)c.Read32(la)); break;
            case M64Int: v = X87Arith.FromInt64((long)c.Read64(la)); break;
            default: v = X87Arith.FromPackedBcd(new PackedBcd(c.Read64(la), c.Read16(la + 8))); break;
        }
        NotePointers(c, ref op);
        if (!CanPush(f))
        {
            return;
        }
        if (Signal(f, flags))
        {
            f.Status &= unchecked((ushort)~C1);
            Push(f, v);
        }
        else
        {
            f.Status &= unchecked((ushort)~C1);
        }
    }

    static void FldReg(Cpu c, ref Op op)
    {
        CheckWaiting(c);
        var f = c.Fpu;
        NotePointers(c, ref op);
        if (IsEmpty(f, op.R2))
        {
            // Underflow takes precedence: masked, the indefinite is pushed whatever ST(7) holds (as the host does).
            if (StackFaultResponse(f, overflow: false))
                Push(f, Float80.Indefinite);
            return;
        }
        Float80 v = Get(f, op.R2);
        if (!CanPush(f))
        {
            return;
        }
        f.Status &= unchecked((ushort)~C1);
        Push(f, v);
    }

    // FLD1, FLDL2T, FLDL2E, FLDPI, FLDLG2, FLDLN2, FLDZ: the nearest-even value, and the value
    // toward zero for the five irrational ones (their 66-bit internal constants round down
    // to it under RC = down or toward zero, SDM Vol. 1 §8.3.8).
    static readonly ulong[] s_constMantissa = [0x8000_0000_0000_0000, 0xD49A_784B_CD1B_8AFE, 0xB8AA_3B29_5C17_F0BC, 0xC90F_DAA2_2168_C235, 0x9A20_9A84_FBCF_F799, 0xB172_17F7_D1CF_79AC, 0];
    static readonly ulong[] s_constRoundedDown = [0x8000_0000_0000_0000, 0xD49A_784B_CD1B_8AFE, 0xB8AA_3B29_5C17_F0BB, 0xC90F_DAA2_2168_C234, 0x9A20_9A84_FBCF_F798, 0xB172_17F7_D1CF_79AB, 0];
    static readonly ulong[] s_constRoundedUp = [0x8000_0000_0000_0000, 0xD49A_784B_CD1B_8AFF, 0xB8AA_3B29_5C17_F0BC, 0xC90F_DAA2_2168_C235, 0x9A20_9A84_FBCF_F799, 0xB172_17F7_D1CF_79AC, 0];
    static readonly ushort[] s_constExponent = [0x3FFF, 0x4000, 0x3FFF, 0x4000, 0x3FFD, 0x3FFE, 0];

    static void FldConstant(Cpu c, ref Op op)
    {
        CheckWaiting(c);
        var f = c.Fpu;
        NotePointers(c, ref op);
        if (!CanPush(f))
        {
            return;
        }
        var table = Cw(f).Rounding switch
        {
            X87Rounding.Down or X87Rounding.TowardZero => s_constRoundedDown,
            X87Rounding.Up => s_constRoundedUp,
            _ => s_constMantissa,
        };
        f.Status &= unchecked((ushort)~C1);
        Push(f, new Float80(table[op.Sub], s_constExponent[op.Sub]));
    }

    // ================================================================ stores

    static void FstMem(Cpu c, ref Op op)
    {
        CheckWaiting(c);
        var f = c.Fpu;
        X87Control cw = Cw(f);
        ulong la = op.Linear(c);
        ulong pops = op.Imm & PopMask;
        bool truncate = (op.Imm & Truncate) != 0;
        bool empty = IsEmpty(f, 0);
        Float80 v = empty ? Float80.Indefinite : Get(f, 0);
        X87Status flags = X87Status.None;
        ulong low = 0;
        ushort high = 0;
        switch (op.Aux)
        {
            case M32Fp: low = X87Arith.ToFloat32(v, cw, out flags); break;
            case M64Fp: low = X87Arith.ToFloat64(v, cw, out flags); break;
            case M80Fp: low = v.Mantissa; high = v.SignExponent; break;
            case M16Int: low = (ushort)(truncate ? X87Arith.ToInt16Truncate(v, out flags) : X87Arith.ToInt16(v, cw, out flags)); break;
            case M32Int: low = (uint)(truncate ? X87Arith.ToInt32Truncate(v, out flags) : X87Arith.ToInt32(v, cw, out flags)); break;
            case M64Int: low = (ulong)(truncate ? X87Arith.ToInt64Truncate(v, out flags) : X87Arith.ToInt64(v, cw, out flags)); break;
            default:
                PackedBcd bcd = X87Arith.ToPackedBcd(v, cw, out flags);
                low = bcd.Low;
                high = bcd.High;
                break;
        }
        bool store;
        if (empty)
        {
            // Stack underflow: the masked response stores the indefinite of the destination format.
            store = Masked(f, IE);
            flags = X87Status.None;
        }
        else
        {
            // Unmasked IE, OE or UE: memory is not written (SDM Vol. 1 §8.5.1, 8.5.3, 8.5.4).
            store = ((ushort)flags & ~f.Control & (IE | OE | UE)) == 0;
        }
        if (store)
        {
            switch (op.Aux)
            {
                case M32Fp or M32Int: c.Write32(la, (uint)low); break;
                case M64Fp or M64Int: c.Write64(la, low); break;
                case M16Int: c.Write16(la, (ushort)low); break;
                default:
                    ProbeWrite(c, la, 10);
                    c.Write64(la, low);
                    c.Write16(la + 8, high);
                    break;
            }
        }
        NotePointers(c, ref op);
        if (empty)
        {
            StackFaultResponse(f, overflow: false);
        }
        else
        {
            Signal(f, flags);
            SetConditions(f, C1, (ushort)flags);
        }
        if (store)
        {
            PopTimes(f, pops);
        }
    }

    /// <summary>FST/FSTP ST(i): a plain copy (no exception for any encoding); C1 = 0.</summary>
    static void FstReg(Cpu c, ref Op op)
    {
        CheckWaiting(c);
        var f = c.Fpu;
        NotePointers(c, ref op);
        Float80 v;
        if (IsEmpty(f, 0) && (op.Imm & Quiet) != 0)
        {
            // FSTPNCE with an empty ST(0): no stack fault and nothing written, only the pop; C1 = 0 (as the host does).
            f.Status &= unchecked((ushort)~C1);
            PopTimes(f, op.Imm & PopMask);
            return;
        }
        if (IsEmpty(f, 0))
        {
            if (!StackFaultResponse(f, overflow: false))
                return;
            v = Float80.Indefinite;
        }
        else
        {
            v = Get(f, 0);
            f.Status &= unchecked((ushort)~C1);
        }
        Set(f, op.R1, v);
        PopTimes(f, op.Imm & PopMask);
    }

    // ================================================================ FXCH, FCMOVcc

    static void Fxch(Cpu c, ref Op op)
    {
        CheckWaiting(c);
        var f = c.Fpu;
        NotePointers(c, ref op);
        int i = op.R2;
        bool e0 = IsEmpty(f, 0), ei = IsEmpty(f, i);
        if (e0 || ei)
        {
            if (!StackFaultResponse(f, overflow: false))
                return;
            // Masked response: each empty register is taken as the indefinite, then they are exchanged.
        }
        else
        {
            f.Status &= unchecked((ushort)~C1);
        }
        Float80 a = e0 ? Float80.Indefinite : Get(f, 0);
        Float80 b = ei ? Float80.Indefinite : Get(f, i);
        Set(f, 0, b);
        Set(f, i, a);
    }

    static void Fcmov(Cpu c, ref Op op)
    {
        CheckWaiting(c);
        var f = c.Fpu;
        NotePointers(c, ref op);
        if (IsEmpty(f, 0) || IsEmpty(f, op.R2))
        {
            // Masked: ST(0) gets the indefinite whatever the condition (as the host does).
            if (StackFaultResponse(f, overflow: false))
                Set(f, 0, Float80.Indefinite);
            return;
        }
        // C1 is only defined for a stack underflow (SDM Vol. 2 FCMOVcc): otherwise left as is, as on the host.
        if (c.Condition(op.Sub))
        {
            Set(f, 0, Get(f, op.R2));
        }
    }

    // ================================================================ arithmetic

    static Float80 Compute(byte kind, Float80 dst, Float80 src, X87Control cw, out X87Status flags) => kind switch
    {
        Add => X87Arith.Add(dst, src, cw, out flags),
        Mul => X87Arith.Mul(dst, src, cw, out flags),
        Sub => X87Arith.Sub(dst, src, cw, out flags),
        SubR => X87Arith.Sub(src, dst, cw, out flags),
        Div => X87Arith.Div(dst, src, cw, out flags),
        _ => X87Arith.Div(src, dst, cw, out flags),
    };

    static Float80 ReadOperand(Cpu c, ref Op op, out X87Status conversion)
    {
        ulong la = op.Linear(c);
        conversion = X87Status.None;
        return op.Aux switch
        {
            M32Fp => X87Arith.Float32Operand(c.Read32(la), out conversion),
            M64Fp => X87Arith.Float64Operand(c.Read64(la), out conversion),
            M16Int => X87Arith.FromInt16((short)c.Read16(la)),
            _ => X87Arith.FromInt32((int)c.Read32(la)),
        };
    }

    static void ArithMem(Cpu c, ref Op op)
    {
        CheckWaiting(c);
        var f = c.Fpu;
        Float80 src = ReadOperand(c, ref op, out X87Status conversion);
        NotePointers(c, ref op);
        if (IsEmpty(f, 0))
        {
            if (StackFaultResponse(f, overflow: false))
                Set(f, 0, Float80.Indefinite);
            return;
        }
        Float80 dst = Get(f, 0);
        Float80 r = Compute(op.Sub, dst, src, Cw(f), out X87Status flags);
        Complete(f, 0, r, X87Arith.CombineOperandFlags(flags, conversion, dst), 0);
    }

    static void ArithReg(Cpu c, ref Op op)
    {
        CheckWaiting(c);
        var f = c.Fpu;
        NotePointers(c, ref op);
        ulong pops = op.Imm & PopMask;
        if (IsEmpty(f, op.R1) || IsEmpty(f, op.R2))
        {
            if (StackFaultResponse(f, overflow: false))
            {
                Set(f, op.R1, Float80.Indefinite);
                PopTimes(f, pops);
            }
            return;
        }
        Float80 r = Compute(op.Sub, Get(f, op.R1), Get(f, op.R2), Cw(f), out X87Status flags);
        Complete(f, op.R1, r, flags, pops);
    }

    // ================================================================ compares

    /// <summary>
    /// Condition codes (FCOM…) or ZF/PF/CF (FCOMI…, with OF, SF, AF cleared) from C3/C2/C0; C1 = 0.
    /// Unmasked IE/DE: nothing is set and nothing popped (SDM Vol. 2 FCOM, FCOMI).
    /// </summary>
    static void FinishCompare(Cpu c, ref Op op, X87Status flags)
    {
        var f = c.Fpu;
        if (!Signal(f, flags))
        {
            SetConditions(f, C1, 0);
            if ((op.Imm & SetsEflags) != 0)
            {
                // Intel: ZF, PF, CF are set only when the exception is masked; OF, SF, AF are cleared
                // regardless (SDM Vol. 2 FCOMI). (AMD sets "unordered" even when unmasked.)
                c.SetArithFlags(c.GetFlags() & (RFlags.ZF | RFlags.PF | RFlags.CF));
            }
            return;
        }
        SetCompareResult(c, ref op, (ushort)flags);
        PopTimes(f, op.Imm & PopMask);
    }

    static void SetCompareResult(Cpu c, ref Op op, ushort codes)
    {
        var f = c.Fpu;
        if ((op.Imm & SetsEflags) != 0)
        {
            SetConditions(f, C1, 0);
            ulong flags = ((codes & C3) != 0 ? RFlags.ZF : 0) | ((codes & C2) != 0 ? RFlags.PF : 0) | ((codes & C0) != 0 ? RFlags.CF : 0);
            c.SetArithFlags(flags);
        }
        else
        {
            SetConditions(f, ConditionCodes, (ushort)(codes & (C0 | C2 | C3)));
        }
    }

    static void CompareUnderflow(Cpu c, ref Op op)
    {
        if (StackFaultResponse(c.Fpu, overflow: false))
        {
            SetCompareResult(c, ref op, C0 | C2 | C3);
            PopTimes(c.Fpu, op.Imm & PopMask);
        }
        else if ((op.Imm & SetsEflags) != 0)
        {
            c.SetArithFlags(c.GetFlags() & (RFlags.ZF | RFlags.PF | RFlags.CF)); // OF, SF, AF cleared regardless
        }
    }

    static void CompareMem(Cpu c, ref Op op)
    {
        CheckWaiting(c);
        var f = c.Fpu;
        Float80 src = ReadOperand(c, ref op, out X87Status conversion);
        NotePointers(c, ref op);
        if (IsEmpty(f, 0))
        {
            CompareUnderflow(c, ref op);
            return;
        }
        Float80 a = Get(f, 0);
        X87Status flags = X87Arith.Compare(a, src, quiet: false);
        FinishCompare(c, ref op, X87Arith.CombineOperandFlags(flags, conversion, a));
    }

    static void CompareReg(Cpu c, ref Op op)
    {
        CheckWaiting(c);
        var f = c.Fpu;
        NotePointers(c, ref op);
        if (IsEmpty(f, 0) || IsEmpty(f, op.R2))
        {
            CompareUnderflow(c, ref op);
            return;
        }
        FinishCompare(c, ref op, X87Arith.Compare(Get(f, 0), Get(f, op.R2), quiet: (op.Imm & Quiet) != 0));
    }

    static void Ftst(Cpu c, ref Op op)
    {
        CheckWaiting(c);
        var f = c.Fpu;
        NotePointers(c, ref op);
        if (IsEmpty(f, 0))
        {
            CompareUnderflow(c, ref op);
            return;
        }
        FinishCompare(c, ref op, X87Arith.Test(Get(f, 0)));
    }

    /// <summary>FXAM: class in C3 C2 C0, sign in C1; "empty" from the tag; never an exception.</summary>
    static void Fxam(Cpu c, ref Op op)
    {
        CheckWaiting(c);
        var f = c.Fpu;
        NotePointers(c, ref op);
        Float80 v = Get(f, 0);
        X87Status codes = IsEmpty(f, 0) ? X87Arith.ExamineEmpty(v.IsNegative) : X87Arith.Examine(v);
        SetConditions(f, ConditionCodes, (ushort)codes);
    }

    // ================================================================ ST(0) operations

    static void Unary(Cpu c, ref Op op)
    {
        CheckWaiting(c);
        var f = c.Fpu;
        NotePointers(c, ref op);
        if (IsEmpty(f, 0))
        {
            if (op.Sub >= 5)
                f.Status &= unchecked((ushort)~C2); // FSIN/FCOS: C2 = 0 unless out of range
            if (StackFaultResponse(f, overflow: false))
                Set(f, 0, Float80.Indefinite);
            return;
        }
        Float80 a = Get(f, 0);
        X87Control cw = Cw(f);
        X87Status flags = X87Status.None;
        Float80 r = op.Sub switch
        {
            0 => X87Arith.ChangeSign(a),
            1 => X87Arith.Abs(a),
            2 => X87Arith.Sqrt(a, cw, out flags),
            3 => X87Arith.RoundToInteger(a, cw, out flags),
            4 => X87Arith.Exp2M1(a, cw, out flags),
            5 => X87Arith.Sin(a, cw, out flags),
            _ => X87Arith.Cos(a, cw, out flags),
        };
        if (op.Sub >= 5)
        {
            // FSIN/FCOS: C2 = 1 when the operand is out of range (|x| ≥ 2^63), ST(0) then unchanged.
            bool proceed = Signal(f, flags);
            SetConditions(f, C1 | C2, proceed ? (ushort)flags : (ushort)0);
            if (proceed)
                Set(f, 0, r);
            return;
        }
        Complete(f, 0, r, flags, 0);
    }

    /// <summary>FSCALE, FPREM, FPREM1 (result to ST(0)); FYL2X, FYL2XP1, FPATAN (result to ST(1), then pop).</summary>
    static void Binary01(Cpu c, ref Op op)
    {
        CheckWaiting(c);
        var f = c.Fpu;
        NotePointers(c, ref op);
        ulong pops = op.Imm & PopMask;
        int dst = pops == 0 ? 0 : 1;
        if (IsEmpty(f, 0) || IsEmpty(f, 1))
        {
            if (op.Sub is 1 or 2)
                f.Status &= unchecked((ushort)~C2); // FPREM/FPREM1: C2 = 0, no partial remainder pending
            if (StackFaultResponse(f, overflow: false))
            {
                Set(f, dst, Float80.Indefinite);
                PopTimes(f, pops);
            }
            return;
        }
        Float80 st0 = Get(f, 0), st1 = Get(f, 1);
        X87Control cw = Cw(f);
        X87Status flags;
        switch (op.Sub)
        {
            case 0:
                Complete(f, 0, X87Arith.Scale(st0, st1, cw, out flags), flags, 0);
                return;
            case 1 or 2:
                {
                    // C2 = reduction incomplete; C0, C3, C1 = quotient bits 2, 1, 0 (SDM Vol. 2 FPREM).
                    Float80 r = X87Arith.Remainder(st0, st1, ieee: op.Sub == 2, out flags);
                    if (r.IsDenormal && !Masked(f, UE))
                    {
                        // The remainder is exact, but an unmasked underflow is signalled on tininess
                        // alone and the register gets the result rebiased by 2^24576 (SDM Vol. 1 §8.5.4).
                        flags |= X87Status.Underflow;
                        r = Rebias(r);
                    }
                    bool proceed = Signal(f, flags);
                    if (!proceed || r.IsNaN)
                    {
                        // No quotient: C2 = 0 and C1 = 0, C0 and C3 keep their values (as the host does).
                        SetConditions(f, C1 | C2, 0);
                        if (proceed)
                            Set(f, 0, r);
                        return;
                    }
                    SetConditions(f, ConditionCodes, (ushort)flags);
                    Set(f, 0, r);
                    return;
                }
            case 3:
                Complete(f, 1, X87Arith.YLog2X(st0, st1, cw, out flags), flags, 1);
                return;
            case 4:
                Complete(f, 1, X87Arith.YLog2XPlus1(st0, st1, cw, out flags), flags, 1);
                return;
            default:
                Complete(f, 1, X87Arith.Atan2(st1, st0, cw, out flags), flags, 1);
                return;
        }
    }

    /// <summary>A denormal scaled by 2^24576 (normalised), the register result of an unmasked underflow.</summary>
    static Float80 Rebias(Float80 denormal)
    {
        int lz = System.Numerics.BitOperations.LeadingZeroCount(denormal.Mantissa);
        return new Float80(denormal.IsNegative, 1 - lz + 24576, denormal.Mantissa << lz);
    }

    /// <summary>FXTRACT, FSINCOS, FPTAN: ST(0) is replaced, then a second result is pushed.</summary>
    static void Pushing(Cpu c, ref Op op)
    {
        CheckWaiting(c);
        var f = c.Fpu;
        NotePointers(c, ref op);
        if (op.Sub != 0)
            f.Status &= unchecked((ushort)~C2); // FSINCOS/FPTAN: C2 = 0 unless out of range
        if (IsEmpty(f, 0))
        {
            // Masked: both results are the indefinite; the push happens whatever ST(7) holds (as the host does).
            if (StackFaultResponse(f, overflow: false))
            {
                Set(f, 0, Float80.Indefinite);
                Push(f, Float80.Indefinite);
            }
            return;
        }
        if (!IsEmpty(f, 7))
        {
            // Stack overflow: masked, both results are the indefinite.
            if (StackFaultResponse(f, overflow: true))
            {
                Set(f, 0, Float80.Indefinite);
                Push(f, Float80.Indefinite);
            }
            return;
        }
        Float80 a = Get(f, 0);
        X87Control cw = Cw(f);
        X87Status flags;
        Float80 replaced, pushed;
        switch (op.Sub)
        {
            case 0:
                pushed = X87Arith.Extract(a, out replaced, out flags);
                break;
            case 1:
                replaced = X87Arith.SinCos(a, cw, out pushed, out flags);
                break;
            default:
                replaced = X87Arith.Tan(a, cw, out pushed, out flags);
                break;
        }
        bool proceed = Signal(f, flags);
        ushort conditions = op.Sub == 0 ? C1 : (ushort)(C1 | C2);
        SetConditions(f, conditions, proceed ? (ushort)flags : (ushort)0);
        if (!proceed)
        {
            return;
        }
        if (op.Sub != 0 && (flags & X87Status.C2) != 0)
        {
            return; // out of range: ST(0) unchanged, nothing pushed
        }
        Set(f, 0, replaced);
        Push(f, pushed);
    }
}
