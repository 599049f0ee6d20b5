using SharpVisor.Cpu.X86.Fpu;
using SharpVisor.Cpu.X86.Model;
using SharpVisor.Cpu.X86.Semantics;

namespace SharpVisor.Cpu.X86.State;

/// <summary>
/// The checks a <see cref="CpuState"/> must pass before a vCPU takes it: a state read from a file or
/// a socket is untrusted, and one this CPU could never be in must be refused rather than run.
/// </summary>
/// <remarks>
/// <para>The rules are those of SDM Vol. 3C 26.3.1 (checks on the guest state on VM entry) that this
/// CPU itself maintains, plus the reserved bits of each register as this CPU's MOV CR, MOV DR,
/// WRMSR, LDMXCSR and FXRSTOR enforce them. Each group is a separate method returning the first
/// problem as one line (or null), so that VM entry can apply the same groups to a VMCS guest area.</para>
/// <para>Not checked, because this CPU can reach such states itself and a saved state must always be
/// restorable: canonical GDTR/IDTR/LDTR/TR bases (LGDT, LIDT, LLDT and LTR here do not refuse a
/// non-canonical base, while VM entry does: 26.3.1.2-3), the accessed bit of loaded segments (the
/// hidden attributes keep the descriptor's value from before the CPU set it), SS.DPL = CPL and
/// CS.DPL against CPL (the CPL after MOV CR0.PE follows CS.RPL here), and the TSS type in IA-32e mode.</para>
/// </remarks>
public static class CpuStateChecks
{
    /// <summary>The first problem found in <paramref name="s"/>, or null when a vCPU may take it.</summary>
    public static string? FirstProblem(CpuState s)
    {
        if (s.Version != CpuState.CurrentVersion)
        {
            return $"version {s.Version} is not supported (this build reads version {CpuState.CurrentVersion})";
        }
        return ShapeProblem(s)
            ?? ControlRegisterProblem(s)
            ?? SegmentProblem(s)
            ?? RipAndFlagsProblem(s)
            ?? DebugRegisterProblem(s)
            ?? FpuProblem(s.Fpu)
            ?? MsrProblem(s.Msrs)
            ?? EventProblem(s.Events);
    }

    /// <summary>Every part present and every array of the length the CPU has (a deserialised state may lack them).</summary>
    public static string? ShapeProblem(CpuState s)
    {
        if (s.Gpr is null || s.Fpu is null || s.Msrs is null || s.Events is null)
        {
            return "a part of the state is missing";
        }
        if (s.Fpu.Registers is null || s.Fpu.Xmm is null || s.Msrs.MtrrVariable is null || s.Msrs.MtrrFixed is null || s.Msrs.McBanks is null)
        {
            return "an array of the state is missing";
        }
        return s.Gpr.Length != 16 ? $"{s.Gpr.Length} general registers (16 expected)"
            : s.Fpu.Registers.Length != 8 ? $"{s.Fpu.Registers.Length} x87 registers (8 expected)"
            : s.Fpu.Xmm.Length != 16 ? $"{s.Fpu.Xmm.Length} XMM registers (16 expected)"
            : s.Msrs.MtrrVariable.Length != VariableMtrrCount ? $"{s.Msrs.MtrrVariable.Length} variable MTRRs ({VariableMtrrCount} expected)"
            : s.Msrs.MtrrFixed.Length != FixedMtrrCount ? $"{s.Msrs.MtrrFixed.Length} fixed MTRRs ({FixedMtrrCount} expected)"
            : s.Msrs.McBanks.Length != 4 * Msrs.McBankCount ? $"{s.Msrs.McBanks.Length} machine-check bank registers ({4 * Msrs.McBankCount} expected)"
            : null;
    }

    public const int VariableMtrrCount = 16, FixedMtrrCount = 11;

    // ---------------------------------------------------------------- control registers

