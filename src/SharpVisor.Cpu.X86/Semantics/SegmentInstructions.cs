using SharpVisor.Cpu.X86.Decode;

namespace SharpVisor.Cpu.X86.Semantics;

/// <summary>
/// Descriptor-table and segment instructions: LGDT/LIDT/SGDT/SIDT, LLDT/SLDT, LTR/STR,
/// LAR/LSL/VERR/VERW, ARPL, LDS/LES/LFS/LGS/LSS (SDM Vol. 2 entries of each; Vol. 3A 3.5, 7.2).
/// </summary>
internal static unsafe class SegmentInstructions
{
    static void RequireCpl0(Cpu c)
    {
        if (c.Cpl != 0)
        {
            throw c.GeneralProtection(0);
        }
    }

    static void RequireProtected(Cpu c)
    {
        if (c.Mode is CpuMode.Real or CpuMode.Virtual8086)
        {
            throw c.InvalidOpcode();
        }
    }

    // ------------------------------------------------------------------ GDTR / IDTR
    // Op.Size = operand size (2, 4, 8); Sub = 0 GDTR, 1 IDTR.

    /// <summary>LGDT/LIDT: 16-bit operand size keeps a 24-bit base; 64-bit mode loads 8 bytes of base.</summary>
    internal static void LoadTable(Cpu c, ref Op op)
    {
        RequireCpl0(c);
        ulong la = op.Linear(c);
        ushort limit = c.Read16(la);
        ulong baseLa = (la + 2) & c.Regs.LinearMask;
        ulong b = op.Size == 8 ? c.Read64(baseLa) : c.Read32(baseLa);
        if (op.Size == 2)
        {
            b &= 0xFF_FFFF;
        }
        if (op.Sub == 0)
        {
            c.GdtBase = b;
            c.GdtLimit = limit;
        }
        else
        {
            c.IdtBase = b;
            c.IdtLimit = limit;
        }
    }

    /// <summary>
    /// SGDT/SIDT: stores the limit, then 4 bytes of base (8 in 64-bit mode). UMIP is not advertised.
    /// Alignment checking sees one operand aligned to 4 (SDM Vol. 3A Table 6-7 "GDTR, IDTR"), so the
    /// base at offset 2 is written unchecked.
    /// </summary>
    internal static void StoreTable(Cpu c, ref Op op)
    {
        ulong la = op.Linear(c);
        c.CheckAlignment(la, 4);
        ulong b = op.Sub == 0 ? c.GdtBase : c.IdtBase;
        ushort limit = op.Sub == 0 ? c.GdtLimit : c.IdtLimit;
        ulong baseLa = (la + 2) & c.Regs.LinearMask;
        // The base (higher addresses) first: a fault on either page then leaves the limit unwritten.
        if (op.Size == 8)
        {
            c.Write64NoAlignmentCheck(baseLa, b);
        }
        else
        {
            c.Write32NoAlignmentCheck(baseLa, (uint)b);
        }
        c.Write16(la, limit);
    }

    // ------------------------------------------------------------------ LDTR / TR

    static ushort SelectorOperand(Cpu c, ref Op op) =>
        (op.Flags & OpFlags.MemoryOperand) != 0 ? c.Read16(op.Linear(c)) : (ushort)c.Regs.Gpr[op.R1];

    /// <summary>Reads a system descriptor for LLDT/LTR: GDT only, 16 bytes in IA-32e mode (SDM 7.2.3).</summary>
    static Descriptor ReadSystemDescriptor(Cpu c, ushort selector, out ulong addr, out ulong baseHigh)
    {
        uint err = (uint)(selector & ~3);
        if ((selector & 4) != 0)
        {
            throw c.GeneralProtection(err);
        }
        var d = c.ReadDescriptor(selector, out addr);
        baseHigh = 0;
        if (c.LongModeActive)
        {
            if ((uint)(selector & ~7) + 15 > c.GdtLimit)
            {
                throw c.GeneralProtection(err);
            }
            ulong hi = c.ReadDescriptorHigh(addr);
            if (((hi >> 40) & 0x1F) != 0)
            {
                throw c.GeneralProtection(err); // upper half's type field must be 0
            }
            baseHigh = (hi & 0xFFFF_FFFF) << 32;
        }
        return d;
    }

