namespace SharpVisor.Cpu.X86.Model;

/// <summary>Architectural MSR numbers (SDM Vol. 4 chapter 2).</summary>
public static class MsrIndex
{
    public const uint Tsc = 0x10, PlatformId = 0x17, ApicBase = 0x1B, FeatureControl = 0x3A, TscAdjust = 0x3B;
    public const uint SpecCtrl = 0x48, PredCmd = 0x49, BiosSignId = 0x8B, MtrrCap = 0xFE, ArchCapabilities = 0x10A;
    public const uint SysenterCs = 0x174, SysenterEsp = 0x175, SysenterEip = 0x176;
    public const uint McgCap = 0x179, McgStatus = 0x17A, McgCtl = 0x17B, Mc0Ctl = 0x400, MiscEnable = 0x1A0, Pat = 0x277, MtrrDefType = 0x2FF;
    public const uint MtrrPhysBase0 = 0x200, MtrrPhysMaskLast = 0x20F, MtrrFix64K = 0x250, MtrrFix16K0 = 0x258, MtrrFix16K1 = 0x259;
    public const uint MtrrFix4KFirst = 0x268, MtrrFix4KLast = 0x26F, TscDeadline = 0x6E0, X2ApicFirst = 0x800, X2ApicLast = 0x8FF;
    public const uint Efer = 0xC000_0080, Star = 0xC000_0081, Lstar = 0xC000_0082, Cstar = 0xC000_0083, Sfmask = 0xC000_0084;
    public const uint FsBase = 0xC000_0100, GsBase = 0xC000_0101, KernelGsBase = 0xC000_0102, TscAux = 0xC000_0103;
}

/// <summary>
/// MSRs that hold plain state. Those with side effects (EFER, FS/GS base, TSC, APIC) are handled in
/// SystemOps where RDMSR/WRMSR are implemented.
/// </summary>
public sealed class Msrs
{
    public ulong Star, Lstar, Cstar, Sfmask, KernelGsBase, TscAux;
    public ulong SysenterCs, SysenterEsp, SysenterEip;
    public ulong Pat, MiscEnable, SpecCtrl, MtrrDefType;
    /// <summary>IA32_TSC_ADJUST (SDM Vol. 3B 18.17.3): changes with every TSC write or adjust write.</summary>
    public long TscAdjust;
    /// <summary>CR8/TPR value kept while there is no (enabled) local APIC to hold it.</summary>
    public uint TprWithoutApic;
    public readonly ulong[] MtrrVariable = new ulong[16];
    public readonly ulong[] MtrrFixed = new ulong[11];

    // ---- machine-check architecture (SDM Vol. 3B chapter 16) ----

    /// <summary>Error-reporting banks, as QEMU gives a guest by default (MCE_BANKS_DEF).</summary>
    public const int McBankCount = 10;
    /// <summary>
    /// IA32_MCG_CAP (SDM 16.3.1.1): Count = 10 banks, MCG_CTL_P (bit 8, IA32_MCG_CTL exists). Not set:
    /// MCG_EXT_P, MCG_CMCI_P (no CMCI, so no IA32_MCi_CTL2), MCG_TES_P, MCG_SER_P, MCG_ELOG_P,
    /// MCG_LMCE_P — none of those is implemented. No error is ever logged: the banks stay empty.
    /// </summary>
    public const ulong McgCapValue = McBankCount | (1 << 8);
    /// <summary>IA32_MCG_STATUS (SDM 16.3.1.2): RIPV (0), EIPV (1), MCIP (2); LMCE_S needs MCG_LMCE_P.</summary>
    public ulong McgStatus;
    /// <summary>IA32_MCG_CTL (SDM 16.3.1.3): all 1s enables, all 0s disables machine-check features.</summary>
    public ulong McgCtl;
    /// <summary>IA32_MCi_CTL, _STATUS, _ADDR, _MISC of bank i at index 4i..4i+3 (MSR 400H + 4i + k, SDM 16.3.2).</summary>
    public readonly ulong[] McBanks = new ulong[4 * McBankCount];

    public void Reset()
    {
        Star = Lstar = Cstar = Sfmask = KernelGsBase = TscAux = 0;
        SysenterCs = SysenterEsp = SysenterEip = 0;
        Pat = 0x0007_0406_0007_0406; // power-on PAT (SDM Vol. 3A 12.12.4)
        MiscEnable = 1; // fast strings enabled
        SpecCtrl = MtrrDefType = 0;
        // TSC_ADJUST, like the TSC itself (Cpu.Tsc), survives INIT; so do the machine-check
        // registers (SDM Vol. 3A Table 9-1: unchanged by INIT; power-up values undefined, here 0).
        TprWithoutApic = 0;
        Array.Clear(MtrrVariable);
        Array.Clear(MtrrFixed);
    }
}
