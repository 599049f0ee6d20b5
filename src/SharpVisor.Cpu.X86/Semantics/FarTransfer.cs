using SharpVisor.Core;
using SharpVisor.Cpu.X86.Decode;

namespace SharpVisor.Cpu.X86.Semantics;

/// <summary>
/// Control transfers that change CS: far JMP/CALL/RET, IRET, SYSCALL/SYSRET, SYSENTER/SYSEXIT
/// (SDM Vol. 2A/2B pseudo-code of each; Vol. 3A 5.8 privilege checks). Everything that can fault
/// (stack reads, descriptor reads, checks) happens before the first state change.
/// </summary>
internal static unsafe class FarTransfer
{
    static ulong SizeMask(int size) => size switch { 2 => 0xFFFF, 4 => 0xFFFF_FFFF, _ => ulong.MaxValue };

    static ulong PeekSized(Cpu c, ulong offset, int size) => size switch
    {
        2 => c.PeekStack<S16>(offset),
        4 => c.PeekStack<S32>(offset),
        _ => c.PeekStack<S64>(offset),
    };

    static GuestFault Unsupported(Cpu c, string what, ushort selector)
    {
        c.Platform.UnsupportedFarTransfers.Increment();
        c.Log.Once($"far-unsupported:{what}", "cpu", $"cpu{c.Index}: {what} (selector {selector:x4}) is not implemented — raising #GP at {c.Segs[1].Selector:x4}:{c.Rip:x}");
        return c.GeneralProtection((uint)(selector & ~3));
    }

    // ------------------------------------------------------------------ far JMP / CALL

    /// <summary>Direct far JMP/CALL ptr16:16 / ptr16:32: offset in Imm, selector in Imm2, Sub = 1 for CALL.</summary>
    internal static void Direct(Cpu c, ref Op op) => Transfer(c, (ushort)op.Imm2, op.Imm, op.Size, op.Sub != 0);

    /// <summary>Indirect far JMP/CALL m16:16 / m16:32 / m16:64 (offset first, then the selector).</summary>
    internal static void Indirect(Cpu c, ref Op op)
    {
        ulong la = op.Linear(c);
        ulong offset = c.ReadSized(la, op.Size);
        ushort selector = c.Read16((la + op.Size) & c.Regs.LinearMask);
        Transfer(c, selector, offset, op.Size, op.Sub != 0);
    }

    static void Transfer(Cpu c, ushort selector, ulong offset, int size, bool call)
    {
        ushort oldCs = c.Segs[(int)Seg.CS].Selector;
        ulong ret = c.NextRip;
        if (c.Mode is CpuMode.Real or CpuMode.Virtual8086)
        {
            if (call)
            {
                c.PushSized(size, oldCs);
                c.PushSized(size, ret);
            }
            c.SetSegmentReal(Seg.CS, selector);
            c.NextRip = offset & SizeMask(size);
            return;
        }
        if ((selector & ~3) == 0)
        {
            throw c.GeneralProtection(0);
        }
        var d = c.ReadDescriptor(selector, out ulong addr);
        uint err = (uint)(selector & ~3);
        if (d.IsSystem)
        {
            if (d.Type == 0xC || (d.Type == 0x4 && !c.LongModeActive))
            {
                ThroughCallGate(c, selector, d, addr, call, oldCs, ret);
                return;
            }
            // Task gate or 16/32-bit TSS: a task switch (SDM 7.3). IA-32e mode has none: those types
            // are #GP(selector) there, like every other system type (SDM JMP/CALL, IA-32e exceptions).
            if (!c.LongModeActive && d.Type is 1 or 3 or 5 or 9 or 0xB)
            {
                if (TaskSwitch.FarJmpCall(c, selector, d, addr, call))
                {
                    throw TaskSwitch.DebugTrap(c);
                }
                return;
            }
            throw c.GeneralProtection(err);
        }
        if (!d.IsCode)
        {
            throw c.GeneralProtection(err);
        }
        if (d.IsConforming ? d.Dpl > c.Cpl : (selector & 3) > c.Cpl || d.Dpl != c.Cpl)
        {
            throw c.GeneralProtection(err);
        }
        if (!d.Present)
        {
            throw c.Fault(Vector.NP, err);
        }
        bool target64 = c.LongModeActive && d.Long;
        if (c.LongModeActive && d.Long && d.Big)
        {
            throw c.GeneralProtection(err);
        }
        if (target64)
        {
            if (!MsrAccess.IsCanonical(offset)) throw c.GeneralProtection(0);
        }
        else
        {
            offset &= SizeMask(size);
            if (offset > d.Limit) throw c.GeneralProtection(0);
        }
        if (call)
        {
            c.PushSized(size, oldCs);
            c.PushSized(size, ret);
        }
        c.MarkAccessed(d, addr);
        c.SetSegment(Seg.CS, (ushort)((selector & ~3) | c.Cpl), d);
        c.NextRip = offset;
    }

