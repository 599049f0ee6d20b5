using Iced.Intel;
using SharpVisor.Cpu.X86.Decode;

namespace SharpVisor.Cpu.X86.Semantics;

/// <summary>
/// Leftover general-purpose instructions (SDM Vol. 2): XLAT; CLFLUSH/CLFLUSHOPT (no cache to flush:
/// only the access check); LFENCE/MFENCE/SFENCE; PAUSE; the hint-NOP space 0F 0D, 0F 18-0F 1E
/// (PREFETCHh and the reserved NOPs: never fault; ENDBR32/64 and RDSSP are NOPs, CET is not
/// advertised; 0F 1F is NOP, in DataMove); UD0/UD1/UD2 and the non-advertised RDRAND/RDSEED, BMI1/BMI2/ADX (#UD); the BCD
/// adjustments DAA, DAS, AAA, AAS, AAM, AAD and BOUND (invalid in 64-bit mode: #UD).
/// </summary>
public static unsafe class Misc
{
    /// <summary>This family's rows of <see cref="InstructionTable"/>.</summary>
    internal static FormSpec[] Forms =>
    [
        new(Mnemonic.Xlatb, &BindXlat),
        // CLFLUSH's operand is only an address to Iced, but it is checked as a read (#PF, #GP).
        new(Mnemonic.Clflush, &BindClflush, FormTraits.MayFault),
        new(Mnemonic.Clflushopt, &BindClflush, FormTraits.MayFault), // 66-prefixed CLFLUSH: on a CPU without CLFLUSHOPT the prefix is ignored
        new(Mnemonic.Lfence, &BindFence),
        new(Mnemonic.Mfence, &BindFence),
        new(Mnemonic.Sfence, &BindFence),
        new(Mnemonic.Pause, &BindPause, FormTraits.None, VmExit.Pause),
        // The hint-NOP space (the two-byte opcode map, SDM Vol. 2 Appendix A Table A-3: 0F 0D and
        // 0F 18-0F 1F are prefetches and reserved NOPs; NOP Ev is 0F 1F /0): every form executes as a NOP — register or memory operand, any reg
        // field — unless the processor defines it otherwise, and a memory operand is never accessed
        // (no #PF, no #GP for a non-canonical address). Iced names the defined forms; those this CPU
        // does not have are NOPs too: PREFETCHWT1 and PREFETCHIT0/1 (hints), CLDEMOTE (a hint, not
        // advertised), RDSSPD/RDSSPQ and ENDBR32/64 (CET is not advertised: "treated as a NOP" while
        // shadow stacks / indirect branch tracking are off, SDM Vol. 2B RDSSP, ENDBR64). The host
        // executes all of them as NOPs (tests/.../HintNopTests).
        .. FormSpec.Each(&BindNop, FormTraits.None, Mnemonic.Prefetcht0, Mnemonic.Prefetcht1, Mnemonic.Prefetcht2, Mnemonic.Prefetchnta,
            Mnemonic.Prefetchw, Mnemonic.Prefetch, Mnemonic.Prefetchwt1, Mnemonic.Prefetchit0, Mnemonic.Prefetchit1, Mnemonic.Cldemote,
            Mnemonic.Reservednop, Mnemonic.Endbr64, Mnemonic.Endbr32, Mnemonic.Rdsspd, Mnemonic.Rdsspq),
        .. FormSpec.Each(&BindUd, FormTraits.MayFault, Mnemonic.Ud0, Mnemonic.Ud1, Mnemonic.Ud2),
        // Not advertised (CPUID.1:ECX.RDRAND = 0, CPUID.(7,0):EBX.RDSEED = 0): #UD; on a CPU that has them
        // they exit under a VM-execution control.
        new(Mnemonic.Rdrand, &BindUd, FormTraits.MayFault, VmExit.Rdrand),
        new(Mnemonic.Rdseed, &BindUd, FormTraits.MayFault, VmExit.Rdseed),
        // BMI1, BMI2 and ADX are not advertised (CPUID.(7,0):EBX bits 3, 8, 19 = 0): on such a
        // processor their (mostly VEX) encodings are #UD. Bound explicitly so that this is not
        // reported as a missing implementation.
        .. FormSpec.Each(&BindUd, FormTraits.MayFault, Mnemonic.Andn, Mnemonic.Bextr, Mnemonic.Blsi, Mnemonic.Blsmsk, Mnemonic.Blsr,
            Mnemonic.Bzhi, Mnemonic.Mulx, Mnemonic.Pdep, Mnemonic.Pext, Mnemonic.Rorx, Mnemonic.Sarx, Mnemonic.Shlx, Mnemonic.Shrx,
            Mnemonic.Adcx, Mnemonic.Adox),
        .. FormSpec.Each(&BindBcd, FormTraits.None, Mnemonic.Daa, Mnemonic.Das, Mnemonic.Aaa, Mnemonic.Aas, Mnemonic.Aad),
        new(Mnemonic.Aam, &BindBcd, FormTraits.MayFault), // #DE for a zero base
        new(Mnemonic.Bound, &BindBound, FormTraits.MayFault), // #BR
    ];