    /// <summary>CR0 bits that exist (SDM Vol. 3A 2.5); MOV CR0 drops the others.</summary>
    const ulong Cr0Defined = Cr0.PE | Cr0.MP | Cr0.EM | Cr0.TS | Cr0.ET | Cr0.NE | Cr0.WP | Cr0.AM | Cr0.NW | Cr0.CD | Cr0.PG;
    const ulong EferDefined = Efer.SCE | Efer.LME | Efer.LMA | Efer.NXE;

    /// <summary>
    /// CR0, CR3, CR4, XCR0 and EFER: reserved bits and the combinations MOV CR / WRMSR refuse
    /// (SDM Vol. 2B MOV CR; Vol. 3A 2.5, 10.8.5; Vol. 3C 26.3.1.1).
    /// </summary>
    public static string? ControlRegisterProblem(CpuState s)
    {
        ulong cr0 = s.Cr0, cr4 = s.Cr4, efer = s.Efer;
        if ((cr0 & ~Cr0Defined) != 0)
        {
            return $"CR0 0x{cr0:x} has reserved bits set";
        }
        if ((cr0 & Cr0.ET) == 0)
        {
            return "CR0.ET is clear (it is hardwired to 1)";
        }
        if ((cr0 & Cr0.PG) != 0 && (cr0 & Cr0.PE) == 0)
        {
            return "CR0.PG is set without CR0.PE";
        }
        if ((cr0 & Cr0.NW) != 0 && (cr0 & Cr0.CD) == 0)
        {
            return "CR0.NW is set without CR0.CD";
        }
        if ((cr4 & ~ControlRegisters.Cr4Supported) != 0)
        {
            return $"CR4 0x{cr4:x} has bits of features this CPU does not have";
        }
        if ((efer & ~EferDefined) != 0)
        {
            return $"EFER 0x{efer:x} has reserved bits set";
        }
        bool lma = (efer & Efer.LMA) != 0;
        bool lmaExpected = (cr0 & Cr0.PG) != 0 && (efer & Efer.LME) != 0;
        if (lma != lmaExpected)
        {
            return $"EFER.LMA is {(lma ? 1 : 0)} but CR0.PG and EFER.LME say {(lmaExpected ? 1 : 0)}";
        }
        if (lma && (cr4 & Cr4.PAE) == 0)
        {
            return "IA-32e mode with CR4.PAE clear";
        }
        if ((s.Cr3 >> Cpu.PhysAddrBits) != 0)
        {
            return $"CR3 0x{s.Cr3:x} has bits above the physical-address width";
        }
        if (s.Xcr0 != 1)
        {
            return $"XCR0 0x{s.Xcr0:x}: this CPU has only x87 state (no XSAVE), so XCR0 is 1";
        }
        return null;
    }

    // ---------------------------------------------------------------- segments