    /// <summary>
    /// Far CALL/JMP through a call gate (SDM Vol. 3A 5.8.3-5.8.6; CALL pseudo-code "CALL-GATE"):
    /// 64-bit gates in IA-32e mode (16 bytes, target must be 64-bit code, stack switch to a null SS
    /// and TSS.RSPn), 32/16-bit gates in legacy mode (stack switch to TSS SSn:ESPn, copying the
    /// gate's parameter count).
    /// </summary>
    static void ThroughCallGate(Cpu c, ushort gateSel, in Descriptor gate, ulong gateAddr, bool call, ushort oldCs, ulong ret)
    {
        uint gateErr = (uint)(gateSel & ~3);
        if (gate.Dpl < c.Cpl || gate.Dpl < (gateSel & 3))
        {
            throw c.GeneralProtection(gateErr);
        }
        if (!gate.Present)
        {
            throw c.Fault(Vector.NP, gateErr);
        }
        bool gate64 = c.LongModeActive;
        ulong target = (gate.Raw & 0xFFFF) | ((gate.Raw >> 32) & 0xFFFF_0000);
        if (gate64)
        {
            if ((uint)(gateSel & ~7) + 15 > ((gateSel & 4) != 0 ? c.Ldtr.Limit : c.GdtLimit))
            {
                throw c.GeneralProtection(gateErr);
            }
            ulong hi = c.ReadDescriptorHigh(gateAddr);
            if (((hi >> 40) & 0x1F) != 0)
            {
                throw c.GeneralProtection(gateErr);
            }
            target |= (hi & 0xFFFF_FFFF) << 32;
        }
        else if (gate.Type == 0x4)
        {
            target &= 0xFFFF;
        }
        ushort csSel = (ushort)(gate.Raw >> 16);
        if ((csSel & ~3) == 0)
        {
            throw c.GeneralProtection(0);
        }
        uint csErr = (uint)(csSel & ~3);
        var cs = c.ReadDescriptor(csSel, out ulong csAddr);
        if (!cs.IsCode || cs.Dpl > c.Cpl || (!call && !cs.IsConforming && cs.Dpl != c.Cpl))
        {
            throw c.GeneralProtection(csErr);
        }
        if (gate64 && (!cs.Long || cs.Big))
        {
            throw c.GeneralProtection(csErr);
        }
        if (!cs.Present)
        {
            throw c.Fault(Vector.NP, csErr);
        }
        if (gate64 ? !MsrAccess.IsCanonical(target) : target > cs.Limit)
        {
            throw c.GeneralProtection(0);
        }
        int size = gate64 ? 8 : gate.Type == 0xC ? 4 : 2;
        int newCpl = cs.IsConforming ? c.Cpl : cs.Dpl;
        if (call && newCpl < c.Cpl)
        {
            CallGateToInner(c, gate, gate64, size, newCpl, csSel, cs, csAddr, target, oldCs, ret);
            return;
        }
        if (call)
        {
            c.PushSized(size, oldCs);
            c.PushSized(size, ret);
        }
        c.MarkAccessed(cs, csAddr);
        c.SetSegment(Seg.CS, (ushort)((csSel & ~3) | c.Cpl), cs);
        c.NextRip = target;
    }

