using SharpVisor.Core;

namespace SharpVisor.Cpu.X86.Semantics;

/// <summary>
/// Writes to CR0, CR3, CR4, CR8 and the debug registers with the checks of SDM Vol. 2B
/// "MOV—Move to/from Control Registers" / "MOV—Move to/from Debug Registers" and the mode rules of
/// Vol. 3A 2.5 and 10.8.5 (IA-32e mode activation). Every check happens before any state changes.
/// </summary>
public static class ControlRegisters
{
    /// <summary>CR0 bits that exist (SDM Vol. 3A 2.5); other bits of CR0[31:0] are ignored on write.</summary>
    const ulong Cr0Defined = Cr0.PE | Cr0.MP | Cr0.EM | Cr0.TS | Cr0.ET | Cr0.NE | Cr0.WP | Cr0.AM | Cr0.NW | Cr0.CD | Cr0.PG;

    /// <summary>
    /// CR4 bits this CPU implements, i.e. the ones whose feature CPUID advertises (CPUID.1:EDX DE, PSE,
    /// TSC, PAE, MCE, PGE, FXSR, SSE; PCE is architectural). Setting any other bit is #GP (SDM Vol. 3A 2.5).
    /// CR4.MCE enables #MC delivery; no machine check is ever signalled, so it has no other effect.
    /// </summary>
    public const ulong Cr4Supported = Cr4.DE | Cr4.PSE | Cr4.TSD | Cr4.PAE | Cr4.MCE | Cr4.PGE | Cr4.PCE | Cr4.OSFXSR | Cr4.OSXMMEXCPT;

    /// <summary>CR4 bits whose change invalidates all translations (SDM Vol. 3A 4.10.4.1).</summary>
    const ulong Cr4FlushAll = Cr4.PSE | Cr4.PAE | Cr4.PGE | Cr4.PCIDE | Cr4.SMEP | Cr4.SMAP | Cr4.PKE;

    /// <summary>Reads CRn as MOV r, CRn does (CR8 is the APIC TPR's priority class).</summary>
    public static ulong Read(Cpu c, int cr) => cr switch
    {
        0 => c.Cr0Value,
        2 => c.Cr2,
        3 => c.Cr3,
        4 => c.Cr4Value,
        8 => ReadTpr(c) >> 4,
        _ => throw c.InvalidOpcode(), // CR1, CR5-7, CR9-15: #UD (SDM MOV CR, "#UD If an attempt is made to access CR1, CR5, CR6, or CR7")
    };

    public static void Write(Cpu c, int cr, ulong v)
    {
        switch (cr)
        {
            case 0: WriteCr0(c, v); break;
            case 2: c.Cr2 = v; break;
            case 3: WriteCr3(c, v); break;
            case 4: WriteCr4(c, v); break;
            case 8:
                if ((v & ~0xFUL) != 0)
                {
                    throw Fail(c, "CR8 reserved bits", v);
                }
                WriteTpr(c, (uint)v << 4);
                c.RecheckInterrupts(); // lowering the priority may unmask a pending interrupt
                break;
            default:
                throw c.InvalidOpcode();
        }
    }

    /// <summary>Counts a refused write and logs it once per <paramref name="rule"/> (a fixed string, so a guest cannot flood the log).</summary>
    static GuestFault Fail(Cpu c, string rule, ulong value = 0)
    {
        c.Counters.CrWriteFaults.IncrementUnsynchronized();
        c.Log.Once($"crfault:{rule}", "cpu", $"cpu{c.Index}: control register write refused (#GP): {rule} (value 0x{value:x}, further ones counted in {c.Counters.CrWriteFaults.Name})");
        return c.GeneralProtection(0);
    }

    /// <summary>MOV CR0 (SDM Vol. 2B MOV CR; Vol. 3A 2.5, 10.8.5 for IA-32e activation).</summary>
    public static void WriteCr0(Cpu c, ulong v)
    {
        if ((v >> 32) != 0)
        {
            throw Fail(c, "CR0[63:32] set", v);
        }
        v = (v & Cr0Defined) | Cr0.ET; // ET is hardwired to 1 (SDM 2.5)
        if ((v & Cr0.PG) != 0 && (v & Cr0.PE) == 0)
        {
            throw Fail(c, "CR0.PG without CR0.PE");
        }
        if ((v & Cr0.NW) != 0 && (v & Cr0.CD) == 0)
        {
            throw Fail(c, "CR0.NW without CR0.CD");
        }
        ulong old = c.Cr0Value;
        bool pgOn = (old & Cr0.PG) == 0 && (v & Cr0.PG) != 0;
        bool pgOff = (old & Cr0.PG) != 0 && (v & Cr0.PG) == 0;
        ulong efer = c.EferValue;
        if (pgOn && (efer & Efer.LME) != 0)
        {
            // Activating IA-32e mode (SDM 10.8.5): needs PAE, and must be done from legacy protected
            // mode with a code segment whose L bit is clear.
            if ((c.Cr4Value & Cr4.PAE) == 0)
            {
                throw Fail(c, "long mode activation with CR4.PAE clear");
            }
            if (c.Segs[(int)Seg.CS].Long)
            {
                throw Fail(c, "long mode activation with CS.L set");
            }
            efer |= Efer.LMA;
        }
        if (pgOff && (efer & Efer.LMA) != 0)
        {
            if (c.Mode == CpuMode.Long64)
            {
                throw Fail(c, "clearing CR0.PG in 64-bit mode");
            }
            efer &= ~Efer.LMA; // leaving IA-32e mode from compatibility mode (SDM 10.8.5.4)
        }
        c.Cr0Value = v;
        c.EferValue = efer;
        if (((old ^ v) & (Cr0.PG | Cr0.WP | Cr0.PE)) != 0)
        {
            // Paging or the supervisor write-protect rule changed: cached translations (and their
            // permission tags) are void (SDM 4.10.4.1).
            c.FlushTlb(includeGlobal: true);
        }
        c.UpdateMode();
    }

