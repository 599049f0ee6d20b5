namespace SharpVisor.Cpu.X86;

/// <summary>A segment descriptor as read from the GDT/LDT (SDM Vol. 3A 3.4.5).</summary>
public readonly struct Descriptor(ulong raw)
{
    public readonly ulong Raw = raw;
    public ulong Base => ((Raw >> 16) & 0xFF_FFFF) | (((Raw >> 56) & 0xFF) << 24);
    public uint Limit
    {
        get
        {
            uint l = (uint)((Raw & 0xFFFF) | ((Raw >> 32) & 0xF_0000));
            return Granular ? (l << 12) | 0xFFF : l;
        }
    }
    /// <summary>Bits 40..55 in the packing <see cref="SegmentRegister.Attributes"/> uses.</summary>
    public ushort Attributes => (ushort)((Raw >> 40) & 0xF0FF);
    public int Type => (int)((Raw >> 40) & 0xF);
    public bool IsSystem => ((Raw >> 44) & 1) == 0;
    public int Dpl => (int)((Raw >> 45) & 3);
    public bool Present => ((Raw >> 47) & 1) != 0;
    public bool Long => ((Raw >> 53) & 1) != 0;
    public bool Big => ((Raw >> 54) & 1) != 0;
    public bool Granular => ((Raw >> 55) & 1) != 0;
    public bool IsCode => !IsSystem && (Type & 8) != 0;
    public bool IsConforming => IsCode && (Type & 4) != 0;
    public bool IsReadable => !IsCode || (Type & 2) != 0;
    public bool IsWritableData => !IsSystem && !IsCode && (Type & 2) != 0;
}

public sealed unsafe partial class Cpu
{
    /// <summary>
    /// Reads the descriptor a selector names. #GP(selector) (or <paramref name="vector"/>) when it
    /// lies outside the GDT/LDT limit. Returns the linear address of the descriptor too.
    /// </summary>
    public Descriptor ReadDescriptor(ushort selector, out ulong address, byte vector = Vector.GP)
    {
        bool ldt = (selector & 4) != 0;
        ulong tableBase = ldt ? Ldtr.Base : GdtBase;
        uint limit = ldt ? Ldtr.Limit : GdtLimit;
        uint index = (uint)(selector & ~7);
        if ((ldt && Ldtr.Selector == 0) || index + 7 > limit)
        {
            throw Fault(vector, (uint)(selector & ~3));
        }
        address = tableBase + index;
        return new Descriptor(SystemRead(address, 8));
    }

    /// <summary>Upper 8 bytes of a 16-byte system descriptor in long mode (TSS, LDT, call gate).</summary>
    public ulong ReadDescriptorHigh(ulong address) => SystemRead(address + 8, 8);

    /// <summary>Sets the accessed bit of a code/data descriptor in memory when it is clear (SDM 3.4.5.1).</summary>
    public void MarkAccessed(in Descriptor d, ulong address)
    {
        if ((d.Raw & (1UL << 40)) == 0)
        {
            SystemWrite(address + 5, 1, (d.Raw >> 40) | 1);
        }
    }

    /// <summary>Loads a segment register's hidden part from a descriptor (no checks).</summary>
    public void SetSegment(Seg s, ushort selector, in Descriptor d)
    {
        Segs[(int)s] = new SegmentRegister { Selector = selector, Base = d.Base, Limit = d.Limit, Attributes = d.Attributes };
        if (s == Seg.CS || s == Seg.SS)
        {
            UpdateMode();
        }
        else
        {
            Regs.SegBase[(int)s] = Mode == CpuMode.Long64 && s < Seg.FS ? 0 : d.Base;
            UpdateSegmentCheck((int)s);
        }
    }

    /// <summary>Real-mode / virtual-8086 segment load: base = selector * 16.</summary>
    public void SetSegmentReal(Seg s, ushort selector)
    {
        ref SegmentRegister r = ref Segs[(int)s];
        r.Selector = selector;
        r.Base = (ulong)selector << 4;
        if (Mode == CpuMode.Virtual8086)
        {
            r.Limit = 0xFFFF;
            r.Attributes = (ushort)(s == Seg.CS ? 0xFB : 0xF3);
        }
        if (s == Seg.CS)
        {
            UpdateMode();
        }
        else
        {
            Regs.SegBase[(int)s] = r.Base;
            UpdateSegmentCheck((int)s);
        }
    }

    /// <summary>
    /// MOV/POP to a data segment register or SS with the protected-mode checks of SDM Vol. 2
    /// (MOV—Move to/from Segment Registers, Protected Mode Exceptions).
    /// </summary>
    public void LoadDataSegment(Seg s, ushort selector)
    {
        if (Mode is CpuMode.Real or CpuMode.Virtual8086)
        {
            SetSegmentReal(s, selector);
            return;
        }
        int rpl = selector & 3;
        if ((selector & ~3) == 0)
        {
            // Null selector: allowed for DS/ES/FS/GS; for SS only in 64-bit mode with RPL = CPL < 3.
            if (s == Seg.SS && !(Mode == CpuMode.Long64 && Cpl != 3 && rpl == Cpl))
            {
                throw GeneralProtection(0);
            }
            ref SegmentRegister r = ref Segs[(int)s];
            r.Selector = selector;
            r.Attributes = (ushort)(s == Seg.SS ? (Cpl << 5) | 0x93 : 0); // unusable, except SS in 64-bit mode
            r.Base = s >= Seg.FS && Mode == CpuMode.Long64 ? r.Base : 0;
            r.Limit = 0;
            if (s == Seg.SS)
            {
                UpdateMode();
            }
            else
            {
                Regs.SegBase[(int)s] = Mode == CpuMode.Long64 && s < Seg.FS ? 0 : r.Base;
                UpdateSegmentCheck((int)s); // usable again only after a non-null load (SDM 3.4.2)
            }
            return;
        }
        var d = ReadDescriptor(selector, out ulong addr);
        uint err = (uint)(selector & ~3);
        if (s == Seg.SS)
        {
            if (rpl != Cpl || d.Dpl != Cpl || !d.IsWritableData)
            {
                throw GeneralProtection(err);
            }
            if (!d.Present)
            {
                throw Fault(Vector.SS, err);
            }
        }
        else
        {
            if (d.IsSystem || !d.IsReadable)
            {
                throw GeneralProtection(err);
            }
            if (!d.IsConforming && (d.Dpl < Cpl || d.Dpl < rpl) && !(d.IsCode && d.IsConforming))
            {
                throw GeneralProtection(err);
            }
            if (!d.Present)
            {
                throw Fault(Vector.NP, err);
            }
        }
        MarkAccessed(d, addr);
        SetSegment(s, selector, d);
    }
}