    static bool BindUd(in Instruction ins, ref Op op) => Alu.BindUd(ref op);

    static bool BindNop(in Instruction ins, ref Op op)
    {
        op.Exec = &Nop;
        return true;
    }

    static void Nop(Cpu c, ref Op op)
    {
    }

    // ------------------------------------------------------------------ XLAT

    static bool BindXlat(in Instruction ins, ref Op op)
    {
        op.Exec = &Xlat;
        return true;
    }

    /// <summary>AL ← seg:[rBX + zero-extended AL] at the address size (SDM XLAT).</summary>
    static void Xlat(Cpu c, ref Op op)
    {
        ulong ea = (c.Regs.Gpr[op.Base] + (byte)c.Regs.Gpr[0]) & op.AddrMask;
        c.CheckDataAccess(op.Seg, ea, 1, SegmentAccess.Read);
        byte v = c.Read8((c.Regs.SegBase[op.Seg] + ea) & c.Regs.LinearMask);
        c.SetReg8(0, v);
    }

    // ------------------------------------------------------------------ cache and ordering

    static bool BindClflush(in Instruction ins, ref Op op)
    {
        op.Exec = &Clflush;
        return true;
    }

    /// <summary>
    /// No cache to flush, but the access is checked as a read (SDM CLFLUSH: "treated as a read for
    /// permission checking": #PF, #GP on non-canonical). Translating only — never a device read.
    /// </summary>
    static void Clflush(Cpu c, ref Op op) => c.Translate(op.Linear(c), Access.Read, c.Cpl == 3);

    static bool BindFence(in Instruction ins, ref Op op)
    {
        op.Exec = &Fence;
        return true;
    }

    /// <summary>Other vCPUs run on other host threads: a full host barrier orders this vCPU's accesses.</summary>
    static void Fence(Cpu c, ref Op op) => Interlocked.MemoryBarrier();

    static bool BindPause(in Instruction ins, ref Op op)
    {
        op.Exec = &Pause;
        return true;
    }

    /// <summary>A spin-wait hint: let a sibling hardware thread (maybe the vCPU we wait for) run.</summary>
    static void Pause(Cpu c, ref Op op) => Thread.SpinWait(1);

    // ------------------------------------------------------------------ BCD (legacy modes only)

    static bool BindBcd(in Instruction ins, ref Op op)
    {
        op.Exec = ins.Mnemonic switch
        {
            Mnemonic.Daa => &Daa,
            Mnemonic.Das => &Das,
            Mnemonic.Aaa => &Aaa,
            Mnemonic.Aas => &Aas,
            Mnemonic.Aam => &Aam,
            _ => &Aad,
        };
        op.Imm = ins.OpCount > 0 ? ins.GetImmediate(0) & 0xFF : 10;
        return true;
    }

    /// <summary>Iced does not decode these in 64-bit mode; the check covers any other way in.</summary>
    static void CheckLegacy(Cpu c)
    {
        if (c.Mode == CpuMode.Long64)
        {
            throw c.InvalidOpcode();
        }
    }

    /// <summary>Sets SF, ZF, PF from an 8-bit result and CF/AF explicitly (OF undefined: 0).</summary>
    static void BcdFlags(Cpu c, byte al, bool cf, bool af) => c.FlagsResult(al, 8, cf, false, af);

    /// <summary>DAA, SDM Vol. 2A pseudo-code (CF from the +6 carry or old CF, then the +60H step).</summary>
    static void Daa(Cpu c, ref Op op)
    {
        CheckLegacy(c);
        byte al = (byte)c.Regs.Gpr[0];
        byte oldAl = al;
        bool oldCf = c.CF();
        bool cf = false, af;
        if ((al & 0xF) > 9 || c.AF())
        {
            cf = oldCf || al + 6 > 0xFF;
            al = (byte)(al + 6);
            af = true;
        }
        else
        {
            af = false;
        }
        if (oldAl > 0x99 || oldCf)
        {
            al = (byte)(al + 0x60);
            cf = true;
        }
        else
        {
            cf = false;
        }
        c.SetReg8(0, al);
        BcdFlags(c, al, cf, af);
    }