    /// <summary>MOV CR3: reserved bits are those above MAXPHYADDR in IA-32e mode; non-global translations are flushed (SDM 4.10.4.1).</summary>
    public static void WriteCr3(Cpu c, ulong v)
    {
        if (c.LongModeActive)
        {
            // PCIDE is never set (PCID not advertised), so bit 63 is reserved too (SDM 4.5.4, Table 4-12).
            if ((v >> Cpu.PhysAddrBits) != 0)
            {
                throw Fail(c, "CR3 reserved bits above MAXPHYADDR", v);
            }
        }
        else
        {
            v = (uint)v;
        }
        c.Cr3 = v;
        c.FlushTlb(includeGlobal: false);
    }

    /// <summary>MOV CR4 (SDM Vol. 2B MOV CR; Vol. 3A 2.5).</summary>
    public static void WriteCr4(Cpu c, ulong v)
    {
        if ((v & ~Cr4Supported) != 0)
        {
            throw Fail(c, "CR4 bits of features not advertised", v);
        }
        if (c.LongModeActive && (v & Cr4.PAE) == 0)
        {
            throw Fail(c, "clearing CR4.PAE in IA-32e mode");
        }
        ulong old = c.Cr4Value;
        c.Cr4Value = v;
        if (((old ^ v) & Cr4FlushAll) != 0)
        {
            c.FlushTlb(includeGlobal: true);
        }
        if (((old ^ v) & Cr4.DE) != 0)
        {
            c.UpdateDebugState(); // DE turns DR7 R/W = 10 into I/O breakpoints (SDM 18.2.4)
        }
        c.UpdateMode();
    }

    // ---------------------------------------------------------------- CR8 / TPR

    const uint TprOffset = 0x80, X2ApicTprMsr = 0x808;

    /// <summary>The APIC TPR (SDM Vol. 3A 11.8.6: CR8[3:0] = TPR[7:4]), through the xAPIC page or the x2APIC MSR.</summary>
    static uint ReadTpr(Cpu c)
    {
        if (c.Apic is { } apic)
        {
            if (apic.MmioBase != null)
            {
                return (uint)apic.MmioRead(TprOffset, 4) & 0xFF;
            }
            if (apic.TryReadMsr(X2ApicTprMsr, out ulong tpr))
            {
                return (uint)tpr & 0xFF;
            }
        }
        return c.Msr.TprWithoutApic; // no APIC (or it is disabled): CR8 still holds its value
    }

    static void WriteTpr(Cpu c, uint tpr)
    {
        if (c.Apic is { } apic)
        {
            if (apic.MmioBase != null)
            {
                apic.MmioWrite(TprOffset, 4, tpr);
                return;
            }
            if (apic.TryWriteMsr(X2ApicTprMsr, tpr))
            {
                return;
            }
        }
        c.Msr.TprWithoutApic = tpr;
    }

    // ---------------------------------------------------------------- debug registers

    /// <summary>DR6 bits software can write (B0-B3, BD, BS, BT); the others read as fixed values (SDM Vol. 3B 18.2.3).</summary>
    const ulong Dr6Writable = 0xE00F;
    /// <summary>DR7 writable bits: L0-G3, LE, GE, GD, R/W and LEN fields; bit 10 reads as 1 (SDM 18.2.4).</summary>
    const ulong Dr7Writable = 0xFFFF_23FF, Dr7Fixed = 0x400;

    /// <summary>DR4/DR5 alias DR6/DR7 unless CR4.DE, when they are #UD (SDM 18.2.2).</summary>
    static int AliasDr(Cpu c, int dr)
    {
        if (dr > 7)
        {
            throw c.InvalidOpcode(); // DR8-DR15 (REX.R) do not exist: #UD (SDM MOV DR, 64-bit mode exceptions)
        }
        if (dr is 4 or 5)
        {
            if ((c.Cr4Value & Cr4.DE) != 0)
            {
                throw c.InvalidOpcode();
            }
            return dr + 2;
        }
        return dr;
    }

    /// <summary>MOV r, DRn (the caller checked CPL 0): DR7.GD first (#DB), then DR4/DR5 (#UD).</summary>
    public static ulong ReadDr(Cpu c, int dr)
    {
        c.CheckGeneralDetect();
        return c.Dr[AliasDr(c, dr)];
    }

    /// <summary>MOV DRn, r (the caller checked CPL 0). Breakpoint changes take effect from the next instruction.</summary>
    public static void WriteDr(Cpu c, int dr, ulong v)
    {
        c.CheckGeneralDetect();
        dr = AliasDr(c, dr);
        if (dr >= 6 && (v >> 32) != 0)
        {
            throw Fail(c, "DR6/DR7 bits 63:32 set", v);
        }
        switch (dr)
        {
            case 6:
                c.Dr[6] = (v & Dr6Writable) | Cpu.Dr6Fixed;
                return;
            case 7:
                c.Dr[7] = (v & Dr7Writable) | Dr7Fixed;
                break;
            default:
                c.Dr[dr] = v;
                break;
        }
        c.UpdateDebugState();
    }
}
