using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using X86Sse = System.Runtime.Intrinsics.X86.Sse;

namespace SharpVisor.Cpu.X86.Simd;

/// <summary>
/// One SSE/SSE2 integer or bitwise operation: destination, source, imm8 → result. Each is a struct
/// so the generic handlers (<see cref="Sse"/>) are specialised per operation by the JIT. The host
/// intrinsics used here have the exact x86 semantics of the instruction of the same name (the
/// host is x86-64, which always has SSE2).
/// </summary>
public interface IVecOp
{
    static abstract Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte imm);
}

#pragma warning disable CS1591
public struct Paddb : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.Add(d, s); }
public struct Paddw : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.Add(d.AsUInt16(), s.AsUInt16()).AsByte(); }
public struct Paddd : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.Add(d.AsUInt32(), s.AsUInt32()).AsByte(); }
public struct Paddq : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.Add(d.AsUInt64(), s.AsUInt64()).AsByte(); }
public struct Psubb : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.Subtract(d, s); }
public struct Psubw : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.Subtract(d.AsUInt16(), s.AsUInt16()).AsByte(); }
public struct Psubd : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.Subtract(d.AsUInt32(), s.AsUInt32()).AsByte(); }
public struct Psubq : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.Subtract(d.AsUInt64(), s.AsUInt64()).AsByte(); }
public struct Paddsb : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.AddSaturate(d.AsSByte(), s.AsSByte()).AsByte(); }
public struct Paddsw : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.AddSaturate(d.AsInt16(), s.AsInt16()).AsByte(); }
public struct Paddusb : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.AddSaturate(d, s); }
public struct Paddusw : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.AddSaturate(d.AsUInt16(), s.AsUInt16()).AsByte(); }
public struct Psubsb : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.SubtractSaturate(d.AsSByte(), s.AsSByte()).AsByte(); }
public struct Psubsw : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.SubtractSaturate(d.AsInt16(), s.AsInt16()).AsByte(); }
public struct Psubusb : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.SubtractSaturate(d, s); }
public struct Psubusw : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.SubtractSaturate(d.AsUInt16(), s.AsUInt16()).AsByte(); }
public struct Pmullw : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.MultiplyLow(d.AsInt16(), s.AsInt16()).AsByte(); }
public struct Pmulhw : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.MultiplyHigh(d.AsInt16(), s.AsInt16()).AsByte(); }
public struct Pmulhuw : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.MultiplyHigh(d.AsUInt16(), s.AsUInt16()).AsByte(); }
public struct Pmuludq : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.Multiply(d.AsUInt32(), s.AsUInt32()).AsByte(); }
public struct Pmaddwd : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.MultiplyAddAdjacent(d.AsInt16(), s.AsInt16()).AsByte(); }
public struct Psadbw : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.SumAbsoluteDifferences(d, s).AsByte(); }
public struct Pavgb : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.Average(d, s); }
public struct Pavgw : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.Average(d.AsUInt16(), s.AsUInt16()).AsByte(); }
public struct Pminub : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.Min(d, s); }
public struct Pmaxub : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.Max(d, s); }
public struct Pminsw : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.Min(d.AsInt16(), s.AsInt16()).AsByte(); }
public struct Pmaxsw : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.Max(d.AsInt16(), s.AsInt16()).AsByte(); }
public struct Pcmpeqb : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.CompareEqual(d, s); }
public struct Pcmpeqw : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.CompareEqual(d.AsUInt16(), s.AsUInt16()).AsByte(); }
public struct Pcmpeqd : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.CompareEqual(d.AsUInt32(), s.AsUInt32()).AsByte(); }
public struct Pcmpgtb : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.CompareGreaterThan(d.AsSByte(), s.AsSByte()).AsByte(); }
public struct Pcmpgtw : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.CompareGreaterThan(d.AsInt16(), s.AsInt16()).AsByte(); }
public struct Pcmpgtd : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.CompareGreaterThan(d.AsInt32(), s.AsInt32()).AsByte(); }
public struct Pand : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => d & s; }
public struct Pandn : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => ~d & s; }
public struct Por : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => d | s; }
public struct Pxor : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => d ^ s; }
public struct Packsswb : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.PackSignedSaturate(d.AsInt16(), s.AsInt16()).AsByte(); }
public struct Packssdw : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.PackSignedSaturate(d.AsInt32(), s.AsInt32()).AsByte(); }
public struct Packuswb : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.PackUnsignedSaturate(d.AsInt16(), s.AsInt16()); }
public struct Punpcklbw : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.UnpackLow(d, s); }
public struct Punpcklwd : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.UnpackLow(d.AsUInt16(), s.AsUInt16()).AsByte(); }
public struct Punpckldq : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.UnpackLow(d.AsUInt32(), s.AsUInt32()).AsByte(); }
public struct Punpcklqdq : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.UnpackLow(d.AsUInt64(), s.AsUInt64()).AsByte(); }
public struct Punpckhbw : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.UnpackHigh(d, s); }
public struct Punpckhwd : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.UnpackHigh(d.AsUInt16(), s.AsUInt16()).AsByte(); }
public struct Punpckhdq : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.UnpackHigh(d.AsUInt32(), s.AsUInt32()).AsByte(); }
public struct Punpckhqdq : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.UnpackHigh(d.AsUInt64(), s.AsUInt64()).AsByte(); }