    static void CallGateToInner(Cpu c, in Descriptor gate, bool gate64, int size, int newCpl, ushort csSel, in Descriptor cs, ulong csAddr, ulong target, ushort oldCs, ulong ret)
    {
        ushort oldSs = c.Segs[(int)Seg.SS].Selector;
        ulong oldSp = c.Regs.Gpr[4];
        if (gate64)
        {
            // 64-bit TSS: RSPn at 4 + 8n; SS becomes a null selector with RPL = new CPL (SDM 5.8.6).
            ulong rsp = c.SystemRead(c.Tr.Base + 4 + (ulong)newCpl * 8, 8);
            if (!MsrAccess.IsCanonical(rsp))
            {
                throw c.Fault(Vector.SS, 0);
            }
            ReadOnlySpan<ulong> frame = [oldSs, oldSp, oldCs, ret];
            for (int i = 0; i < frame.Length; i++)
            {
                c.SystemWrite(rsp - (ulong)(i + 1) * 8, 8, frame[i]);
            }
            c.MarkAccessed(cs, csAddr);
            c.Segs[(int)Seg.SS] = new SegmentRegister { Selector = (ushort)newCpl, Attributes = (ushort)(0x93 | (newCpl << 5)) };
            c.SetSegment(Seg.CS, (ushort)((csSel & ~3) | newCpl), cs);
            c.Regs.Gpr[4] = rsp - 32;
            c.NextRip = target;
            return;
        }
        // 32-bit TSS: ESPn at 4 + 8n, SSn at 8 + 8n (SDM 7.2.1).
        ulong newSp = c.SystemRead(c.Tr.Base + 4 + (ulong)newCpl * 8, 4);
        ushort newSs = (ushort)c.SystemRead(c.Tr.Base + 8 + (ulong)newCpl * 8, 2);
        uint ssErr = (uint)(newSs & ~3);
        if ((newSs & ~3) == 0)
        {
            throw c.Fault(Vector.TS, 0);
        }
        var ssd = c.ReadDescriptor(newSs, out ulong ssAddr, Vector.TS);
        if ((newSs & 3) != newCpl || ssd.Dpl != newCpl || !ssd.IsWritableData)
        {
            throw c.Fault(Vector.TS, ssErr);
        }
        if (!ssd.Present)
        {
            throw c.Fault(Vector.SS, ssErr);
        }
        int count = (int)((gate.Raw >> 32) & 0x1F);
        ulong oldSsBase = c.Segs[(int)Seg.SS].Base;
        ulong oldMask = c.StackMask;
        ulong newMask = ssd.Big ? 0xFFFF_FFFFUL : 0xFFFF;
        // Read the parameters from the old stack before anything is written.
        Span<ulong> values = stackalloc ulong[4 + 31];
        int n = 0;
        values[n++] = oldSs;
        values[n++] = oldSp & oldMask;
        for (int i = count - 1; i >= 0; i--)
        {
            ulong paramOffset = (oldSp + (ulong)(i * size)) & oldMask;
            c.CheckStackAccess(paramOffset, (uint)size, SegmentAccess.Read); // #SS(0): SDM CALL "parameters ... not within the stack"
            values[n++] = c.ReadSized((oldSsBase + paramOffset) & 0xFFFF_FFFF, size);
        }
        values[n++] = oldCs;
        values[n++] = ret;
        // The new stack must hold the whole frame before anything is written: #SS(new SS selector)
        // (SDM Vol. 2A CALL, "CALL-GATE-TO-MORE-PRIVILEGE").
        ulong sp = newSp;
        for (int i = 0; i < n; i++)
        {
            sp = (sp - (ulong)size) & newMask;
            if (!Cpu.WithinLimit(sp, (uint)size, ssd.Limit, ssd.Attributes))
            {
                throw c.Fault(Vector.SS, ssErr);
            }
        }
        sp = newSp;
        for (int i = 0; i < n; i++)
        {
            sp = (sp - (ulong)size) & newMask;
            c.SystemWrite((ssd.Base + sp) & 0xFFFF_FFFF, size, values[i]);
        }
        c.MarkAccessed(ssd, ssAddr);
        c.SetSegment(Seg.SS, newSs, ssd);
        c.MarkAccessed(cs, csAddr);
        c.SetSegment(Seg.CS, (ushort)((csSel & ~3) | newCpl), cs);
        c.Regs.Gpr[4] = ssd.Big ? sp : (c.Regs.Gpr[4] & ~0xFFFFUL) | sp;
        c.NextRip = target;
    }

