using SharpVisor.Core;

namespace SharpVisor.Cpu.X86.Semantics;

/// <summary>What started a task switch: it decides the busy bits, NT and the back-link (SDM Vol. 3A Table 7-2).</summary>
internal enum TaskSwitchSource : byte
{
    Jmp,
    Call,
    Iret,
    /// <summary>INT n / INT3 / INTO, an exception or an external interrupt through an IDT task gate.</summary>
    Interrupt,
}

/// <summary>
/// Hardware task switching in legacy protected mode (SDM Vol. 3A chapter 7, "Task Management"; the
/// TASK-GATE / TASK-STATE-SEGMENT / TASK-RETURN parts of the JMP, CALL, INT n and IRET pseudo-code in
/// Vol. 2). 32-bit TSS (Figure 7-2) and 16-bit TSS (Figure 7-11). IA-32e mode has no task switches:
/// callers raise #GP there before reaching this class.
///
/// Order of <see cref="Switch"/>: every check and every TSS read (and a probe of every page the switch
/// writes) happens first, so a fault up to that point leaves the old task untouched (SDM 7.3 steps 1-5).
/// Then the old state is saved, busy bits / back-link / TR / CR0.TS change and the new registers are
/// loaded — the commit point — and only after that are the new LDTR and segment registers qualified:
/// a fault there is raised in the context of the new task (SDM 7.3 step 13 and its note), with the
/// old task's state already in its TSS.
/// </summary>
internal static unsafe class TaskSwitch
{

    // 32-bit TSS fields (SDM Vol. 3A 7.2.1, Figure 7-2).
    const uint Link = 0x00, Cr3Off = 0x1C, Eip32 = 0x20, Eflags32 = 0x24, Gpr32 = 0x28, Seg32 = 0x48, Ldt32 = 0x60, Trap32 = 0x64;
    // 16-bit TSS fields (SDM Vol. 3A 7.6, Figure 7-11): IP, FLAGS, AX..DI, ES, CS, SS, DS, LDT.
    const uint Ip16 = 0x0E, Flags16 = 0x10, Gpr16 = 0x12, Seg16 = 0x22, Ldt16 = 0x2A;

    /// <summary>Smallest TSS limit the processor accepts: 67H for a 32-bit TSS, 2BH (a 44-byte TSS) for a 16-bit one (SDM 7.2.2, Table 7-1).</summary>
    const uint MinLimit32 = 0x67, MinLimit16 = 0x2B;

    /// <summary>DR7 L0-L3 and LE are cleared on every task switch (SDM Vol. 3B 18.2.4).</summary>
    const ulong Dr7LocalEnables = 0x155;
    /// <summary>DR6.BT: the debug exception came from the T flag of the new TSS (SDM Vol. 3B 18.2.3).</summary>
    const ulong Dr6Bt = 1UL << 15;

    static bool IsAvailableTss(in Descriptor d) => d.IsSystem && d.Type is 1 or 9;
    static bool IsBusyTss(in Descriptor d) => d.IsSystem && d.Type is 3 or 0xB;

    // ------------------------------------------------------------------ the four sources

    /// <summary>
    /// Far JMP/CALL whose selector names a TSS descriptor or a task gate (SDM JMP/CALL pseudo-code,
    /// TASK-STATE-SEGMENT and TASK-GATE). Returns true when the new task's T flag asks for a debug trap.
    /// </summary>
    internal static bool FarJmpCall(Cpu c, ushort selector, in Descriptor d, ulong descAddr, bool call)
    {
        uint err = (uint)(selector & ~3);
        var source = call ? TaskSwitchSource.Call : TaskSwitchSource.Jmp;
        if (d.Type == 5)
        {
            // Task gate: DPL against CPL and the gate selector's RPL, then the TSS it names.
            if (d.Dpl < c.Cpl || d.Dpl < (selector & 3))
            {
                throw c.GeneralProtection(err);
            }
            if (!d.Present)
            {
                throw c.Fault(Vector.NP, err);
            }
            ushort tssSel = (ushort)(d.Raw >> 16);
            var tss = ReadTssDescriptor(c, tssSel, Vector.GP, 0, out ulong tssAddr);
            uint tssErr = (uint)(tssSel & ~3);
            if (!IsAvailableTss(tss))
            {
                throw c.GeneralProtection(tssErr); // not a TSS, or a busy one
            }
            if (!tss.Present)
            {
                throw c.Fault(Vector.NP, tssErr);
            }
            return Switch(c, tssSel, tss, tssAddr, source, c.NextRip, 0, false, 0);
        }
        // TSS descriptor: only in the GDT; DPL against CPL and RPL; must be available.
        if ((selector & 4) != 0 || d.Dpl < c.Cpl || d.Dpl < (selector & 3) || !IsAvailableTss(d))
        {
            throw c.GeneralProtection(err);
        }
        if (!d.Present)
        {
            throw c.Fault(Vector.NP, err);
        }
        return Switch(c, selector, d, descAddr, source, c.NextRip, 0, false, 0);
    }

