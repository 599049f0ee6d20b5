using SharpVisor.Cpu.X86.State;

namespace SharpVisor.Cpu.X86.Model;

/// <summary>
/// Puts a vCPU directly into a well-defined mode, as firmware or a boot loader would leave it:
/// used by the Linux/PVH/multiboot loaders and by tests. Hidden segment state is set as if loaded
/// from a flat GDT with the conventional selectors. Each mode is a transformation of a
/// <see cref="CpuState"/>, applied with <see cref="Cpu.RestoreState"/> (which checks it and
/// recomputes everything derived); registers the mode does not define keep their values.
/// </summary>
public static class CpuSetup
{
    /// <summary>Flat segment attributes: code (execute/read, accessed) and data (read/write, accessed), present, G=1.</summary>
    const ushort Code64 = 0xA09B, Code32 = 0xC09B, Data32 = 0xC093;

    /// <summary>A busy 32/64-bit TSS of the minimum size at 0 (TR must hold a busy TSS in protected mode, SDM Vol. 3C 26.3.1.2).</summary>
    static readonly SegmentState MinimalTss = new(0, 0, 0x67, 0x8B);

    static SegmentState Flat(ushort selector, ushort attributes) => new(selector, 0, 0xFFFF_FFFF, attributes);

    /// <summary>
    /// 64-bit mode with 4-level paging rooted at <paramref name="cr3"/>, at privilege
    /// <paramref name="cpl"/> (selectors: kernel CS 0x10 / DS 0x18 as Linux's boot GDT, user CS 0x33 / SS 0x2B).
    /// </summary>
    public static void EnterLongMode(Cpu c, ulong cr3, int cpl = 0) => c.RestoreState(LongMode(c.SaveState(), cr3, cpl));

    /// <summary><paramref name="s"/> moved to 64-bit mode as <see cref="EnterLongMode"/> describes.</summary>
    public static CpuState LongMode(CpuState s, ulong cr3, int cpl = 0)
    {
        int dpl = cpl << 5;
        var data = Flat(cpl == 3 ? (ushort)0x2B : (ushort)0x18, (ushort)(Data32 | dpl));
        return s with
        {
            Cr0 = Cr0.PE | Cr0.MP | Cr0.ET | Cr0.NE | Cr0.WP | Cr0.PG,
            Cr4 = Cr4.PAE | Cr4.PGE | Cr4.OSFXSR | Cr4.OSXMMEXCPT,
            Efer = Efer.SCE | Efer.LME | Efer.LMA | Efer.NXE,
            Cr3 = cr3,
            Cpl = cpl,
            Cs = Flat(cpl == 3 ? (ushort)0x33 : (ushort)0x10, (ushort)(Code64 | dpl)),
            Ss = data,
            Ds = data,
            Es = data,
            Fs = data,
            Gs = data,
            Tr = MinimalTss,
        };
    }

    /// <summary>User-mode variant used by the differential tests.</summary>
    public static void EnterLongModeUser(Cpu c, ulong cr3) => EnterLongMode(c, cr3, cpl: 3);

    /// <summary>
    /// Flat 32-bit protected mode with paging off, CS = 0x10 / data 0x18 (as the PVH and multiboot
    /// entry conventions describe: 4 GiB segments, CPL 0).
    /// </summary>
    public static void EnterProtectedFlat32(Cpu c, ushort codeSelector = 0x10, ushort dataSelector = 0x18) =>
        c.RestoreState(ProtectedFlat32(c.SaveState(), codeSelector, dataSelector));

    /// <summary><paramref name="s"/> moved to flat 32-bit protected mode as <see cref="EnterProtectedFlat32"/> describes.</summary>
    public static CpuState ProtectedFlat32(CpuState s, ushort codeSelector = 0x10, ushort dataSelector = 0x18)
    {
        // The hidden DPL matches the selectors' RPL, as after loading them from a flat GDT.
        var data = Flat(dataSelector, (ushort)(Data32 | ((dataSelector & 3) << 5)));
        return s with
        {
            Cr0 = Cr0.PE | Cr0.ET,
            Cr4 = 0,
            Efer = 0,
            Cpl = codeSelector & 3,
            Cs = Flat(codeSelector, (ushort)(Code32 | ((codeSelector & 3) << 5))),
            Ss = data,
            Ds = data,
            Es = data,
            Fs = data,
            Gs = data,
            Tr = MinimalTss,
        };
    }
}