    // ------------------------------------------------------------------ far RET / IRET

    /// <summary>Checks for the code segment a RET/IRET returns to (SDM RET "RETURN-TO-... PRIVILEGE-LEVEL").</summary>
    static Descriptor CheckReturnCs(Cpu c, ushort selector, out ulong addr)
    {
        if ((selector & ~3) == 0)
        {
            throw c.GeneralProtection(0);
        }
        uint err = (uint)(selector & ~3);
        int rpl = selector & 3;
        if (rpl < c.Cpl)
        {
            throw c.GeneralProtection(err);
        }
        var d = c.ReadDescriptor(selector, out addr);
        if (!d.IsCode || (d.IsConforming ? d.Dpl > rpl : d.Dpl != rpl))
        {
            throw c.GeneralProtection(err);
        }
        if (!d.Present)
        {
            throw c.Fault(Vector.NP, err);
        }
        if (c.LongModeActive && d.Long && d.Big)
        {
            throw c.GeneralProtection(err);
        }
        return d;
    }

    /// <summary>The stack segment a return to privilege <paramref name="newCpl"/> loads (null allowed only into 64-bit mode at CPL &lt; 3).</summary>
    static Descriptor CheckReturnSs(Cpu c, ushort ss, int newCpl, bool target64, out ulong addr, out bool isNull)
    {
        addr = 0;
        isNull = (ss & ~3) == 0;
        if (isNull)
        {
            if (!target64 || newCpl == 3)
            {
                throw c.GeneralProtection(0);
            }
            return default;
        }
        uint err = (uint)(ss & ~3);
        var d = c.ReadDescriptor(ss, out addr);
        if ((ss & 3) != newCpl || !d.IsWritableData || d.Dpl != newCpl)
        {
            throw c.GeneralProtection(err);
        }
        if (!d.Present)
        {
            throw c.Fault(Vector.SS, err);
        }
        return d;
    }

    static void LoadSs(Cpu c, ushort ss, int newCpl, in Descriptor d, ulong addr, bool isNull)
    {
        if (isNull)
        {
            c.Segs[(int)Seg.SS] = new SegmentRegister { Selector = ss, Attributes = (ushort)(0x93 | (newCpl << 5)) };
            c.UpdateMode();
        }
        else
        {
            c.MarkAccessed(d, addr);
            c.SetSegment(Seg.SS, ss, d);
        }
    }

    /// <summary>
    /// After a return to an outer privilege level, data segment registers the new CPL may not use
    /// become null (SDM RET/IRET "RETURN-TO-OUTER-PRIVILEGE-LEVEL"). FS/GS keep their base in
    /// 64-bit mode, where it comes from the MSRs.
    /// </summary>
    static void NullInaccessibleDataSegments(Cpu c, int newCpl)
    {
        ReadOnlySpan<Seg> segs = [Seg.ES, Seg.DS, Seg.FS, Seg.GS];
        foreach (var s in segs)
        {
            ref SegmentRegister r = ref c.Segs[(int)s];
            bool dataOrNonConformingCode = !r.IsSystem && ((r.Type & 8) == 0 || (r.Type & 4) == 0);
            if (dataOrNonConformingCode && r.Dpl < newCpl)
            {
                r.Selector = 0;
                r.Attributes = 0;
                r.Limit = 0;
                if (!(s >= Seg.FS && c.Mode == CpuMode.Long64))
                {
                    r.Base = 0;
                }
            }
        }
        c.UpdateMode();
    }

