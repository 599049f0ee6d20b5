using SharpVisor.Core;
using SharpVisor.Cpu.X86.Model;

namespace SharpVisor.Cpu.X86.Semantics;

/// <summary>
/// RDMSR/WRMSR (SDM Vol. 2B; MSR definitions in Vol. 4 chapter 2). An MSR this CPU does not have
/// raises #GP(0) — which is the answer Linux expects when it probes with rdmsr_safe/wrmsr_safe —
/// and is logged once per MSR number so a missing MSR that matters is visible.
/// </summary>
public static unsafe class MsrAccess
{

    /// <summary>MTRRcap (SDM Vol. 3A 12.11.2.1): VCNT = 8 variable ranges, FIX = 1 fixed ranges, WC = 1.</summary>
    public const ulong MtrrCapValue = 8 | (1 << 8) | (1 << 10);
    /// <summary>IA32_FEATURE_CONTROL: lock bit set, VMX disabled inside and outside SMX (SDM Vol. 3C 24.7).</summary>
    public const ulong FeatureControlValue = 1;
    /// <summary>IA32_BIOS_SIGN_ID[63:32]: the microcode revision the guest sees.</summary>
    public const ulong MicrocodeRevision = 1UL << 32;
    /// <summary>MISC_ENABLE bits that read as 1 and ignore writes: BTS unavailable (11), PEBS unavailable (12).</summary>
    const ulong MiscEnableFixed = (1 << 11) | (1 << 12);
    /// <summary>MISC_ENABLE bits a write may change: fast strings (0) only — others ignore writes.</summary>
    const ulong MiscEnableWritable = 1;
    const ulong MtrrDefTypeValid = 0xFF | (1 << 10) | (1 << 11);

    static ulong PhysAddrField => ((1UL << Cpu.PhysAddrBits) - 1) & ~0xFFFUL;

    public static bool IsCanonical(ulong v) => (ulong)((long)(v << 16) >> 16) == v;

    /// <summary>A valid memory type for MTRRs: UC, WC, WT, WP, WB (SDM Vol. 3A Table 12-8).</summary>
    static bool IsMtrrType(ulong t) => t is 0 or 1 or 4 or 5 or 6;
    /// <summary>A valid PAT entry: UC, WC, WT, WP, WB, UC- (SDM Vol. 3A Table 12-10).</summary>
    static bool IsPatType(ulong t) => t is 0 or 1 or 4 or 5 or 6 or 7;

    /// <summary>Unknown MSR numbers are logged once each (per VM), and at most this many of them, so a guest probing every MSR number cannot flood the log.</summary>
    const int MaxUnknownLogged = 256;

    static GuestFault Unknown(Cpu c, uint msr, bool write, ulong value)
    {
        c.Counters.UnknownMsrAccesses.IncrementUnsynchronized();
        if (c.Platform.UnknownMsrsSeen.Count >= MaxUnknownLogged)
        {
            c.Log.Once("msr:unknown-cap", "cpu", $"more than {MaxUnknownLogged} distinct unknown MSRs accessed; further ones are only counted in cpuN.unknown_msr_accesses");
            return c.GeneralProtection(0);
        }
        if (!c.Platform.UnknownMsrsSeen.TryAdd((msr, write), 0))
        {
            return c.GeneralProtection(0);
        }
        // Info, not a warning: Linux probes MSRs with rdmsr_safe/wrmsr_safe and a #GP is the
        // answer it expects from a CPU without them; the counter still records every access.
        c.Log.Once($"msr:{(write ? 'w' : 'r')}:{msr:x}", "cpu",
            write ? $"cpu{c.Index}: WRMSR to unknown MSR 0x{msr:x} value 0x{value:x} at {c.Rip:x} (raising #GP)"
                  : $"cpu{c.Index}: RDMSR of unknown MSR 0x{msr:x} at {c.Rip:x} (raising #GP)", LogLevel.Info);
        return c.GeneralProtection(0);
    }