    /// <summary>
    /// IRET with EFLAGS.NT = 1 outside IA-32e mode (SDM IRET pseudo-code, TASK-RETURN): back to the
    /// task named by the previous-task link of the current TSS, which must be a busy TSS in the GDT.
    /// Returns true when the new task's T flag asks for a debug trap.
    /// </summary>
    internal static bool IretReturn(Cpu c)
    {
        ushort link = (ushort)c.SystemRead(c.Tr.Base + Link, 2);
        uint err = (uint)(link & ~3);
        var d = ReadTssDescriptor(c, link, Vector.TS, 0, out ulong addr);
        if (!IsBusyTss(d))
        {
            throw c.Fault(Vector.TS, err);
        }
        if (!d.Present)
        {
            throw c.Fault(Vector.NP, err);
        }
        return Switch(c, link, d, addr, TaskSwitchSource.Iret, c.NextRip, 0, false, 0);
    }

    /// <summary>
    /// An event through a task gate in the IDT (SDM INT n pseudo-code, TASK-GATE; Vol. 3A 6.12.2).
    /// The gate's DPL and presence were checked by the caller. An exception's error code is pushed
    /// on the new task's stack. Returns true when the new task's T flag asks for a debug trap.
    /// </summary>
    internal static bool ThroughIdtGate(Cpu c, ulong gate, uint ext, bool hasError, uint error, ulong returnEip)
    {
        ushort tssSel = (ushort)(gate >> 16);
        uint err = (uint)(tssSel & ~3) | ext;
        var d = ReadTssDescriptor(c, tssSel, Vector.GP, ext, out ulong addr);
        if (!IsAvailableTss(d))
        {
            throw c.GeneralProtection(err);
        }
        if (!d.Present)
        {
            throw c.Fault(Vector.NP, err);
        }
        return Switch(c, tssSel, d, addr, TaskSwitchSource.Interrupt, returnEip, ext, hasError, error);
    }

    /// <summary>The #DB trap a new task's T flag raises before its first instruction (SDM Vol. 3A 7.2.1, Vol. 3B 18.3.1.5).</summary>
    internal static GuestFault DebugTrap(Cpu c)
    {
        SetDebugTrapStatus(c);
        return c.Fault(Vector.DB);
    }

    /// <summary>DR6.BT for a #DB delivered because of the T flag.</summary>
    internal static void SetDebugTrapStatus(Cpu c) => c.Dr[6] |= Dr6Bt;

    /// <summary>A TSS selector must name the GDT and lie within its limit, else <paramref name="vector"/>(selector).</summary>
    static Descriptor ReadTssDescriptor(Cpu c, ushort selector, byte vector, uint ext, out ulong addr)
    {
        uint err = (uint)(selector & ~3) | ext;
        if ((selector & 4) != 0 || (uint)(selector & ~7) + 7 > c.GdtLimit)
        {
            throw c.Fault(vector, err);
        }
        addr = c.GdtBase + (uint)(selector & ~7);
        return new Descriptor(c.SystemRead(addr, 8));
    }

    // ------------------------------------------------------------------ the switch itself