    /// <summary>RETF [imm16]: Size = operand size, Imm = bytes to release.</summary>
    internal static void FarRet(Cpu c, ref Op op)
    {
        int size = op.Size;
        ulong offset = PeekSized(c, 0, size);
        ushort selector = (ushort)PeekSized(c, (ulong)size, size);
        if (c.Mode is CpuMode.Real or CpuMode.Virtual8086)
        {
            c.AdjustStack((ulong)(2 * size) + op.Imm);
            c.SetSegmentReal(Seg.CS, selector);
            c.NextRip = offset & SizeMask(size);
            return;
        }
        var d = CheckReturnCs(c, selector, out ulong addr);
        int rpl = selector & 3;
        bool target64 = c.LongModeActive && d.Long;
        CheckTarget(c, ref offset, size, d, target64);
        if (rpl == c.Cpl)
        {
            c.AdjustStack((ulong)(2 * size) + op.Imm);
            c.MarkAccessed(d, addr);
            c.SetSegment(Seg.CS, selector, d);
            c.NextRip = offset;
            return;
        }
        ulong newSp = PeekSized(c, (ulong)(2 * size) + op.Imm, size);
        ushort ss = (ushort)PeekSized(c, (ulong)(3 * size) + op.Imm, size);
        var ssd = CheckReturnSs(c, ss, rpl, target64, out ulong ssAddr, out bool ssNull);
        c.MarkAccessed(d, addr);
        c.SetSegment(Seg.CS, selector, d);
        LoadSs(c, ss, rpl, ssd, ssAddr, ssNull);
        SetStackPointer(c, newSp + op.Imm, size);
        NullInaccessibleDataSegments(c, rpl);
        c.NextRip = offset;
    }

    static void CheckTarget(Cpu c, ref ulong offset, int size, in Descriptor d, bool target64)
    {
        if (target64)
        {
            if (!MsrAccess.IsCanonical(offset)) throw c.GeneralProtection(0);
        }
        else
        {
            offset &= SizeMask(Math.Min(size, 4));
            if (offset > d.Limit) throw c.GeneralProtection(0);
        }
    }

    /// <summary>Loads RSP after a stack switch: all of it in 64-bit mode, ESP or SP by the new SS.B otherwise.</summary>
    static void SetStackPointer(Cpu c, ulong sp, int size)
    {
        if (c.Mode == CpuMode.Long64)
        {
            c.Regs.Gpr[4] = size == 4 ? (uint)sp : sp;
        }
        else if (c.Segs[(int)Seg.SS].Big)
        {
            c.Regs.Gpr[4] = (uint)sp;
        }
        else
        {
            c.Regs.Gpr[4] = (c.Regs.Gpr[4] & ~0xFFFFUL) | (sp & 0xFFFF);
        }
    }

    /// <summary>
    /// RFLAGS as IRET loads it (SDM IRET pseudo-code): IOPL only at CPL 0, IF only at CPL &lt;= IOPL,
    /// VIF/VIP only at CPL 0; a 16-bit IRET changes only FLAGS[15:0]; VM stays clear (no return to
    /// virtual-8086 mode).
    /// </summary>
    static void LoadFlags(Cpu c, ulong popped, int size, int oldCpl, int oldIopl)
    {
        ulong changeable = RFlags.Writable & ~(RFlags.VM | RFlags.VIF | RFlags.VIP | RFlags.IOPL | RFlags.IF);
        if (oldCpl == 0)
        {
            changeable |= RFlags.IOPL | RFlags.VIF | RFlags.VIP;
        }
        if (oldCpl <= oldIopl)
        {
            changeable |= RFlags.IF;
        }
        if (size == 2)
        {
            changeable &= 0xFFFF;
        }
        ulong cur = c.GetFlags() & ~RFlags.VM;
        c.SetFlags((cur & ~changeable) | (popped & changeable));
    }