    static GuestFault Refuse(Cpu c, uint msr, ulong value, string why)
    {
        c.Counters.RefusedMsrWrites.IncrementUnsynchronized();
        c.Log.Once($"msrbad:{msr:x}:{why}", "cpu", $"cpu{c.Index}: WRMSR 0x{msr:x} value 0x{value:x} refused: {why} (raising #GP)");
        return c.GeneralProtection(0);
    }

    /// <summary>
    /// MTRRdefType as firmware leaves it: MTRRs enabled (E, bit 11) with write-back as the default
    /// type (SDM Vol. 3A 12.11.2.1). The power-on value is 0 (all uncached, MTRRs off); when Linux
    /// is started without firmware, the loader calls this on every vCPU, otherwise Linux 6.1 sees
    /// "MTRRs disabled" and also skips PAT initialisation.
    /// </summary>
    public static void ApplyFirmwareDefaults(Cpu c) => c.Msr.MtrrDefType = (1 << 11) | 6;

    public static ulong Read(Cpu c, uint msr)
    {
        var m = c.Msr;
        switch (msr)
        {
            case MsrIndex.Tsc: return c.Tsc.Read();
            case MsrIndex.TscAdjust: return (ulong)m.TscAdjust;
            case MsrIndex.PlatformId: return 0;
            case MsrIndex.FeatureControl: return FeatureControlValue;
            case MsrIndex.SpecCtrl: return m.SpecCtrl;
            case MsrIndex.BiosSignId: return MicrocodeRevision;
            case MsrIndex.MtrrCap: return MtrrCapValue;
            case MsrIndex.ArchCapabilities: return c.Platform.CpuId.ArchCapabilities;
            case MsrIndex.SysenterCs: return m.SysenterCs;
            case MsrIndex.SysenterEsp: return m.SysenterEsp;
            case MsrIndex.SysenterEip: return m.SysenterEip;
            case MsrIndex.McgCap: return Msrs.McgCapValue;
            case MsrIndex.McgStatus: return m.McgStatus;
            case MsrIndex.McgCtl: return m.McgCtl;
            case >= MsrIndex.Mc0Ctl and < MsrIndex.Mc0Ctl + 4 * Msrs.McBankCount: return m.McBanks[msr - MsrIndex.Mc0Ctl];
            case MsrIndex.MiscEnable: return m.MiscEnable | MiscEnableFixed;
            case MsrIndex.Pat: return m.Pat;
            case MsrIndex.MtrrDefType: return m.MtrrDefType;
            case >= MsrIndex.MtrrPhysBase0 and <= MsrIndex.MtrrPhysMaskLast: return m.MtrrVariable[msr - MsrIndex.MtrrPhysBase0];
            case MsrIndex.MtrrFix64K: return m.MtrrFixed[0];
            case MsrIndex.MtrrFix16K0: return m.MtrrFixed[1];
            case MsrIndex.MtrrFix16K1: return m.MtrrFixed[2];
            case >= MsrIndex.MtrrFix4KFirst and <= MsrIndex.MtrrFix4KLast: return m.MtrrFixed[3 + msr - MsrIndex.MtrrFix4KFirst];
            case MsrIndex.Efer: return c.EferValue;
            case MsrIndex.Star: return m.Star;
            case MsrIndex.Lstar: return m.Lstar;
            case MsrIndex.Cstar: return m.Cstar;
            case MsrIndex.Sfmask: return m.Sfmask;
            case MsrIndex.FsBase: return c.Segs[(int)Seg.FS].Base;
            case MsrIndex.GsBase: return c.Segs[(int)Seg.GS].Base;
            case MsrIndex.KernelGsBase: return m.KernelGsBase;
            case MsrIndex.TscAux: return m.TscAux;
        }
        if (c.Apic is { } apic && apic.OwnsMsr(msr))
        {
            if (apic.TryReadMsr(msr, out ulong v))
            {
                return v;
            }
            throw c.GeneralProtection(0);
        }
        throw Unknown(c, msr, write: false, 0);
    }

