namespace SharpVisor.Cpu.X86;

/// <summary>
/// Puts a vCPU directly into a well-defined mode, as firmware or a boot loader would leave it:
/// used by the Linux/PVH/multiboot loaders and by tests. Hidden segment state is set as if loaded
/// from a flat GDT with the conventional selectors.
/// </summary>
public static class CpuSetup
{
    /// <summary>Flat segment attributes: code (execute/read, accessed) and data (read/write, accessed), present, G=1.</summary>
    const ushort Code64 = 0xA09B, Code32 = 0xC09B, Data32 = 0xC093;

    /// <summary>
    /// 64-bit mode with 4-level paging rooted at <paramref name="cr3"/>, at privilege
    /// <paramref name="cpl"/> (selectors: kernel CS 0x10 / DS 0x18 as Linux's boot GDT, user CS 0x33 / SS 0x2B).
    /// </summary>
    public static void EnterLongMode(Cpu c, ulong cr3, int cpl = 0)
    {
        c.Cr0Value = Cr0.PE | Cr0.MP | Cr0.ET | Cr0.NE | Cr0.WP | Cr0.PG;
        c.Cr4Value = Cr4.PAE | Cr4.PGE | Cr4.OSFXSR | Cr4.OSXMMEXCPT;
        c.EferValue = Efer.SCE | Efer.LME | Efer.LMA | Efer.NXE;
        c.Cr3 = cr3;
        int dpl = cpl << 5;
        ushort cs = cpl == 3 ? (ushort)0x33 : (ushort)0x10;
        ushort ds = cpl == 3 ? (ushort)0x2B : (ushort)0x18;
        c.Segs[(int)Seg.CS] = new SegmentRegister { Selector = cs, Base = 0, Limit = 0xFFFF_FFFF, Attributes = (ushort)(Code64 | dpl) };
        for (int s = 0; s < 6; s++)
        {
            if (s != (int)Seg.CS)
            {
                c.Segs[s] = new SegmentRegister { Selector = ds, Base = 0, Limit = 0xFFFF_FFFF, Attributes = (ushort)(Data32 | dpl) };
            }
        }
        c.Tr = new SegmentRegister { Selector = 0, Base = 0, Limit = 0x67, Attributes = 0x8B };
        c.FlushTlb(includeGlobal: true);
        c.UpdateMode();
    }

    /// <summary>User-mode variant used by the differential tests.</summary>
    public static void EnterLongModeUser(Cpu c, ulong cr3) => EnterLongMode(c, cr3, cpl: 3);

    /// <summary>
    /// Flat 32-bit protected mode with paging off, CS = 0x10 / data 0x18 (as the PVH and multiboot
    /// entry conventions describe: 4 GiB segments, CPL 0).
    /// </summary>
    public static void EnterProtectedFlat32(Cpu c, ushort codeSelector = 0x10, ushort dataSelector = 0x18)
    {
        c.Cr0Value = Cr0.PE | Cr0.ET;
        c.Cr4Value = 0;
        c.EferValue = 0;
        // The hidden DPL matches the selectors' RPL, as after loading them from a flat GDT.
        int dpl = (codeSelector & 3) << 5;
        c.Segs[(int)Seg.CS] = new SegmentRegister { Selector = codeSelector, Base = 0, Limit = 0xFFFF_FFFF, Attributes = (ushort)(Code32 | dpl) };
        for (int s = 0; s < 6; s++)
        {
            if (s != (int)Seg.CS)
            {
                c.Segs[s] = new SegmentRegister { Selector = dataSelector, Base = 0, Limit = 0xFFFF_FFFF, Attributes = (ushort)(Data32 | ((dataSelector & 3) << 5)) };
            }
        }
        c.Tr = new SegmentRegister { Selector = 0, Base = 0, Limit = 0x67, Attributes = 0x8B };
        c.FlushTlb(includeGlobal: true);
        c.UpdateMode();
    }
}