    /// <summary>
    /// The segment registers (SDM Vol. 3C 26.3.1.2): attribute encodings that cannot exist in a
    /// segment register, limits that do not agree with G, bases wider than their descriptors.
    /// </summary>
    public static string? SegmentProblem(CpuState s)
    {
        ReadOnlySpan<(string Name, SegmentState Seg)> all =
            [("ES", s.Es), ("CS", s.Cs), ("SS", s.Ss), ("DS", s.Ds), ("FS", s.Fs), ("GS", s.Gs), ("LDTR", s.Ldtr), ("TR", s.Tr)];
        foreach (var (name, seg) in all)
        {
            if ((seg.Attributes & 0x0F00) != 0)
            {
                return $"{name} attributes 0x{seg.Attributes:x} have bits 11:8 set";
            }
            // A limit is scaled by G: with G = 1 its low 12 bits are all ones, with G = 0 it fits in 20 bits.
            if (seg.Granular ? (seg.Limit & 0xFFF) != 0xFFF : seg.Limit > 0xF_FFFF)
            {
                return $"{name} limit 0x{seg.Limit:x} does not agree with G = {(seg.Granular ? 1 : 0)}";
            }
        }
        // Descriptor and real-mode bases are 32 bits; only FS and GS take 64-bit bases (through their MSRs).
        foreach (var (name, seg) in all[..4])
        {
            if ((seg.Base >> 32) != 0)
            {
                return $"{name} base 0x{seg.Base:x} is wider than 32 bits";
            }
        }
        if (!IsCanonical(s.Fs.Base) || !IsCanonical(s.Gs.Base))
        {
            return $"FS/GS base 0x{s.Fs.Base:x}/0x{s.Gs.Base:x} is not canonical";
        }
        SegmentState cs = s.Cs, ss = s.Ss;
        if (!cs.Present || !cs.IsCode)
        {
            return $"CS attributes 0x{cs.Attributes:x} are not those of a present code segment";
        }
        if ((s.Efer & Efer.LMA) != 0 && cs.Long && cs.Big)
        {
            return "CS has both L and D set in IA-32e mode";
        }
        if (ss.Present && (ss.IsSystem || ss.IsCode || (ss.Type & 2) == 0))
        {
            return $"SS attributes 0x{ss.Attributes:x} are not those of a writable data segment";
        }
        foreach (var (name, seg) in (ReadOnlySpan<(string, SegmentState)>)[("ES", s.Es), ("DS", s.Ds), ("FS", s.Fs), ("GS", s.Gs)])
        {
            if (seg.Present && (seg.IsSystem || (seg.IsCode && (seg.Type & 2) == 0)))
            {
                return $"{name} attributes 0x{seg.Attributes:x} are not those of a data or readable code segment";
            }
        }
        if (s.Ldtr.Present && (!s.Ldtr.IsSystem || s.Ldtr.Type != 2))
        {
            return $"LDTR attributes 0x{s.Ldtr.Attributes:x} are not those of an LDT";
        }
        if (!s.Tr.Present || !s.Tr.IsSystem || s.Tr.Type is not (3 or 11))
        {
            return $"TR attributes 0x{s.Tr.Attributes:x} are not those of a present busy TSS";
        }
        return null;
    }

    // ---------------------------------------------------------------- RIP, RFLAGS, CPL

    /// <summary>RIP, RFLAGS and the CPL against the mode they put the CPU in (SDM Vol. 3C 26.3.1.4; Vol. 1 3.4.3).</summary>
    public static string? RipAndFlagsProblem(CpuState s)
    {
        ulong rflags = s.Rflags;
        if ((rflags & ~(RFlags.Writable | RFlags.Reserved1)) != 0 || (rflags & RFlags.Reserved1) == 0)
        {
            return $"RFLAGS 0x{rflags:x} has reserved bits wrong (bit 1 must be 1; 63:22, 15, 5, 3 must be 0)";
        }
        if ((rflags & RFlags.VM) != 0 && ((s.Cr0 & Cr0.PE) == 0 || (s.Efer & Efer.LMA) != 0))
        {
            return "RFLAGS.VM is set outside legacy protected mode";
        }
        CpuMode mode = Cpu.ModeOf(s.Cr0, s.Efer, rflags, s.Cs.Attributes);
        if (mode == CpuMode.Long64 ? !IsCanonical(s.Rip) : (s.Rip >> 32) != 0)
        {
            return $"RIP 0x{s.Rip:x} is out of range in {mode} mode";
        }
        if (s.Cpl is < 0 or > 3)
        {
            return $"CPL {s.Cpl} is not 0-3";
        }
        if (mode == CpuMode.Real && s.Cpl != 0 || mode == CpuMode.Virtual8086 && s.Cpl != 3)
        {
            return $"CPL {s.Cpl} in {mode} mode (it is {(mode == CpuMode.Real ? 0 : 3)} there)";
        }
        return null;
    }

    // ---------------------------------------------------------------- debug registers

    /// <summary>DR6 bits software can write (B0-B3, BD, BS, BT); the others read as fixed values (SDM Vol. 3B 18.2.3).</summary>
    const ulong Dr6Writable = 0xE00F;
    /// <summary>DR7 writable bits: L0-G3, LE, GE, GD, R/W and LEN fields; bit 10 reads as 1 (SDM Vol. 3B 18.2.4).</summary>
    const ulong Dr7Writable = 0xFFFF_23FF, Dr7Fixed = 0x400;

