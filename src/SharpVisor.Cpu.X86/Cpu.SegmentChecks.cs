using System.Runtime.CompilerServices;
using SharpVisor.Cpu.X86.Decode;

namespace SharpVisor.Cpu.X86;

/// <summary>
/// Segment limit and type checks on data, stack and instruction-fetch accesses outside 64-bit mode
/// (SDM Vol. 3A 5.3 "Limit Checking", 5.4 "Type Checking"; real mode keeps the limit checks: an
/// access past offset FFFFH of a 64-KiB segment is #GP, or #SS through SS — SDM Vol. 3A 21.1.1 and
/// each instruction's "Real-Address Mode Exceptions"). 64-bit mode has none (SDM 5.3.1);
/// compatibility mode has them all.
/// </summary>
/// <remarks>
/// Cost model: <see cref="RegisterFile.SegCheck"/> holds one flag per segment register, recomputed
/// when a segment register or the mode changes; it is zero in 64-bit mode and for flat 4 GiB
/// expand-up writable data segments (what Linux and every flat-model guest use), so an access pays
/// one predictable branch and the checks themselves live in the non-inlined
/// <see cref="CheckSegmentAccess"/>. Instruction fetch checks once per block, and only when the CS
/// limit is below 4 GiB - 1.
/// </remarks>
public sealed unsafe partial class Cpu
{
    /// <summary>Attribute bits P, S, code, E (expand-down / conforming) and W (writable / readable).</summary>
    const ushort FlatTypeMask = 0x9E;
    /// <summary>P = 1, S = 1, data, expand-up, writable.</summary>
    const ushort FlatTypeValue = 0x92;

    /// <summary>True when instruction fetch must check the CS limit (outside 64-bit mode, CS limit below 4 GiB - 1).</summary>
    bool _fetchLimitCheck;

    /// <summary>Recomputes every segment's check flag and the fetch check (after a mode change).</summary>
    void UpdateSegmentChecks()
    {
        for (int i = 0; i < 6; i++)
        {
            UpdateSegmentCheck(i);
        }
        Regs.SegCheck[(int)Seg.None] = 0;
        Regs.SegCheck[7] = 0;
    }

    /// <summary>Recomputes one segment's check flag (after the segment register is loaded).</summary>
    void UpdateSegmentCheck(int s)
    {
        ref SegmentRegister r = ref Segs[s];
        bool flatData = r.Limit == uint.MaxValue && (r.Attributes & FlatTypeMask) == FlatTypeValue;
        Regs.SegCheck[s] = Mode != CpuMode.Long64 && !flatData ? (byte)1 : (byte)0;
        if (s == (int)Seg.CS)
        {
            _fetchLimitCheck = Mode != CpuMode.Long64 && r.Limit != uint.MaxValue;
        }
    }

    /// <summary>
    /// The checks of an access of <paramref name="size"/> bytes at <paramref name="offset"/> within
    /// segment <paramref name="seg"/>: in protected and compatibility mode a null (unusable) segment
    /// (SDM 3.4.2: loading a null selector into DS..GS is allowed, using it faults), writes to code or
    /// read-only data segments and reads of execute-only code segments (SDM 5.4); in every mode but
    /// 64-bit the limit (SDM 5.3). #SS(0) through SS (explicit or implicit stack accesses), #GP(0)
    /// otherwise. Only called when <see cref="RegisterFile.SegCheck"/> is set for the segment.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public void CheckSegmentAccess(int seg, ulong offset, uint size, SegmentAccess access)
    {
        if (access == SegmentAccess.None || Mode == CpuMode.Long64)
        {
            return;
        }
        ref SegmentRegister s = ref Segs[seg];
        byte vector = seg == (int)Seg.SS ? Vector.SS : Vector.GP;
        if (Mode is CpuMode.Protected or CpuMode.Compatibility)
        {
            // Real and virtual-8086 mode check limits only: real-mode code writes through CS.
            if (!s.Present)
            {
                throw Fault(vector, 0);
            }
            bool code = (s.Type & 8) != 0;
            bool readableOrWritable = (s.Type & 2) != 0;
            if ((access & SegmentAccess.Write) != 0 && (code || !readableOrWritable))
            {
                throw Fault(vector, 0);
            }
            if ((access & SegmentAccess.Read) != 0 && code && !readableOrWritable)
            {
                throw Fault(vector, 0);
            }
        }
        if (!WithinLimit(offset, size, s.Limit, s.Attributes))
        {
            throw Fault(vector, 0);
        }
    }