    internal static void Lldt(Cpu c, ref Op op)
    {
        RequireProtected(c);
        RequireCpl0(c);
        ushort selector = SelectorOperand(c, ref op);
        if ((selector & ~3) == 0)
        {
            c.Ldtr = new SegmentRegister { Selector = selector }; // null LDT: later LDT references #GP
            return;
        }
        var d = ReadSystemDescriptor(c, selector, out _, out ulong baseHigh);
        uint err = (uint)(selector & ~3);
        if (!d.IsSystem || d.Type != 2)
        {
            throw c.GeneralProtection(err);
        }
        if (!d.Present)
        {
            throw c.Fault(Vector.NP, err);
        }
        c.Ldtr = new SegmentRegister { Selector = selector, Base = d.Base | baseHigh, Limit = d.Limit, Attributes = d.Attributes };
    }

    internal static void Ltr(Cpu c, ref Op op)
    {
        RequireProtected(c);
        RequireCpl0(c);
        ushort selector = SelectorOperand(c, ref op);
        uint err = (uint)(selector & ~3);
        if ((selector & ~3) == 0)
        {
            throw c.GeneralProtection(0);
        }
        var d = ReadSystemDescriptor(c, selector, out ulong addr, out ulong baseHigh);
        // Available TSS: 9 (32/64-bit), or 1 (16-bit) outside IA-32e mode.
        if (!d.IsSystem || !(d.Type == 9 || (d.Type == 1 && !c.LongModeActive)))
        {
            throw c.GeneralProtection(err);
        }
        if (!d.Present)
        {
            throw c.Fault(Vector.NP, err);
        }
        c.SystemWrite(addr + 5, 1, (d.Raw >> 40) | 2); // mark busy (SDM 7.2.4)
        c.Tr = new SegmentRegister { Selector = selector, Base = d.Base | baseHigh, Limit = d.Limit, Attributes = (ushort)(d.Attributes | 2) };
    }

    /// <summary>SLDT/STR: Sub = 0 LDTR, 1 TR. A register destination of 32/64 bits is zero-extended.</summary>
    internal static void StoreSystemSelector(Cpu c, ref Op op)
    {
        RequireProtected(c);
        ushort v = op.Sub == 0 ? c.Ldtr.Selector : c.Tr.Selector;
        if ((op.Flags & OpFlags.MemoryOperand) != 0)
        {
            c.Write16(op.Linear(c), v);
        }
        else if (op.Size == 2)
        {
            S16.SetReg(c, op.R1, v);
        }
        else
        {
            c.Regs.Gpr[op.R1] = v;
        }
    }

    // ------------------------------------------------------------------ LAR / LSL / VERR / VERW

    /// <summary>Reads a descriptor without faulting on the table limit (these instructions report via ZF).</summary>
    static bool TryRead(Cpu c, ushort selector, out Descriptor d)
    {
        d = default;
        if ((selector & ~3) == 0)
        {
            return false;
        }
        bool ldt = (selector & 4) != 0;
        if (ldt && (c.Ldtr.Selector & ~3) == 0)
        {
            return false;
        }
        uint limit = ldt ? c.Ldtr.Limit : c.GdtLimit;
        if ((uint)(selector & ~7) + 7 > limit)
        {
            return false;
        }
        d = new Descriptor(c.SystemRead((ldt ? c.Ldtr.Base : c.GdtBase) + (uint)(selector & ~7), 8));
        return true;
    }