    /// <summary>DAS, SDM Vol. 2A pseudo-code (no "else CF ← 0" in the second step, unlike DAA).</summary>
    static void Das(Cpu c, ref Op op)
    {
        CheckLegacy(c);
        byte al = (byte)c.Regs.Gpr[0];
        byte oldAl = al;
        bool oldCf = c.CF();
        bool cf = false, af;
        if ((al & 0xF) > 9 || c.AF())
        {
            cf = oldCf || al < 6;
            al = (byte)(al - 6);
            af = true;
        }
        else
        {
            af = false;
        }
        if (oldAl > 0x99 || oldCf)
        {
            al = (byte)(al - 0x60);
            cf = true;
        }
        c.SetReg8(0, al);
        BcdFlags(c, al, cf, af);
    }

    /// <summary>AAA: IF (AL AND 0FH) &gt; 9 or AF THEN AX ← AX + 106H; AF ← CF ← 1 ELSE AF ← CF ← 0; AL ← AL AND 0FH.</summary>
    static void Aaa(Cpu c, ref Op op)
    {
        CheckLegacy(c);
        ulong ax = (ushort)c.Regs.Gpr[0];
        bool adjust = (ax & 0xF) > 9 || c.AF();
        if (adjust)
        {
            ax = (ax + 0x106) & 0xFFFF;
        }
        ax &= 0xFF0F;
        S16.SetReg(c, 0, ax);
        BcdFlags(c, (byte)ax, adjust, adjust);
    }

    /// <summary>AAS: IF (AL AND 0FH) &gt; 9 or AF THEN AX ← AX − 6; AH ← AH − 1; AF ← CF ← 1 ELSE AF ← CF ← 0; AL ← AL AND 0FH.</summary>
    static void Aas(Cpu c, ref Op op)
    {
        CheckLegacy(c);
        ulong ax = (ushort)c.Regs.Gpr[0];
        bool adjust = (ax & 0xF) > 9 || c.AF();
        if (adjust)
        {
            ax = (ax - 6) & 0xFFFF;
            ax = (ax - 0x100) & 0xFFFF;
        }
        ax &= 0xFF0F;
        S16.SetReg(c, 0, ax);
        BcdFlags(c, (byte)ax, adjust, adjust);
    }

    /// <summary>AAM imm8: AH ← AL / imm8; AL ← AL MOD imm8; an immediate of 0 is #DE. SF/ZF/PF from AL.</summary>
    static void Aam(Cpu c, ref Op op)
    {
        CheckLegacy(c);
        byte divisor = (byte)op.Imm;
        if (divisor == 0)
        {
            throw c.Fault(Vector.DE);
        }
        byte al = (byte)c.Regs.Gpr[0];
        byte q = (byte)(al / divisor), r = (byte)(al % divisor);
        S16.SetReg(c, 0, ((ulong)q << 8) | r);
        BcdFlags(c, r, false, false);
    }

    /// <summary>AAD imm8: AL ← (AL + AH × imm8) AND FFH; AH ← 0. SF/ZF/PF from AL.</summary>
    static void Aad(Cpu c, ref Op op)
    {
        CheckLegacy(c);
        ulong ax = (ushort)c.Regs.Gpr[0];
        byte al = (byte)((ax & 0xFF) + (ax >> 8) * (op.Imm & 0xFF));
        S16.SetReg(c, 0, al);
        BcdFlags(c, al, false, false);
    }

    // ------------------------------------------------------------------ BOUND

    static bool BindBound(in Instruction ins, ref Op op)
    {
        if (ins.Op1Kind != OpKind.Memory)
        {
            return Alu.BindUd(ref op); // the register form is #UD
        }
        op.Exec = op.Size == 2 ? &Bound<S16> : &Bound<S32>;
        return true;
    }

    /// <summary>BOUND r, m: #BR unless lower ≤ r ≤ upper (signed; the bounds pair is at m and m + size).</summary>
    static void Bound<S>(Cpu c, ref Op op) where S : IOpSize
    {
        CheckLegacy(c);
        ulong la = op.Linear(c);
        long lower = (long)Cpu.SignExtend(S.Load(c, la), S.Bits);
        long upper = (long)Cpu.SignExtend(S.Load(c, (la + (ulong)(S.Bits / 8)) & c.Regs.LinearMask), S.Bits);
        long index = (long)Cpu.SignExtend(S.GetReg(c, op.R1), S.Bits);
        if (index < lower || index > upper)
        {
            throw c.Fault(Vector.BR);
        }
    }
}