    /// <summary>DR6 and DR7 as MOV DR leaves them (SDM Vol. 3B 18.2.3-4; Vol. 3C 26.3.1.1).</summary>
    public static string? DebugRegisterProblem(CpuState s)
    {
        if ((s.Dr6 & ~(Dr6Writable | Cpu.Dr6Fixed)) != 0 || (s.Dr6 & Cpu.Dr6Fixed) != Cpu.Dr6Fixed)
        {
            return $"DR6 0x{s.Dr6:x} has reserved bits wrong";
        }
        if ((s.Dr7 & ~(Dr7Writable | Dr7Fixed)) != 0 || (s.Dr7 & Dr7Fixed) == 0)
        {
            return $"DR7 0x{s.Dr7:x} has reserved bits wrong";
        }
        return null;
    }

    // ---------------------------------------------------------------- x87 / SSE

    /// <summary>
    /// FOP, MXCSR and the tag word (SDM Vol. 1 8.1.7, 10.2.3): a register tagged zero must hold
    /// zero and one tagged special a NaN, infinity, denormal or unsupported value, since every x87
    /// write, FLDENV, FRSTOR and FXRSTOR tag by contents. Valid (00) goes with anything: MMX
    /// instructions tag every register valid whatever it holds.
    /// </summary>
    public static string? FpuProblem(X87SseState f)
    {
        if (f.Fop > 0x7FF)
        {
            return $"FOP 0x{f.Fop:x} is wider than 11 bits";
        }
        if ((f.Mxcsr & ~Sse.MxcsrMask) != 0)
        {
            return $"MXCSR 0x{f.Mxcsr:x} has reserved bits set";
        }
        for (int r = 0; r < 8; r++)
        {
            int tag = (f.Ftw >> (2 * r)) & 3;
            var reg = f.Registers[r];
            int byContents = X87Stack.TagFor(new Float80(reg.Significand, reg.SignExponent));
            if (tag is X87Stack.TagZero or X87Stack.TagSpecial && tag != byContents)
            {
                return $"x87 R{r} is tagged {(tag == X87Stack.TagZero ? "zero" : "special")} but holds {reg.SignExponent:x4}:{reg.Significand:x16}";
            }
        }
        return null;
    }

    // ---------------------------------------------------------------- MSRs