    /// <summary>IRET/IRETD/IRETQ (SDM Vol. 2A IRET); Size = operand size.</summary>
    internal static void Iret(Cpu c, ref Op op)
    {
        int size = op.Size;
        if (c.Mode == CpuMode.Real)
        {
            ulong ip = PeekSized(c, 0, size);
            ushort cs = (ushort)PeekSized(c, (ulong)size, size);
            ulong fl = PeekSized(c, (ulong)(2 * size), size);
            ulong cur = c.GetFlags();
            // Real mode: all flags but VM/VIF/VIP (32-bit) or FLAGS[15:0] (16-bit) come from the stack.
            ulong f = size == 2 ? (cur & ~0xFFFFUL) | (fl & 0xFFFF) : (fl & 0x257FD5) | (cur & 0x1A0000);
            c.AdjustStack((ulong)(3 * size));
            c.SetSegmentReal(Seg.CS, cs);
            c.NextRip = ip & SizeMask(size);
            c.SetFlags(f);
            FinishIret(c);
            return;
        }
        if (c.Mode == CpuMode.Virtual8086)
        {
            throw Unsupported(c, "IRET in virtual-8086 mode", 0);
        }
        if ((c.FlagsOther & RFlags.NT) != 0)
        {
            if (c.LongModeActive)
            {
                throw c.GeneralProtection(0); // no task switches in IA-32e mode
            }
            // TASK-RETURN (SDM IRET): back to the previous task. IRET still ends NMI blocking.
            bool trap = TaskSwitch.IretReturn(c);
            c.NmiBlocked = false;
            c.RecheckInterrupts();
            if (trap)
            {
                throw TaskSwitch.DebugTrap(c);
            }
            return;
        }
        ulong rip = PeekSized(c, 0, size);
        ushort selector = (ushort)PeekSized(c, (ulong)size, size);
        ulong flags = PeekSized(c, (ulong)(2 * size), size);
        if (!c.LongModeActive && size == 4 && (flags & RFlags.VM) != 0 && c.Cpl == 0)
        {
            throw Unsupported(c, "IRET to virtual-8086 mode", selector);
        }
        var d = CheckReturnCs(c, selector, out ulong addr);
        int rpl = selector & 3;
        bool target64 = c.LongModeActive && d.Long;
        // In 64-bit mode IRET always pops SS:RSP; elsewhere only when returning to an outer level.
        bool popSs = c.Mode == CpuMode.Long64 || rpl > c.Cpl;
        ulong newSp = 0;
        ushort ss = 0;
        Descriptor ssd = default;
        ulong ssAddr = 0;
        bool ssNull = false;
        if (popSs)
        {
            newSp = PeekSized(c, (ulong)(3 * size), size);
            ss = (ushort)PeekSized(c, (ulong)(4 * size), size);
            ssd = CheckReturnSs(c, ss, rpl, target64, out ssAddr, out ssNull);
        }
        CheckTarget(c, ref rip, size, d, target64);

        int oldCpl = c.Cpl, oldIopl = c.Iopl;
        if (!popSs)
        {
            c.AdjustStack((ulong)(3 * size));
        }
        c.MarkAccessed(d, addr);
        c.SetSegment(Seg.CS, selector, d);
        if (popSs)
        {
            LoadSs(c, ss, rpl, ssd, ssAddr, ssNull);
            SetStackPointer(c, newSp, size);
        }
        if (rpl > oldCpl)
        {
            NullInaccessibleDataSegments(c, rpl);
        }
        LoadFlags(c, flags, size, oldCpl, oldIopl);
        c.NextRip = rip;
        FinishIret(c);
    }

    static void FinishIret(Cpu c)
    {
        c.NmiBlocked = false; // IRET ends NMI blocking (SDM Vol. 3A 6.7.1)
        c.UpdateMode();
        c.RecheckInterrupts();
    }

    // ------------------------------------------------------------------ SYSCALL / SYSRET

    /// <summary>Flat 64-bit ring-0 code, flat ring-0 stack, and their ring-3 counterparts (SDM SYSCALL/SYSRET pseudo-code).</summary>
    const ushort Code64Ring0 = 0xA09B, Data32Ring0 = 0xC093, Code64Ring3 = 0xA0FB, Code32Ring3 = 0xC0FB, Data32Ring3 = 0xC0F3, Code32Ring0 = 0xC09B;

    static void Flat(Cpu c, Seg s, ushort selector, ushort attributes) =>
        c.Segs[(int)s] = new SegmentRegister { Selector = selector, Base = 0, Limit = 0xFFFF_FFFF, Attributes = attributes };

    /// <summary>SYSCALL (SDM Vol. 2B SYSCALL): #UD outside 64-bit mode (Intel) or with EFER.SCE clear.</summary>
    internal static void Syscall(Cpu c, ref Op op)
    {
        if (c.Mode != CpuMode.Long64 || (c.EferValue & Efer.SCE) == 0)
        {
            throw c.InvalidOpcode();
        }
        var m = c.Msr;
        c.Regs.Gpr[1] = c.NextRip;         // RCX = return RIP
        ulong flags = c.GetFlags();
        c.Regs.Gpr[11] = flags;            // R11 = RFLAGS
        ushort sel = (ushort)(m.Star >> 32);
        Flat(c, Seg.CS, (ushort)(sel & 0xFFFC), Code64Ring0);
        Flat(c, Seg.SS, (ushort)(sel + 8), Data32Ring0);
        c.SetFlags(flags & ~(m.Sfmask | RFlags.RF));
        c.NextRip = m.Lstar;
        c.UpdateMode();
    }