    /// <summary>
    /// SDM Vol. 3A 7.3 steps 3-13 for a new TSS that passed its source's checks. <paramref name="returnEip"/>
    /// is the EIP saved for the old task; <paramref name="ext"/> the EXT bit of error codes.
    /// </summary>
    static bool Switch(Cpu c, ushort newSel, in Descriptor newDesc, ulong newDescAddr, TaskSwitchSource source,
        ulong returnEip, uint ext, bool hasError, uint error)
    {
        bool new32 = (newDesc.Type & 8) != 0;
        uint newErr = (uint)(newSel & ~3) | ext;
        if (newDesc.Limit < (new32 ? MinLimit32 : MinLimit16))
        {
            throw c.Fault(Vector.TS, newErr);
        }
        ulong oldBase = c.Tr.Base, newBase = newDesc.Base;
        bool old32 = (c.Tr.Type & 8) != 0;
        // The old TSS must hold the dynamic fields the switch writes (through GS / DS).
        if (c.Tr.Limit < (old32 ? Seg32 + 5 * 4 + 1u : Ldt16 - 1u))
        {
            throw c.Fault(Vector.TS, (uint)(c.Tr.Selector & ~3) | ext);
        }

        // ---- read the whole new state (a #PF here is in the old task's context: SDM 7.3 step 5)
        Span<uint> gpr = stackalloc uint[8];
        Span<ushort> sel = stackalloc ushort[6];
        uint eip, eflags, cr3 = 0;
        ushort ldt;
        bool trap = false;
        if (new32)
        {
            cr3 = (uint)c.SystemRead(newBase + Cr3Off, 4);
            eip = (uint)c.SystemRead(newBase + Eip32, 4);
            eflags = (uint)c.SystemRead(newBase + Eflags32, 4);
            for (int i = 0; i < 8; i++)
            {
                gpr[i] = (uint)c.SystemRead(newBase + Gpr32 + (ulong)i * 4, 4);
            }
            for (int i = 0; i < 6; i++)
            {
                sel[i] = (ushort)c.SystemRead(newBase + Seg32 + (ulong)i * 4, 2);
            }
            ldt = (ushort)c.SystemRead(newBase + Ldt32, 2);
            trap = (c.SystemRead(newBase + Trap32, 2) & 1) != 0;
        }
        else
        {
            eip = (uint)c.SystemRead(newBase + Ip16, 2);
            eflags = (uint)c.SystemRead(newBase + Flags16, 2); // FLAGS[31:16] become 0
            for (int i = 0; i < 8; i++)
            {
                // A 16-bit TSS holds only the low words; the upper words read as FFFFH afterwards
                // (observed on 386-Pentium, as modelled by Bochs and QEMU; the SDM leaves it unsaid).
                gpr[i] = 0xFFFF_0000 | (uint)c.SystemRead(newBase + Gpr16 + (ulong)i * 2, 2);
            }
            ReadOnlySpan<Seg> order = [Seg.ES, Seg.CS, Seg.SS, Seg.DS];
            for (int i = 0; i < order.Length; i++)
            {
                sel[(int)order[i]] = (ushort)c.SystemRead(newBase + Seg16 + (ulong)i * 2, 2);
            }
            sel[(int)Seg.FS] = sel[(int)Seg.GS] = 0; // not in a 16-bit TSS: loaded null
            ldt = (ushort)c.SystemRead(newBase + Ldt16, 2);
        }

        // ---- probe every page the commit writes, so it cannot fault half-way
        bool clearOldBusy = source is TaskSwitchSource.Jmp or TaskSwitchSource.Iret;
        bool nested = source is TaskSwitchSource.Call or TaskSwitchSource.Interrupt;
        ulong oldDescAddr = c.GdtBase + (uint)(c.Tr.Selector & ~7);
        bool oldInGdt = (c.Tr.Selector & ~3) != 0 && (c.Tr.Selector & 4) == 0;
        ProbeWrite(c, oldBase + (old32 ? Eip32 : Ip16), oldBase + (old32 ? Seg32 + 5 * 4 + 1u : Ldt16 - 1u));
        if (nested)
        {
            ProbeWrite(c, newBase + Link, newBase + Link + 1);
        }
        if (clearOldBusy && oldInGdt)
        {
            ProbeWrite(c, oldDescAddr + 5, oldDescAddr + 5);
        }
        if (source != TaskSwitchSource.Iret)
        {
            ProbeWrite(c, newDescAddr + 5, newDescAddr + 5);
        }

        // ================= commit: from here on the switch completes (SDM 7.3 note)
        c.Counters.TaskSwitches.IncrementUnsynchronized();
        ushort oldTrSel = c.Tr.Selector;
        if (clearOldBusy && oldInGdt)
        {
            // Table 7-2: JMP and IRET leave the old task not busy.
            c.SystemWrite(oldDescAddr + 5, 1, c.SystemRead(oldDescAddr + 5, 1) & ~2UL);
        }
        ulong oldFlags = c.GetFlags();
        if (source == TaskSwitchSource.Iret)
        {
            oldFlags &= ~RFlags.NT; // step 7: IRET clears NT in the saved image
        }
        SaveState(c, oldBase, old32, returnEip, oldFlags);
        if (nested)
        {
            c.SystemWrite(newBase + Link, 2, oldTrSel); // Table 7-2: back-link to the old task
            eflags |= (uint)RFlags.NT;                  // step 9: the new task is nested
        }
        if (source != TaskSwitchSource.Iret)
        {
            c.SystemWrite(newDescAddr + 5, 1, (newDesc.Raw >> 40) | 2); // step 10: new task busy
        }
        c.Tr = new SegmentRegister { Selector = newSel, Base = newBase, Limit = newDesc.Limit, Attributes = (ushort)(newDesc.Attributes | 2) };
        c.Cr0Value |= Cr0.TS;
        c.Dr[7] &= ~Dr7LocalEnables;
        c.UpdateDebugState(); // the breakpoints those enables armed are gone

        // Step 12: CR3 (32-bit TSS, paging on only), EFLAGS, EIP, general registers, selectors.
        if (new32 && c.Paging && cr3 != (uint)c.Cr3)
        {
            ControlRegisters.WriteCr3(c, cr3); // flushes non-global translations (SDM 4.10.4.1)
        }
        for (int i = 0; i < 8; i++)
        {
            c.Regs.Gpr[i] = gpr[i];
        }
        bool v86 = new32 && (eflags & RFlags.VM) != 0;
        int newCpl = v86 ? 3 : sel[(int)Seg.CS] & 3;
        // Selectors go in first with unusable hidden parts: a fault while qualifying one of them
        // is delivered with the new task's selectors in place (step 13).
        for (int i = 0; i < 6; i++)
        {
            c.Segs[i] = new SegmentRegister { Selector = sel[i] };
        }
        c.Ldtr = new SegmentRegister { Selector = ldt };
        c.SetFlags(eflags); // also recomputes the mode when VM changes
        c.UpdateMode();
        c.Rip = eip;
        c.NextRip = eip;
        c.ExitBlock = true;

        // Step 13: qualify LDTR and the segment registers in the new task's context.
        try
        {
            LoadLdtr(c, ldt, ext);
            if (v86)
            {
                // Virtual-8086 task: segments are real-mode style, CPL 3 (SDM 20.2.5).
                for (int i = 0; i < 6; i++)
                {
                    c.SetSegmentReal((Seg)i, sel[i]);
                }
            }
            else
            {
                LoadCs(c, sel[(int)Seg.CS], ext);
                LoadSs(c, sel[(int)Seg.SS], newCpl, ext);
                ReadOnlySpan<Seg> data = [Seg.DS, Seg.ES, Seg.FS, Seg.GS];
                foreach (var s in data)
                {
                    LoadData(c, s, sel[(int)s], newCpl, ext);
                }
            }
        }
        catch (GuestFault)
        {
            c.Counters.TaskSwitchFaultsAfterCommit.IncrementUnsynchronized();
            c.Log.Once("task-switch-after-commit", "cpu", $"cpu{c.Index}: fault loading the new task's segments after a task switch to TSS {newSel:x4} (raised in the new task, SDM 7.3)");
            throw;
        }

        if (hasError)
        {
            // INT n pseudo-code TASK-GATE: the error code goes on the new task's stack, sized by the TSS.
            c.PushSized(new32 ? 4 : 2, error);
        }
        if (eip > c.Segs[(int)Seg.CS].Limit)
        {
            throw c.GeneralProtection(ext);
        }
        return trap && new32;
    }