    /// <summary>The MSRs as WRMSR would have accepted them (SDM Vol. 4 chapter 2; Vol. 3A 12.11, 12.12; Vol. 3B 16.3).</summary>
    public static string? MsrProblem(MsrState m)
    {
        if (m.SysenterCs > 0xFFFF)
        {
            return $"IA32_SYSENTER_CS 0x{m.SysenterCs:x} is wider than 16 bits";
        }
        ReadOnlySpan<(string, ulong)> canonical =
            [("IA32_SYSENTER_ESP", m.SysenterEsp), ("IA32_SYSENTER_EIP", m.SysenterEip), ("IA32_LSTAR", m.Lstar), ("IA32_CSTAR", m.Cstar), ("IA32_KERNEL_GS_BASE", m.KernelGsBase)];
        foreach (var (name, v) in canonical)
        {
            if (!IsCanonical(v))
            {
                return $"{name} 0x{v:x} is not canonical";
            }
        }
        if ((m.Sfmask >> 32) != 0 || (m.TscAux >> 32) != 0)
        {
            return $"IA32_FMASK 0x{m.Sfmask:x} or IA32_TSC_AUX 0x{m.TscAux:x} is wider than 32 bits";
        }
        for (int i = 0; i < 8; i++)
        {
            if (!IsPatType((m.Pat >> (8 * i)) & 0xFF))
            {
                return $"IA32_PAT 0x{m.Pat:x} has an invalid memory type in entry {i}";
            }
        }
        if ((m.MiscEnable & ~1UL) != 0)
        {
            return $"IA32_MISC_ENABLE 0x{m.MiscEnable:x}: only fast strings (bit 0) is writable";
        }
        if ((m.SpecCtrl & ~7UL) != 0)
        {
            return $"IA32_SPEC_CTRL 0x{m.SpecCtrl:x} has reserved bits set";
        }
        const ulong mtrrDefTypeValid = 0xFF | (1 << 10) | (1 << 11);
        if ((m.MtrrDefType & ~mtrrDefTypeValid) != 0 || !IsMtrrType(m.MtrrDefType & 0xFF))
        {
            return $"IA32_MTRR_DEF_TYPE 0x{m.MtrrDefType:x} has reserved bits or an invalid type";
        }
        ulong physField = ((1UL << Cpu.PhysAddrBits) - 1) & ~0xFFFUL;
        for (int i = 0; i < VariableMtrrCount; i++)
        {
            ulong v = m.MtrrVariable[i];
            bool isMask = (i & 1) != 0;
            ulong valid = physField | (isMask ? 1UL << 11 : 0xFF);
            if ((v & ~valid) != 0 || (!isMask && !IsMtrrType(v & 0xFF)))
            {
                return $"variable MTRR {i / 2} {(isMask ? "mask" : "base")} 0x{v:x} has reserved bits or an invalid type";
            }
        }
        for (int i = 0; i < FixedMtrrCount; i++)
        {
            for (int b = 0; b < 8; b++)
            {
                if (!IsMtrrType((m.MtrrFixed[i] >> (8 * b)) & 0xFF))
                {
                    return $"fixed MTRR {i} 0x{m.MtrrFixed[i]:x} has an invalid memory type";
                }
            }
        }
        if ((m.McgStatus & ~7UL) != 0)
        {
            return $"IA32_MCG_STATUS 0x{m.McgStatus:x} has reserved bits set";
        }
        if (m.McgCtl != 0 && m.McgCtl != ulong.MaxValue)
        {
            return $"IA32_MCG_CTL 0x{m.McgCtl:x} is neither all 0s nor all 1s";
        }
        for (int i = 0; i < m.McBanks.Length; i++)
        {
            // No machine check is ever logged: STATUS, ADDR and MISC can only be written with 0.
            if ((i & 3) != 0 && m.McBanks[i] != 0)
            {
                return $"machine-check bank {i / 4} register {i & 3} is 0x{m.McBanks[i]:x} (only CTL can be nonzero)";
            }
        }
        if ((m.TprWithoutApic & ~0xF0u) != 0)
        {
            return $"TPR 0x{m.TprWithoutApic:x} kept without an APIC has bits other than 7:4";
        }
        return null;
    }

    // ---------------------------------------------------------------- events

    /// <summary>The activity and event state (SDM Vol. 3C 25.4.2, 26.3.1.5).</summary>
    public static string? EventProblem(EventState e)
    {
        if (e.Activity is not (ActivityState.Active or ActivityState.Halted or ActivityState.WaitForSipi))
        {
            return $"activity state {(int)e.Activity} is unknown";
        }
        const ulong heldTrapBits = Cpu.Dr6B0to3 | Cpu.Dr6BS;
        if ((e.HeldDebugTraps & ~heldTrapBits) != 0)
        {
            return $"held debug traps 0x{e.HeldDebugTraps:x} are not DR6 B0-B3/BS bits";
        }
        if (e.HeldDebugTraps != 0 && !e.InterruptShadow)
        {
            return "debug traps are held without the MOV SS shadow that holds them";
        }
        return null;
    }

    public static bool IsCanonical(ulong v) => (ulong)((long)(v << 16) >> 16) == v;

    /// <summary>A valid memory type for MTRRs: UC, WC, WT, WP, WB (SDM Vol. 3A Table 12-8).</summary>
    static bool IsMtrrType(ulong t) => t is 0 or 1 or 4 or 5 or 6;

    /// <summary>A valid PAT entry: UC, WC, WT, WP, WB, UC- (SDM Vol. 3A Table 12-10).</summary>
    static bool IsPatType(ulong t) => t is 0 or 1 or 4 or 5 or 6 or 7;
}