// Shifts: the count is the low 64 bits of the source (an imm8 form passes it there); counts past the element width give 0 (or all sign bits).
public struct Psllw : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.ShiftLeftLogical(d.AsUInt16(), s.AsUInt16()).AsByte(); }
public struct Pslld : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.ShiftLeftLogical(d.AsUInt32(), s.AsUInt32()).AsByte(); }
public struct Psllq : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.ShiftLeftLogical(d.AsUInt64(), s.AsUInt64()).AsByte(); }
public struct Psrlw : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.ShiftRightLogical(d.AsUInt16(), s.AsUInt16()).AsByte(); }
public struct Psrld : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.ShiftRightLogical(d.AsUInt32(), s.AsUInt32()).AsByte(); }
public struct Psrlq : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.ShiftRightLogical(d.AsUInt64(), s.AsUInt64()).AsByte(); }
public struct Psraw : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.ShiftRightArithmetic(d.AsInt16(), s.AsInt16()).AsByte(); }
public struct Psrad : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.ShiftRightArithmetic(d.AsInt32(), s.AsInt32()).AsByte(); }

/// <summary>The whole register as one 128-bit integer, for PSLLDQ/PSRLDQ's byte shifts.</summary>
static class ByteShift
{
    public static UInt128 ToUInt128(Vector128<byte> v) => new(v.AsUInt64().GetElement(1), v.AsUInt64().GetElement(0));

    public static Vector128<byte> ToVector(UInt128 v) => Vector128.Create((ulong)v, (ulong)(v >> 64)).AsByte();
}

/// <summary>PSLLDQ/PSRLDQ: byte shifts of the whole register; imm &gt; 15 clears it.</summary>
public struct Pslldq : IVecOp
{
    public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) =>
        i > 15 ? Vector128<byte>.Zero : ByteShift.ToVector(ByteShift.ToUInt128(d) << (i * 8));
}

public struct Psrldq : IVecOp
{
    public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) =>
        i > 15 ? Vector128<byte>.Zero : ByteShift.ToVector(ByteShift.ToUInt128(d) >> (i * 8));
}

public struct Pshufd : IVecOp
{
    public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i)
    {
        var v = s.AsUInt32();
        return Vector128.Create(v.GetElement(i & 3), v.GetElement((i >> 2) & 3), v.GetElement((i >> 4) & 3), v.GetElement(i >> 6)).AsByte();
    }
}

public struct Pshuflw : IVecOp
{
    public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i)
    {
        var v = s.AsUInt16();
        return Vector128.Create(v.GetElement(i & 3), v.GetElement((i >> 2) & 3), v.GetElement((i >> 4) & 3), v.GetElement(i >> 6),
            v.GetElement(4), v.GetElement(5), v.GetElement(6), v.GetElement(7)).AsByte();
    }
}

public struct Pshufhw : IVecOp
{
    public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i)
    {
        var v = s.AsUInt16();
        return Vector128.Create(v.GetElement(0), v.GetElement(1), v.GetElement(2), v.GetElement(3),
            v.GetElement(4 + (i & 3)), v.GetElement(4 + ((i >> 2) & 3)), v.GetElement(4 + ((i >> 4) & 3)), v.GetElement(4 + (i >> 6))).AsByte();
    }
}

/// <summary>SHUFPS: two dwords from the destination, two from the source.</summary>
public struct Shufps : IVecOp
{
    public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i)
    {
        var a = d.AsUInt32();
        var b = s.AsUInt32();
        return Vector128.Create(a.GetElement(i & 3), a.GetElement((i >> 2) & 3), b.GetElement((i >> 4) & 3), b.GetElement(i >> 6)).AsByte();
    }
}

public struct Shufpd : IVecOp
{
    public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) =>
        Vector128.Create(d.AsUInt64().GetElement(i & 1), s.AsUInt64().GetElement((i >> 1) & 1)).AsByte();
}

public struct Unpcklps : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.UnpackLow(d.AsUInt32(), s.AsUInt32()).AsByte(); }
public struct Unpckhps : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Sse2.UnpackHigh(d.AsUInt32(), s.AsUInt32()).AsByte(); }

/// <summary>MOVHLPS (high half of the source into the low half), MOVLHPS (the reverse).</summary>
public struct Movhlps : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Vector128.Create(s.AsUInt64().GetElement(1), d.AsUInt64().GetElement(1)).AsByte(); }
public struct Movlhps : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Vector128.Create(d.AsUInt64().GetElement(0), s.AsUInt64().GetElement(0)).AsByte(); }
/// <summary>Copy of the source (MOVAPS/MOVDQU... loads and register moves).</summary>
public struct Mov : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => s; }
/// <summary>Low 64 bits of the source, upper half zeroed (MOVQ xmm, xmm/m64).</summary>
public struct MovqZero : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => Vector128.Create(s.AsUInt64().GetElement(0), 0UL).AsByte(); }
/// <summary>Replace the low 32 / 64 bits (MOVSS/MOVSD register forms, MOVLPS/MOVLPD loads).</summary>
public struct MergeLow32 : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => d.AsUInt32().WithElement(0, s.AsUInt32().GetElement(0)).AsByte(); }
public struct MergeLow64 : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => d.AsUInt64().WithElement(0, s.AsUInt64().GetElement(0)).AsByte(); }
/// <summary>MOVHPS/MOVHPD loads: the 64-bit source into the high half.</summary>
public struct MergeHigh64 : IVecOp { public static Vector128<byte> Apply(Vector128<byte> d, Vector128<byte> s, byte i) => d.AsUInt64().WithElement(1, s.AsUInt64().GetElement(0)).AsByte(); }
#pragma warning restore CS1591

/// <summary>Keeps the X86 Sse class name reachable without clashing with the family class.</summary>
internal static class HostSse
{
    public static int MoveMask(Vector128<float> v) => X86Sse.MoveMask(v);
}