    /// <summary>Privilege rule shared by LAR/LSL/VERR/VERW: conforming code is always visible, others need DPL >= CPL and RPL.</summary>
    static bool Visible(Cpu c, ushort selector, in Descriptor d) =>
        d.IsConforming || (d.Dpl >= c.Cpl && d.Dpl >= (selector & 3));

    /// <summary>System descriptor types LAR (lar = true) or LSL accept (SDM LAR Table 3-57, LSL Table 3-60).</summary>
    static bool SystemTypeOk(Cpu c, int type, bool lar) => c.LongModeActive
        ? type is 2 or 9 or 0xB || (lar && type == 0xC)
        : type is 1 or 2 or 3 or 9 or 0xB || (lar && type is 4 or 5 or 0xC);

    static void SetZf(Cpu c, bool zf) => c.SetArithFlags((c.GetFlags() & ~RFlags.ZF) | (zf ? RFlags.ZF : 0));

    /// <summary>LAR (Sub = 0) and LSL (Sub = 1): Size = operand size; source selector in memory or R2.</summary>
    internal static void LarLsl(Cpu c, ref Op op)
    {
        RequireProtected(c);
        ushort selector = (op.Flags & OpFlags.MemoryOperand) != 0 ? c.Read16(op.Linear(c)) : (ushort)c.Regs.Gpr[op.R2];
        bool lar = op.Sub == 0;
        if (!TryRead(c, selector, out var d) || !Visible(c, selector, d) || (d.IsSystem && !SystemTypeOk(c, d.Type, lar)))
        {
            SetZf(c, false);
            return;
        }
        ulong v = lar ? (d.Raw >> 32) & 0x00FF_FF00 : d.Limit;
        if (op.Size == 2)
        {
            S16.SetReg(c, op.R1, v);
        }
        else
        {
            c.Regs.Gpr[op.R1] = (uint)v;
        }
        SetZf(c, true);
    }

    /// <summary>VERR (Sub = 0) / VERW (Sub = 1).</summary>
    internal static void Verify(Cpu c, ref Op op)
    {
        RequireProtected(c);
        ushort selector = SelectorOperand(c, ref op);
        bool ok = TryRead(c, selector, out var d) && !d.IsSystem && Visible(c, selector, d)
            && (op.Sub == 0 ? d.IsReadable : d.IsWritableData);
        SetZf(c, ok);
    }

    /// <summary>ARPL r/m16, r16 (legacy and compatibility modes).</summary>
    internal static void Arpl(Cpu c, ref Op op)
    {
        RequireProtected(c);
        bool mem = (op.Flags & OpFlags.MemoryOperand) != 0;
        ulong la = mem ? op.Linear(c) : 0;
        ushort dest = mem ? c.Read16(la) : (ushort)c.Regs.Gpr[op.R1];
        int srcRpl = (int)(c.Regs.Gpr[op.R2] & 3);
        if ((dest & 3) < srcRpl)
        {
            dest = (ushort)((dest & ~3) | srcRpl);
            if (mem) c.Write16(la, dest); else S16.SetReg(c, op.R1, dest);
            SetZf(c, true);
        }
        else
        {
            SetZf(c, false);
        }
    }

    /// <summary>LDS/LES/LFS/LGS/LSS r, m16:16/32/64: Sub = segment, Size = offset size, R1 = destination.</summary>
    internal static void LoadFarPointer(Cpu c, ref Op op)
    {
        ulong la = op.Linear(c);
        ulong offset = c.ReadSized(la, op.Size);
        ushort selector = c.Read16((la + op.Size) & c.Regs.LinearMask);
        c.LoadDataSegment((Seg)op.Sub, selector); // may fault: before the register write
        switch (op.Size)
        {
            case 2: S16.SetReg(c, op.R1, offset); break;
            case 4: S32.SetReg(c, op.R1, offset); break;
            default: c.Regs.Gpr[op.R1] = offset; break;
        }
    }
}
