using System.Runtime.CompilerServices;
using SharpVisor.Cpu.X86.Decode;

namespace SharpVisor.Cpu.X86;

/// <summary>
/// Canonical-address checks in 64-bit mode (SDM Vol. 1 3.3.7.1; Vol. 3A 6.15 "Interrupt 12"): a
/// memory reference whose bytes are not all canonical raises #SS(0) when it is a stack reference —
/// the stack instructions' own pushes and pops, and an explicit operand with RSP or RBP as its base
/// register — and #GP(0) otherwise. The host (Intel) decides by the base register, not by the
/// segment: <c>mov rax, ds:[rsp]</c> is #SS, <c>mov rax, ss:[rax]</c> and SS-overridden string
/// instructions are #GP. Every byte is checked before any is translated: an access straddling the
/// end of the lower half is #SS/#GP, not a #PF for its first page (tests/.../NonCanonicalTests).
/// </summary>
/// <remarks>
/// Cost model: one add and compare on each explicit memory operand, stack access and taken branch.
/// Outside 64-bit mode linear addresses and branch targets are below 2^32 and never reach the slow
/// paths; with 5-level paging (57-bit addresses) the fast test is conservative and the slow path
/// checks exactly. Accesses the checks do not cover (string instructions, XLAT) meet the page
/// walker's own canonical check, which is #GP.
/// </remarks>
public sealed unsafe partial class Cpu
{
    /// <summary>Added to an address, it maps the 48-bit canonical range onto 0 .. 2^48 - 1.</summary>
    const ulong CanonicalBias = 1UL << 47;
    const ulong CanonicalSpan = 1UL << 48;

    /// <summary>
    /// Whether bytes <paramref name="la"/> .. la + size - 1 may not all be canonical: exact for 4-level
    /// paging, conservative (a superset) with LA57.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static bool MaybeNonCanonical(ulong la, uint size) => la + CanonicalBias > CanonicalSpan - size;

    /// <summary>Whether every byte of the access is canonical for the current paging mode.</summary>
    bool IsCanonicalAccess(ulong la, uint size)
    {
        if (!LongModeActive)
        {
            return true; // linear addresses are 32 bits
        }
        int bits = (Cr4Value & X86.Cr4.LA57) != 0 ? 57 : 48;
        ulong last = la + Math.Max(size, 1u) - 1;
        return SignExtend(la, bits) == la && SignExtend(last, bits) == last;
    }

    /// <summary>
    /// An explicit memory operand at <paramref name="la"/> flagged by <see cref="MaybeNonCanonical"/>:
    /// #SS(0) when its base register (slot <paramref name="baseSlot"/>) is RSP or RBP, #GP(0) otherwise;
    /// a misaligned operand of an SSE form that requires 16-byte alignment is #GP(0) first.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public void CheckOperandCanonical(ulong la, uint size, byte baseSlot, OpFlags flags = OpFlags.None)
    {
        if (!IsCanonicalAccess(la, size))
        {
            throw baseSlot is 4 or 5 && ((flags & OpFlags.Aligned16) == 0 || (la & 15) == 0) ? Fault(Vector.SS, 0) : GeneralProtection(0);
        }
    }

    /// <summary>An implicit stack access flagged by <see cref="MaybeNonCanonical"/>: #SS(0).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    void CheckStackCanonical(ulong la, uint size)
    {
        if (!IsCanonicalAccess(la, size))
        {
            throw Fault(Vector.SS, 0);
        }
    }

    /// <summary>
    /// A near branch target flagged as maybe non-canonical: #GP(0) raised by the branch itself, with
    /// RIP (and RSP, for CALL and RET) unchanged (SDM Vol. 2A JMP/CALL/RET/Jcc, 64-bit mode: "#GP(0)
    /// If the target offset is non-canonical"), not by the fetch at the new RIP.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    void CheckBranchTargetCanonical(ulong target)
    {
        if (Mode == CpuMode.Long64 && !IsCanonicalAccess(target, 1))
        {
            throw GeneralProtection(0);
        }
    }

    /// <summary>A data access by the slow path that crosses a page: #GP(0) unless all of it is canonical
    /// (checked before either page is translated, so it is not a #PF for the first one).</summary>
    void CheckCrossingCanonical(ulong la, int size)
    {
        if (MaybeNonCanonical(la, (uint)size) && !IsCanonicalAccess(la, (uint)size))
        {
            throw GeneralProtection(0);
        }
    }
}