    /// <summary>SYSRET: Sub = 1 for the 64-bit form (REX.W). Canonical RCX is checked in ring 0 (Intel).</summary>
    internal static void Sysret(Cpu c, ref Op op)
    {
        if (c.Mode != CpuMode.Long64 || (c.EferValue & Efer.SCE) == 0)
        {
            throw c.InvalidOpcode();
        }
        if (c.Cpl != 0)
        {
            throw c.GeneralProtection(0);
        }
        bool to64 = op.Sub != 0;
        ulong rip = c.Regs.Gpr[1];
        if (to64 && !MsrAccess.IsCanonical(rip))
        {
            throw c.GeneralProtection(0); // Intel raises this in ring 0, before the switch (SDM SYSRET)
        }
        ushort sel = (ushort)(c.Msr.Star >> 48);
        if (to64)
        {
            Flat(c, Seg.CS, (ushort)((sel + 16) | 3), Code64Ring3);
        }
        else
        {
            Flat(c, Seg.CS, (ushort)(sel | 3), Code32Ring3);
            rip = (uint)rip;
        }
        // SS: a flat ring-3 data segment at STAR[63:48] + 8 (SDM SYSRET pseudo-code).
        Flat(c, Seg.SS, (ushort)((sel + 8) | 3), Data32Ring3);
        c.SetFlags((c.Regs.Gpr[11] & 0x3C7FD7) | RFlags.Reserved1);
        c.NextRip = rip;
        c.UpdateMode();
        c.RecheckInterrupts();
    }

    // ------------------------------------------------------------------ SYSENTER / SYSEXIT

    internal static void Sysenter(Cpu c, ref Op op)
    {
        var m = c.Msr;
        if (!c.ProtectedMode || (m.SysenterCs & 0xFFFC) == 0)
        {
            throw c.GeneralProtection(0);
        }
        ushort cs = (ushort)(m.SysenterCs & 0xFFFC);
        c.SetFlags(c.GetFlags() & ~(RFlags.VM | RFlags.IF | RFlags.RF));
        if (c.LongModeActive)
        {
            Flat(c, Seg.CS, cs, Code64Ring0);
            c.Regs.Gpr[4] = m.SysenterEsp;
            c.NextRip = m.SysenterEip;
        }
        else
        {
            Flat(c, Seg.CS, cs, Code32Ring0);
            c.Regs.Gpr[4] = (uint)m.SysenterEsp;
            c.NextRip = (uint)m.SysenterEip;
        }
        Flat(c, Seg.SS, (ushort)(cs + 8), Data32Ring0);
        c.UpdateMode();
    }

    /// <summary>SYSEXIT: Sub = 1 for the 64-bit form (REX.W).</summary>
    internal static void Sysexit(Cpu c, ref Op op)
    {
        var m = c.Msr;
        if (!c.ProtectedMode || (m.SysenterCs & 0xFFFC) == 0 || c.Cpl != 0)
        {
            throw c.GeneralProtection(0);
        }
        ushort cs = (ushort)(m.SysenterCs & 0xFFFC);
        if (op.Sub != 0)
        {
            ulong rip = c.Regs.Gpr[2], rsp = c.Regs.Gpr[1];
            if (!MsrAccess.IsCanonical(rip) || !MsrAccess.IsCanonical(rsp))
            {
                throw c.GeneralProtection(0);
            }
            Flat(c, Seg.CS, (ushort)((cs + 32) | 3), Code64Ring3);
            Flat(c, Seg.SS, (ushort)((cs + 40) | 3), Data32Ring3);
            c.Regs.Gpr[4] = rsp;
            c.NextRip = rip;
        }
        else
        {
            Flat(c, Seg.CS, (ushort)((cs + 16) | 3), Code32Ring3);
            Flat(c, Seg.SS, (ushort)((cs + 24) | 3), Data32Ring3);
            c.Regs.Gpr[4] = (uint)c.Regs.Gpr[1];
            c.NextRip = (uint)c.Regs.Gpr[2];
        }
        c.UpdateMode();
    }
}