    /// <summary>Translates the first and last byte of a range for a supervisor write (the range spans at most two pages).</summary>
    static void ProbeWrite(Cpu c, ulong first, ulong last)
    {
        c.Translate(first & 0xFFFF_FFFF, Access.Write, user: false, implicitSupervisor: true);
        c.Translate(last & 0xFFFF_FFFF, Access.Write, user: false, implicitSupervisor: true);
    }

    /// <summary>Step 8: the dynamic fields of the old TSS (not CR3, LDT, T, the I/O map base or the stacks).</summary>
    static void SaveState(Cpu c, ulong b, bool tss32, ulong eip, ulong flags)
    {
        if (tss32)
        {
            c.SystemWrite(b + Eip32, 4, (uint)eip);
            c.SystemWrite(b + Eflags32, 4, (uint)flags);
            for (int i = 0; i < 8; i++)
            {
                c.SystemWrite(b + Gpr32 + (ulong)i * 4, 4, (uint)c.Regs.Gpr[i]);
            }
            for (int i = 0; i < 6; i++)
            {
                c.SystemWrite(b + Seg32 + (ulong)i * 4, 2, c.Segs[i].Selector); // bits 31:16 are reserved: left alone
            }
            return;
        }
        c.SystemWrite(b + Ip16, 2, (ushort)eip);
        c.SystemWrite(b + Flags16, 2, (ushort)flags);
        for (int i = 0; i < 8; i++)
        {
            c.SystemWrite(b + Gpr16 + (ulong)i * 2, 2, (ushort)c.Regs.Gpr[i]);
        }
        ReadOnlySpan<Seg> order = [Seg.ES, Seg.CS, Seg.SS, Seg.DS];
        for (int i = 0; i < order.Length; i++)
        {
            c.SystemWrite(b + Seg16 + (ulong)i * 2, 2, c.Segs[(int)order[i]].Selector);
        }
    }

