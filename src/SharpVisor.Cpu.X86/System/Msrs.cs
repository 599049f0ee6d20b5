namespace SharpVisor.Cpu.X86;

/// <summary>Architectural MSR numbers (SDM Vol. 4 chapter 2).</summary>
public static class MsrIndex
{
    public const uint Tsc = 0x10, PlatformId = 0x17, ApicBase = 0x1B, FeatureControl = 0x3A, TscAdjust = 0x3B;
    public const uint SpecCtrl = 0x48, PredCmd = 0x49, BiosSignId = 0x8B, MtrrCap = 0xFE, ArchCapabilities = 0x10A;
    public const uint SysenterCs = 0x174, SysenterEsp = 0x175, SysenterEip = 0x176;
    public const uint McgCap = 0x179, McgStatus = 0x17A, MiscEnable = 0x1A0, Pat = 0x277, MtrrDefType = 0x2FF;
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
    public ulong Pat, MiscEnable, SpecCtrl, MtrrDefType, FeatureControl;
    /// <summary>IA32_TSC_ADJUST (SDM Vol. 3B 18.17.3): changes with every TSC write or adjust write.</summary>
    public long TscAdjust;
    /// <summary>CR8/TPR value kept while there is no (enabled) local APIC to hold it.</summary>
    public uint TprWithoutApic;
    public readonly ulong[] MtrrVariable = new ulong[16];
    public readonly ulong[] MtrrFixed = new ulong[11];

    public void Reset()
    {
        Star = Lstar = Cstar = Sfmask = KernelGsBase = TscAux = 0;
        SysenterCs = SysenterEsp = SysenterEip = 0;
        Pat = 0x0007_0406_0007_0406; // power-on PAT (SDM Vol. 3A 12.12.4)
        MiscEnable = 1; // fast strings enabled
        SpecCtrl = MtrrDefType = FeatureControl = 0;
        // TSC_ADJUST, like the TSC itself (Cpu.Tsc), survives INIT.
        TprWithoutApic = 0;
        Array.Clear(MtrrVariable);
        Array.Clear(MtrrFixed);
    }
}
