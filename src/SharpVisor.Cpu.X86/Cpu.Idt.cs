using SharpVisor.Core;
using SharpVisor.Cpu.X86.Decode;
using SharpVisor.Cpu.X86.Semantics;

namespace SharpVisor.Cpu.X86;

/// <summary>Event delivery through the IVT (real mode) or IDT (protected and long mode), SDM Vol. 3A 6.10-6.14.</summary>
public sealed unsafe partial class Cpu
{
    void DeliverThroughIdt(byte vector, EventKind kind, bool hasError, uint error)
    {
        switch (Mode)
        {
            case CpuMode.Real:
                DeliverReal(vector, kind);
                break;
            case CpuMode.Long64:
            case CpuMode.Compatibility:
                DeliverLong(vector, kind, hasError, error);
                break;
            case CpuMode.Protected:
                DeliverProtected(vector, kind, hasError, error);
                break;
            default:
                throw new CpuStopException($"interrupt {vector} in virtual-8086 mode is not implemented");
        }
    }

    /// <summary>Real mode: 4-byte IVT entries; push FLAGS, CS, IP (SDM Vol. 3A 20.1.4).</summary>
    void DeliverReal(byte vector, EventKind kind)
    {
        if (vector * 4u + 3 > IdtLimit)
        {
            throw GeneralProtection(); // becomes #DF/shutdown through the double-fault rules
        }
        uint entry = (uint)SystemRead(IdtBase + vector * 4u, 4);
        Push16((ushort)GetFlags());
        Push16(Segs[(int)Seg.CS].Selector);
        Push16((ushort)ReturnRip(kind));
        FlagsOther &= ~(RFlags.IF | RFlags.TF | RFlags.AC | RFlags.RF);
        SetSegmentReal(Seg.CS, (ushort)(entry >> 16));
        Rip = entry & 0xFFFF;
        Regs.Gpr[RegisterFile.NextRip] = Rip;
    }

    /// <summary>
    /// The return address an event pushes: the faulting instruction for faults, the instruction not
    /// yet executed for external interrupts, the next instruction for INT n / INT3 / INTO.
    /// </summary>
    ulong ReturnRip(EventKind kind) => kind is EventKind.Software or EventKind.SoftwareException ? Regs.Gpr[RegisterFile.NextRip] : Rip;

    void Push16(ushort v)
    {
        ulong sp = (Regs.Gpr[4] - 2) & (StackAddrSize == 2 ? 0xFFFFUL : StackAddrSize == 4 ? 0xFFFF_FFFFUL : ulong.MaxValue);
        CheckStackAccess(sp, 2, SegmentAccess.Write);
        SystemOrDataWrite(Regs.SegBase[(int)Seg.SS] + sp, 2, v);
        SetStackPointer(sp);
    }

    void SetStackPointer(ulong sp)
    {
        switch (StackAddrSize)
        {
            case 2: Regs.Gpr[4] = (Regs.Gpr[4] & ~0xFFFFUL) | (sp & 0xFFFF); break;
            case 4: Regs.Gpr[4] = (uint)sp; break;
            default: Regs.Gpr[4] = sp; break;
        }
    }

    void SystemOrDataWrite(ulong la, int size, ulong v) => WriteSized(la & Regs.LinearMask, size, v);

