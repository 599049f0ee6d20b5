using System.Runtime.CompilerServices;

namespace SharpVisor.Cpu.X86;

/// <summary>
/// Alignment checking (SDM Vol. 3A 6.15 "Interrupt 17—Alignment Check Exception (#AC)", 2.5 CR0.AM,
/// Vol. 1 3.4.3.3 EFLAGS.AC): with CR0.AM = 1, EFLAGS.AC = 1 and CPL 3, a data or stack access whose
/// address is not a multiple of its size raises #AC(0), a fault. Implicit supervisor accesses
/// (exception frames, descriptor tables, the TSS: <see cref="SystemRead"/>/<see cref="SystemWrite"/>)
/// and instruction fetches are never checked.
/// </summary>
/// <remarks>
/// Cost model: nothing on the fast path. While the three conditions hold (<see cref="_alignmentChecks"/>,
/// recomputed by <see cref="SelectTlb"/> whenever the CPL, CR0 or EFLAGS.AC change), data accesses
/// look up <see cref="s_alignmentCheckedTlb"/>, whose tags never match, so every access reaches
/// ReadSlow/WriteSlow; they check the address and then take the user TLB's translation as the fast
/// path would. Instruction fetch keeps using the user TLB (<see cref="_codeTlb"/>).
/// <para>
/// What each access must be aligned to is its size (Table 6-7), except where the host CPU shows
/// otherwise and the SDM leaves it to the implementation: MOVUPS/MOVUPD/MOVDQU are never checked,
/// MASKMOVQ/MASKMOVDQU are checked at 8, FXSAVE/FXRSTOR at 4 (then #GP below 16), and areas
/// written in parts — the x87 environment and FSAVE images (4, or 2 with a 16-bit operand size),
/// SGDT/SIDT (4) — are checked once as a whole (<see cref="CheckAlignment"/>) and written with the
/// <c>NoAlignmentCheck</c> accessors.
/// </para>
/// </remarks>
public sealed unsafe partial class Cpu
{
    /// <summary>CPL 3, CR0.AM and EFLAGS.AC: every data access is checked (and takes the slow path).</summary>
    bool _alignmentChecks;

    /// <summary>The data TLB while alignment checks are active: all tags invalid, never filled.</summary>
    static readonly TlbEntry[] s_alignmentCheckedTlb = NewInvalidTlb();

    static TlbEntry[] NewInvalidTlb()
    {
        var tlb = NewPinnedTlb();
        FlushTlbArray(tlb, includeGlobal: true);
        return tlb;
    }

    /// <summary>True while ring-3 data accesses are alignment checked (for paths that bypass the accessors: bulk string copies).</summary>
    public bool AlignmentChecksActive => _alignmentChecks;

    bool AlignmentCheckConditions => Cpl == 3 && (Cr0Value & X86.Cr0.AM) != 0 && (FlagsOther & RFlags.AC) != 0;

    /// <summary>
    /// #AC(0) when alignment checks are active and <paramref name="la"/> is not a multiple of
    /// <paramref name="alignment"/> (a power of two): for operands checked as a whole before being
    /// accessed in parts.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void CheckAlignment(ulong la, int alignment)
    {
        if (_alignmentChecks && (la & (ulong)(alignment - 1)) != 0)
        {
            RaiseAlignmentCheck(la);
        }
    }

    /// <summary>
    /// Raises #AC(0) for a misaligned access — unless the address is not canonical: the host raises
    /// the canonical-address fault first (#GP, or #SS through the stack), which the translation of
    /// the access then raises. A misaligned access to an unmapped page is #AC, not #PF.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    void RaiseAlignmentCheck(ulong la)
    {
        la &= Regs.LinearMask;
        int vaBits = (Cr4Value & X86.Cr4.LA57) != 0 ? 57 : 48;
        if (LongModeActive && SignExtend(la, vaBits) != la)
        {
            return;
        }
        throw Fault(Vector.AC, 0);
    }

    /// <summary>
    /// The slow-path read while checks are active: #AC when misaligned (<paramref name="alignmentMask"/>
    /// is size - 1, or 0 for an exempt access), then the user TLB's entry if it holds the page.
    /// Returns false when the access must go through the page walk.
    /// </summary>
    bool TryReadAlignmentChecked(ulong la, int size, ulong alignmentMask, out ulong value)
    {
        if ((la & alignmentMask) != 0)
        {
            RaiseAlignmentCheck(la);
        }
        ref TlbEntry e = ref _tlbUser[(int)(la >> 12) & (TlbSize - 1)];
        if (e.ReadTag == (la & PageMask) && (la & 0xFFF) <= (ulong)(0x1000 - size))
        {
            byte* p = (byte*)(e.HostAddend + (long)la);
            value = size switch { 1 => *p, 2 => *(ushort*)p, 4 => *(uint*)p, _ => *(ulong*)p };
            return true;
        }
        value = 0;
        return false;
    }

    /// <summary>The slow-path write while checks are active (see <see cref="TryReadAlignmentChecked"/>).</summary>
    bool TryWriteAlignmentChecked(ulong la, int size, ulong alignmentMask, ulong v)
    {
        if ((la & alignmentMask) != 0)
        {
            RaiseAlignmentCheck(la);
        }
        ref TlbEntry e = ref _tlbUser[(int)(la >> 12) & (TlbSize - 1)];
        if (e.WriteTag == (la & PageMask) && (la & 0xFFF) <= (ulong)(0x1000 - size) && !Ram.IsCodePage(e.RamOffset))
        {
            byte* p = (byte*)(e.HostAddend + (long)la);
            switch (size)
            {
                case 1: *p = (byte)v; break;
                case 2: *(ushort*)p = (ushort)v; break;
                case 4: *(uint*)p = (uint)v; break;
                default: *(ulong*)p = v; break;
            }
            return true;
        }
        return false;
    }
}