    // ------------------------------------------------------------------ qualifying the new segments (Table 7-1)

    /// <summary>Reads a descriptor from the GDT or the (new) LDT; outside the table is #TS(selector).</summary>
    static Descriptor ReadForTask(Cpu c, ushort selector, uint ext, out ulong addr)
    {
        bool ldt = (selector & 4) != 0;
        uint limit = ldt ? c.Ldtr.Limit : c.GdtLimit;
        if ((ldt && !c.Ldtr.Present) || (uint)(selector & ~7) + 7 > limit)
        {
            throw c.Fault(Vector.TS, (uint)(selector & ~3) | ext);
        }
        addr = (ldt ? c.Ldtr.Base : c.GdtBase) + (uint)(selector & ~7);
        return new Descriptor(c.SystemRead(addr, 8));
    }

    /// <summary>The new LDT: null is allowed; otherwise an LDT descriptor in the GDT that is present, else #TS(LDT selector).</summary>
    static void LoadLdtr(Cpu c, ushort selector, uint ext)
    {
        uint err = (uint)(selector & ~3) | ext;
        if ((selector & 4) != 0)
        {
            throw c.Fault(Vector.TS, err);
        }
        if ((selector & ~3) == 0)
        {
            return; // null LDT: LDT references #GP later
        }
        if ((uint)(selector & ~7) + 7 > c.GdtLimit)
        {
            throw c.Fault(Vector.TS, err);
        }
        var d = new Descriptor(c.SystemRead(c.GdtBase + (uint)(selector & ~7), 8));
        if (!d.IsSystem || d.Type != 2 || !d.Present)
        {
            throw c.Fault(Vector.TS, err);
        }
        c.Ldtr = new SegmentRegister { Selector = selector, Base = d.Base, Limit = d.Limit, Attributes = d.Attributes };
    }

    /// <summary>CS: code; non-conforming DPL = RPL, conforming DPL &lt;= RPL, else #TS(CS); not present #NP(CS).</summary>
    static void LoadCs(Cpu c, ushort selector, uint ext)
    {
        uint err = (uint)(selector & ~3) | ext;
        if ((selector & ~3) == 0)
        {
            throw c.Fault(Vector.TS, err);
        }
        var d = ReadForTask(c, selector, ext, out ulong addr);
        int rpl = selector & 3;
        if (!d.IsCode || (d.IsConforming ? d.Dpl > rpl : d.Dpl != rpl))
        {
            throw c.Fault(Vector.TS, err);
        }
        if (!d.Present)
        {
            throw c.Fault(Vector.NP, err);
        }
        c.MarkAccessed(d, addr);
        c.SetSegment(Seg.CS, selector, d);
    }

    /// <summary>SS: writable data with DPL = RPL = CPL, else #TS(SS); not present #SS(SS).</summary>
    static void LoadSs(Cpu c, ushort selector, int cpl, uint ext)
    {
        uint err = (uint)(selector & ~3) | ext;
        if ((selector & ~3) == 0)
        {
            throw c.Fault(Vector.TS, err);
        }
        var d = ReadForTask(c, selector, ext, out ulong addr);
        if (!d.IsWritableData)
        {
            throw c.Fault(Vector.TS, err);
        }
        if (!d.Present)
        {
            throw c.Fault(Vector.SS, err);
        }
        if (d.Dpl != cpl || (selector & 3) != cpl)
        {
            throw c.Fault(Vector.TS, err);
        }
        c.MarkAccessed(d, addr);
        c.SetSegment(Seg.SS, selector, d);
    }

    /// <summary>DS/ES/FS/GS: null allowed; readable; data or non-conforming code needs DPL &gt;= CPL and RPL, else #TS; not present #NP.</summary>
    static void LoadData(Cpu c, Seg s, ushort selector, int cpl, uint ext)
    {
        if ((selector & ~3) == 0)
        {
            return; // null: stays unusable, as set at the commit point
        }
        uint err = (uint)(selector & ~3) | ext;
        var d = ReadForTask(c, selector, ext, out ulong addr);
        if (d.IsSystem || !d.IsReadable || (!d.IsConforming && (d.Dpl < cpl || d.Dpl < (selector & 3))))
        {
            throw c.Fault(Vector.TS, err);
        }
        if (!d.Present)
        {
            throw c.Fault(Vector.NP, err);
        }
        c.MarkAccessed(d, addr);
        c.SetSegment(s, selector, d);
    }
}