    /// <summary>Long mode: 16-byte gates, IST, stack switch through the 64-bit TSS (SDM Vol. 3A 6.14).</summary>
    void DeliverLong(byte vector, EventKind kind, bool hasError, uint error)
    {
        uint ext = kind == EventKind.External ? 1u : 0u;
        if (vector * 16u + 15 > IdtLimit)
        {
            throw GeneralProtection(vector * 8u + 2 + ext);
        }
        ulong lo = SystemRead(IdtBase + vector * 16u, 8);
        ulong hi = SystemRead(IdtBase + vector * 16u + 8, 8);
        int type = (int)((lo >> 40) & 0xF);
        int gateDpl = (int)((lo >> 45) & 3);
        if (type is not (0xE or 0xF))
        {
            throw GeneralProtection(vector * 8u + 2 + ext);
        }
        if (kind is EventKind.Software or EventKind.SoftwareException && gateDpl < Cpl)
        {
            throw GeneralProtection(vector * 8u + 2);
        }
        if (((lo >> 47) & 1) == 0)
        {
            throw Fault(Vector.NP, vector * 8u + 2 + ext);
        }
        ushort selector = (ushort)(lo >> 16);
        ulong target = (lo & 0xFFFF) | ((lo >> 32) & 0xFFFF_0000) | (hi << 32);
        int ist = (int)((lo >> 32) & 7);

        if ((selector & ~3) == 0)
        {
            throw GeneralProtection(ext);
        }
        var cs = ReadDescriptor(selector, out _, Vector.GP);
        if (!cs.IsCode || !cs.Long || cs.Big || cs.Dpl > Cpl)
        {
            throw GeneralProtection((uint)(selector & ~3) + ext);
        }
        if (!cs.Present)
        {
            throw Fault(Vector.NP, (uint)(selector & ~3) + ext);
        }
        int newCpl = cs.IsConforming ? Cpl : cs.Dpl;
        ulong oldSs = Segs[(int)Seg.SS].Selector;
        ulong oldRsp = Regs.Gpr[4];
        ulong oldFlags = GetFlags();
        ulong oldCs = Segs[(int)Seg.CS].Selector;
        ulong ret = ReturnRip(kind);

        ulong rsp;
        if (ist != 0)
        {
            rsp = SystemRead(Tr.Base + 36 + (ulong)(ist - 1) * 8, 8);
        }
        else if (newCpl < Cpl)
        {
            rsp = SystemRead(Tr.Base + 4 + (ulong)newCpl * 8, 8);
        }
        else
        {
            rsp = oldRsp;
        }
        rsp &= ~0xFUL;

        // Build the frame before changing any state so a fault while pushing leaves the old state.
        int frame = hasError ? 6 : 5;
        ulong frameLow = rsp - (ulong)frame * 8;
        if (MaybeNonCanonical(frameLow, (uint)frame * 8 + 1) && !IsCanonicalAccess(frameLow, (uint)frame * 8 + 1))
        {
            // A non-canonical stack — RSP itself, RSPn or an IST pointer from the TSS, or a frame that
            // runs out of the canonical range: #SS with EXT (SDM Vol. 2A INT n, IA-32e mode: "IF NewRSP
            // is non-canonical THEN #SS(EXT)"), before anything is written.
            throw Fault(Vector.SS, ext);
        }
        Span<ulong> values = [error, ret, oldCs, oldFlags, oldRsp, oldSs];
        int first = hasError ? 0 : 1;
        for (int i = first; i < 6; i++)
        {
            ulong addr = rsp - (ulong)(6 - i) * 8;
            SystemWrite(addr, 8, values[i]);
        }
        rsp -= (ulong)frame * 8;

        if (newCpl != Cpl)
        {
            // SS becomes a null selector with RPL = new CPL (SDM 6.14.4).
            Segs[(int)Seg.SS] = new SegmentRegister { Selector = (ushort)newCpl, Attributes = (ushort)(0x93 | (newCpl << 5)) };
        }
        SetSegment(Seg.CS, (ushort)((selector & ~3) | newCpl), cs);
        Regs.Gpr[4] = rsp;
        Rip = target;
        Regs.Gpr[RegisterFile.NextRip] = target;
        FlagsOther &= ~(RFlags.TF | RFlags.NT | RFlags.RF | RFlags.VM);
        if (type == 0xE)
        {
            FlagsOther &= ~RFlags.IF;
        }
        UpdateMode();
    }

