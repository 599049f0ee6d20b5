using System.Runtime.CompilerServices;
using SharpVisor.Cpu.X86.Decode;

namespace SharpVisor.Cpu.X86;

/// <summary>Implicit stack accesses (PUSH, POP, CALL, RET...): SS-relative, SP/ESP/RSP per <see cref="Cpu.StackMask"/>,
/// checked against the SS limit outside 64-bit mode (#SS(0), SDM Vol. 3A 5.3).</summary>
public sealed unsafe partial class Cpu
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Push<S>(ulong v) where S : IOpSize
    {
        ulong sp = Regs.Gpr[4] - (ulong)(S.Bits / 8);
        CheckStackAccess(sp & StackMask, (uint)(S.Bits / 8), SegmentAccess.Write);
        S.Store(this, (Regs.SegBase[(int)Seg.SS] + (sp & StackMask)) & Regs.LinearMask, v);
        Regs.Gpr[4] = (Regs.Gpr[4] & ~StackMask) | (sp & StackMask);
    }

    /// <summary>Reads the value on top of the stack without moving the stack pointer.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ulong PeekStack<S>(ulong extraOffset = 0) where S : IOpSize
    {
        ulong offset = (Regs.Gpr[4] + extraOffset) & StackMask;
        CheckStackAccess(offset, (uint)(S.Bits / 8), SegmentAccess.Read);
        return S.Load(this, (Regs.SegBase[(int)Seg.SS] + offset) & Regs.LinearMask);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void AdjustStack(ulong delta) =>
        Regs.Gpr[4] = (Regs.Gpr[4] & ~StackMask) | ((Regs.Gpr[4] + delta) & StackMask);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ulong Pop<S>() where S : IOpSize
    {
        ulong v = PeekStack<S>();
        AdjustStack((ulong)(S.Bits / 8));
        return v;
    }

    /// <summary>Pushes a value of <paramref name="size"/> bytes (2, 4 or 8).</summary>
    public void PushSized(int size, ulong v)
    {
        switch (size)
        {
            case 2: Push<S16>(v); break;
            case 4: Push<S32>(v); break;
            default: Push<S64>(v); break;
        }
    }

    public ulong PopSized(int size) => size switch { 2 => Pop<S16>(), 4 => Pop<S32>(), _ => Pop<S64>() };
}