    public static void Write(Cpu c, uint msr, ulong v)
    {
        var m = c.Msr;
        switch (msr)
        {
            case MsrIndex.Tsc:
                {
                    // Writing the TSC moves IA32_TSC_ADJUST by the same amount (SDM Vol. 3B 18.17.3).
                    long delta = (long)(v - c.Tsc.Read());
                    c.Tsc.Write(v);
                    m.TscAdjust += delta;
                    return;
                }
            case MsrIndex.TscAdjust:
                c.Tsc.Write(c.Tsc.Read() + (v - (ulong)m.TscAdjust));
                m.TscAdjust = (long)v;
                return;
            case MsrIndex.SpecCtrl:
                // IBRS (0), STIBP (1), SSBD (2): accepted, no effect on a software CPU.
                if ((v & ~7UL) != 0) throw Refuse(c, msr, v, "reserved bits");
                m.SpecCtrl = v;
                return;
            case MsrIndex.PredCmd:
                if ((v & ~1UL) != 0) throw Refuse(c, msr, v, "reserved bits");
                return; // IBPB: nothing to flush
            case MsrIndex.BiosSignId:
                return; // Linux writes 0 before CPUID(1) to read the revision (intel_get_microcode_revision)
            case MsrIndex.McgStatus:
                // RIPV, EIPV, MCIP are writable (an #MC handler clears MCIP); bits 63:3 are reserved
                // here (LMCE_S exists only with MCG_LMCE_P).
                if ((v & ~7UL) != 0) throw Refuse(c, msr, v, "MCG_STATUS reserved bits");
                m.McgStatus = v;
                return;
            case MsrIndex.McgCtl:
                // SDM 16.3.1.3: all 1s enables, all 0s disables; other values are undefined, refused
                // here as KVM does. Linux writes all 1s when MCG_CTL_P is set.
                if (v != 0 && v != ulong.MaxValue) throw Refuse(c, msr, v, "MCG_CTL other than all 0s or all 1s");
                m.McgCtl = v;
                return;
            case >= MsrIndex.Mc0Ctl and < MsrIndex.Mc0Ctl + 4 * Msrs.McBankCount:
                {
                    uint k = (msr - MsrIndex.Mc0Ctl) & 3;
                    // IA32_MCi_CTL: one enable bit per error type, any value (SDM 16.3.2.1). STATUS,
                    // ADDR and MISC can only be cleared: writing 1s is #GP (16.3.2.2-16.3.2.4).
                    if (k != 0 && v != 0) throw Refuse(c, msr, v, k == 1 ? "MCi_STATUS accepts only 0" : k == 2 ? "MCi_ADDR accepts only 0" : "MCi_MISC accepts only 0");
                    m.McBanks[msr - MsrIndex.Mc0Ctl] = v;
                    return;
                }
            case MsrIndex.SysenterCs: m.SysenterCs = v & 0xFFFF; return;
            case MsrIndex.SysenterEsp:
                if (!IsCanonical(v)) throw Refuse(c, msr, v, "non-canonical");
                m.SysenterEsp = v;
                return;
            case MsrIndex.SysenterEip:
                if (!IsCanonical(v)) throw Refuse(c, msr, v, "non-canonical");
                m.SysenterEip = v;
                return;
            case MsrIndex.MiscEnable:
                m.MiscEnable = (m.MiscEnable & ~MiscEnableWritable) | (v & MiscEnableWritable);
                return;
            case MsrIndex.Pat:
                for (int i = 0; i < 8; i++)
                {
                    if (!IsPatType((v >> (8 * i)) & 0xFF)) throw Refuse(c, msr, v, "invalid PAT memory type");
                }
                m.Pat = v;
                return;
            case MsrIndex.MtrrDefType:
                if ((v & ~MtrrDefTypeValid) != 0 || !IsMtrrType(v & 0xFF)) throw Refuse(c, msr, v, "MTRRdefType reserved bits or type");
                m.MtrrDefType = v;
                return;
            case >= MsrIndex.MtrrPhysBase0 and <= MsrIndex.MtrrPhysMaskLast:
                {
                    bool isMask = (msr & 1) != 0;
                    // PhysBase: type in 7:0, address 12..MAXPHYADDR-1; PhysMask: valid bit 11 (SDM 12.11.2.3).
                    ulong valid = PhysAddrField | (isMask ? 1UL << 11 : 0xFF);
                    if ((v & ~valid) != 0 || (!isMask && !IsMtrrType(v & 0xFF))) throw Refuse(c, msr, v, "variable MTRR reserved bits or type");
                    m.MtrrVariable[msr - MsrIndex.MtrrPhysBase0] = v;
                    return;
                }
            case MsrIndex.MtrrFix64K or MsrIndex.MtrrFix16K0 or MsrIndex.MtrrFix16K1 or (>= MsrIndex.MtrrFix4KFirst and <= MsrIndex.MtrrFix4KLast):
                {
                    for (int i = 0; i < 8; i++)
                    {
                        if (!IsMtrrType((v >> (8 * i)) & 0xFF)) throw Refuse(c, msr, v, "fixed MTRR type");
                    }
                    int slot = msr switch { MsrIndex.MtrrFix64K => 0, MsrIndex.MtrrFix16K0 => 1, MsrIndex.MtrrFix16K1 => 2, _ => 3 + (int)(msr - MsrIndex.MtrrFix4KFirst) };
                    m.MtrrFixed[slot] = v;
                    return;
                }
            case MsrIndex.Efer:
                WriteEfer(c, v);
                return;
            case MsrIndex.Star: m.Star = v; return;
            case MsrIndex.Lstar:
                if (!IsCanonical(v)) throw Refuse(c, msr, v, "non-canonical");
                m.Lstar = v;
                return;
            case MsrIndex.Cstar:
                if (!IsCanonical(v)) throw Refuse(c, msr, v, "non-canonical");
                m.Cstar = v;
                return;
            case MsrIndex.Sfmask:
                if ((v >> 32) != 0) throw Refuse(c, msr, v, "reserved bits");
                m.Sfmask = v;
                return;
            case MsrIndex.FsBase:
            case MsrIndex.GsBase:
                {
                    if (!IsCanonical(v)) throw Refuse(c, msr, v, "non-canonical");
                    int s = msr == MsrIndex.FsBase ? (int)Seg.FS : (int)Seg.GS;
                    c.Segs[s].Base = v;
                    c.Regs.SegBase[s] = v;
                    return;
                }
            case MsrIndex.KernelGsBase:
                if (!IsCanonical(v)) throw Refuse(c, msr, v, "non-canonical");
                m.KernelGsBase = v;
                return;
            case MsrIndex.TscAux:
                if ((v >> 32) != 0) throw Refuse(c, msr, v, "reserved bits");
                m.TscAux = v;
                return;
            case MsrIndex.FeatureControl:
                throw Refuse(c, msr, v, "IA32_FEATURE_CONTROL is locked");
            case MsrIndex.ArchCapabilities or MsrIndex.MtrrCap or MsrIndex.PlatformId or MsrIndex.McgCap:
                throw Refuse(c, msr, v, "read-only MSR");
        }
        if (c.Apic is { } apic && apic.OwnsMsr(msr))
        {
            if (apic.TryWriteMsr(msr, v))
            {
                if (msr != MsrIndex.TscDeadline)
                {
                    c.RecheckInterrupts(); // TPR/EOI/SELF_IPI writes can make an interrupt deliverable
                }
                return;
            }
            throw c.GeneralProtection(0);
        }
        throw Unknown(c, msr, write: true, v);
    }

    /// <summary>IA32_EFER (SDM Vol. 3A 2.2.1, 10.8.5): LMA is read-only; LME cannot change while paging is on.</summary>
    static void WriteEfer(Cpu c, ulong v)
    {
        const ulong writable = Efer.SCE | Efer.LME | Efer.NXE;
        if ((v & ~(writable | Efer.LMA)) != 0)
        {
            throw Refuse(c, MsrIndex.Efer, v, "reserved bits");
        }
        ulong old = c.EferValue;
        if (c.Paging && ((old ^ v) & Efer.LME) != 0)
        {
            throw Refuse(c, MsrIndex.Efer, v, "changing EFER.LME with paging enabled");
        }
        c.EferValue = (old & Efer.LMA) | (v & writable);
        if (((old ^ v) & Efer.NXE) != 0)
        {
            c.FlushTlb(includeGlobal: true); // the XD bit's meaning changed (reserved vs no-execute)
        }
        c.UpdateMode();
    }
}