    /// <summary>Protected mode: 8-byte interrupt/trap gates, stack switch through the 32-bit TSS (SDM 6.12); task gates switch tasks (System/Ops/TaskSwitch.cs).</summary>
    void DeliverProtected(byte vector, EventKind kind, bool hasError, uint error)
    {
        uint ext = kind == EventKind.External ? 1u : 0u;
        if (vector * 8u + 7 > IdtLimit)
        {
            throw GeneralProtection(vector * 8u + 2 + ext);
        }
        ulong gate = SystemRead(IdtBase + vector * 8u, 8);
        int type = (int)((gate >> 40) & 0xF);
        int gateDpl = (int)((gate >> 45) & 3);
        if (type is not (0x5 or 0x6 or 0x7 or 0xE or 0xF))
        {
            throw GeneralProtection(vector * 8u + 2 + ext);
        }
        if (kind is EventKind.Software or EventKind.SoftwareException && gateDpl < Cpl)
        {
            throw GeneralProtection(vector * 8u + 2);
        }
        if (((gate >> 47) & 1) == 0)
        {
            throw Fault(Vector.NP, vector * 8u + 2 + ext);
        }
        if (type == 0x5)
        {
            // Task gate (SDM 6.12.2): switch to the task it names; the error code goes on its stack.
            if (TaskSwitch.ThroughIdtGate(this, gate, ext, hasError, error, ReturnRip(kind)))
            {
                // The new TSS's T flag: #DB before the new task's first instruction. This delivery is
                // complete, so the trap is a new event, not a fault of it (no double-fault rules).
                TaskSwitch.SetDebugTrapStatus(this);
                DeliverThroughIdt(Vector.DB, EventKind.Exception, false, 0);
            }
            return;
        }
        bool gate32 = (type & 8) != 0;
        ushort selector = (ushort)(gate >> 16);
        uint target = (uint)((gate & 0xFFFF) | ((gate >> 32) & 0xFFFF_0000));
        if (!gate32)
        {
            target &= 0xFFFF;
        }
        if ((selector & ~3) == 0)
        {
            throw GeneralProtection(ext);
        }
        var cs = ReadDescriptor(selector, out _);
        if (!cs.IsCode || cs.Dpl > Cpl)
        {
            throw GeneralProtection((uint)(selector & ~3) + ext);
        }
        if (!cs.Present)
        {
            throw Fault(Vector.NP, (uint)(selector & ~3) + ext);
        }
        int newCpl = cs.IsConforming ? Cpl : cs.Dpl;
        int width = gate32 ? 4 : 2;
        ulong oldFlags = GetFlags();
        ulong ret = ReturnRip(kind);
        ushort oldCs = Segs[(int)Seg.CS].Selector;

        ulong ssBase, sp;
        ushort newSsSel = Segs[(int)Seg.SS].Selector;
        Descriptor newSs = default;
        bool stackSwitch = newCpl < Cpl;
        if (stackSwitch)
        {
            // 32-bit TSS: ESPn at 4 + 8n, SSn at 8 + 8n.
            sp = SystemRead(Tr.Base + 4 + (ulong)newCpl * 8, 4);
            newSsSel = (ushort)SystemRead(Tr.Base + 8 + (ulong)newCpl * 8, 2);
            newSs = ReadDescriptor(newSsSel, out _, Vector.TS);
            if ((newSsSel & 3) != newCpl || newSs.Dpl != newCpl || !newSs.IsWritableData)
            {
                throw Fault(Vector.TS, (uint)(newSsSel & ~3) + ext);
            }
            if (!newSs.Present)
            {
                throw Fault(Vector.SS, (uint)(newSsSel & ~3) + ext);
            }
            ssBase = newSs.Base;
        }
        else
        {
            ssBase = Segs[(int)Seg.SS].Base;
            sp = Regs.Gpr[4];
        }
        bool sp32 = stackSwitch ? newSs.Big : Segs[(int)Seg.SS].Big;
        ulong spMask = sp32 ? 0xFFFF_FFFFUL : 0xFFFF;

        Span<ulong> values = stackSwitch
            ? [Segs[(int)Seg.SS].Selector, Regs.Gpr[4], oldFlags, oldCs, ret, error]
            : [oldFlags, oldCs, ret, error];
        int count = values.Length - (hasError ? 0 : 1);
        // The whole frame must fit in the stack segment, and the handler must start inside its code
        // segment, before anything is written (SDM Vol. 2A INT n pseudo-code: #SS(EXT) or
        // #SS(new SS selector + EXT) for the new stack, #GP(EXT) for the instruction pointer).
        uint ssLimit = stackSwitch ? newSs.Limit : Segs[(int)Seg.SS].Limit;
        ushort ssAttributes = stackSwitch ? newSs.Attributes : Segs[(int)Seg.SS].Attributes;
        ulong cur = sp;
        for (int i = 0; i < count; i++)
        {
            cur = (cur - (ulong)width) & spMask;
            if (!WithinLimit(cur, (uint)width, ssLimit, ssAttributes))
            {
                throw Fault(Vector.SS, (stackSwitch ? (uint)(newSsSel & ~3) : 0) + ext);
            }
        }
        if (target > cs.Limit)
        {
            throw GeneralProtection(ext);
        }
        cur = sp;
        for (int i = 0; i < count; i++)
        {
            cur = (cur - (ulong)width) & spMask;
            SystemWrite((ssBase + cur) & 0xFFFF_FFFF, width, values[i]);
        }

        if (stackSwitch)
        {
            SetSegment(Seg.SS, newSsSel, newSs);
        }
        Regs.Gpr[4] = sp32 ? cur : (Regs.Gpr[4] & ~0xFFFFUL) | cur;
        SetSegment(Seg.CS, (ushort)((selector & ~3) | newCpl), cs);
        Rip = target;
        Regs.Gpr[RegisterFile.NextRip] = target;
        FlagsOther &= ~(RFlags.TF | RFlags.NT | RFlags.RF | RFlags.VM);
        if ((type & 1) == 0)
        {
            FlagsOther &= ~RFlags.IF;
        }
        UpdateMode();
    }

    /// <summary>INT n / INT3 / INTO: software interrupts (trap-like: the pushed RIP is the next instruction).</summary>
    public void SoftwareInterrupt(byte vector, bool isException)
    {
        // Delivery faults on this path follow the same rules as any exception.
        if (!DeliverEvent(vector, isException ? EventKind.SoftwareException : EventKind.Software, false, 0))
        {
            throw new CpuStopException(ShutdownReason ?? "triple fault");
        }
        ExitBlock = true;
    }
}