    /// <summary>
    /// Whether bytes <paramref name="offset"/> .. offset + size - 1 lie within a segment (SDM Vol. 3A
    /// 5.3): 0 .. limit for expand-up data and all code segments; limit + 1 .. FFFFH (B = 0) or
    /// FFFFFFFFH (B = 1) for expand-down data segments. The limit is byte-granular (G already applied).
    /// </summary>
    public static bool WithinLimit(ulong offset, uint size, uint limit, ushort attributes)
    {
        ulong last = offset + Math.Max(size, 1u) - 1;
        if (last < offset)
        {
            return false; // wraps the 64-bit offset space
        }
        bool expandDown = (attributes & 0x1C) == 0x14; // S = 1, data (type bit 3 = 0), E (type bit 2) = 1
        if (expandDown)
        {
            ulong upper = (attributes & 0x4000) != 0 ? 0xFFFF_FFFFUL : 0xFFFFUL;
            return offset > limit && last <= upper;
        }
        return last <= limit;
    }

    /// <summary>
    /// Checks an implicit stack access (PUSH, POP, CALL, RET, ENTER, LEAVE, event frames) at
    /// SS:<paramref name="offset"/>: the SS limit and type outside 64-bit mode, and in 64-bit mode
    /// (where SS's base is 0, so the offset is the linear address) that it is canonical, else #SS(0).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void CheckStackAccess(ulong offset, uint size, SegmentAccess access)
    {
        if (Regs.SegCheck[(int)Seg.SS] != 0)
        {
            CheckSegmentAccess((int)Seg.SS, offset, size, access);
        }
        if (MaybeNonCanonical(offset, size))
        {
            CheckStackCanonical(offset, size);
        }
    }

    /// <summary>Checks an access through a segment that did not come from a decoded memory operand (string instructions, XLAT, BT with a register bit offset).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void CheckDataAccess(int seg, ulong offset, uint size, SegmentAccess access)
    {
        if (Regs.SegCheck[seg] != 0)
        {
            CheckSegmentAccess(seg, offset, size, access);
        }
    }

    /// <summary>
    /// Near JMP/Jcc/CALL/RET/LOOP/JCXZ: #GP(0) on the branch itself (before CALL pushes) when the
    /// target lies past the CS limit (SDM Vol. 2A JMP, CALL, Jcc, RET: "#GP(0) If the target operand is
    /// beyond the code segment limits") or, in 64-bit mode, is non-canonical. One predictable branch
    /// when the CS limit is 4 GiB - 1, and one add and compare.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void CheckNearBranchTarget(ulong target)
    {
        // One test inline (this sits on every taken branch); the two checks themselves are out of line.
        if (_fetchLimitCheck | MaybeNonCanonical(target, 1))
        {
            CheckNearBranchTargetSlow(target);
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    void CheckNearBranchTargetSlow(ulong target)
    {
        if (_fetchLimitCheck && target > Segs[(int)Seg.CS].Limit)
        {
            throw GeneralProtection(0);
        }
        CheckBranchTargetCanonical(target); // 64-bit mode: #GP(0) on the branch (Cpu.Canonical.cs)
    }

    /// <summary>
    /// The block at CS:RIP when the CS limit is below 4 GiB - 1: #GP(0) when the first instruction
    /// does not lie entirely within the limit (SDM Vol. 3A 5.3: instruction fetch past the CS limit),
    /// otherwise the block cut before the first instruction that does not — fetching that one starts a
    /// new block, which faults with RIP on it.
    /// </summary>
    Block FetchBlockWithinCsLimit()
    {
        uint limit = Segs[(int)Seg.CS].Limit;
        if (Rip > limit)
        {
            throw GeneralProtection(0); // before the fetch translates: #GP, not #PF
        }
        Block b;
        ulong cr2 = Cr2;
        try
        {
            b = FetchBlockUnchecked();
        }
        catch (GuestFault f) when (f.Vector == Vector.PF && ((Cr2 - Segs[(int)Seg.CS].Base) & 0xFFFF_FFFF) > limit)
        {
            // Decoding an instruction that runs past the limit touched the next page: the limit check
            // comes before paging, so this is #GP(0) and CR2 keeps its value.
            Cr2 = cr2;
            throw GeneralProtection(0);
        }
        ulong ip = Rip;
        int n = 0;
        foreach (ref readonly Op op in b.Ops.AsSpan())
        {
            if (ip + op.Len - 1 > limit)
            {
                break;
            }
            ip += op.Len;
            n++;
        }
        if (n == b.Count)
        {
            return b;
        }
        if (n == 0)
        {
            throw GeneralProtection(0);
        }
        // Allocates, but only for a block that runs past the CS limit (code at the very end of its segment).
        return new Block(b.Ops.AsSpan(0, n).ToArray());
    }
}
