using System.Runtime.InteropServices;

namespace SharpVisor.Cpu.X86.Fpu;

/// <summary>
/// IEEE 754 double-extended value as the x87 FPU holds it: a 64-bit significand with an explicit
/// integer bit (J, bit 63), a 15-bit biased exponent and a sign (Intel SDM Vol. 1 §4.2.2, figure 4-3).
/// The layout is the 10-byte memory format of FLD/FSTP m80 and of the FXSAVE/FSAVE register images:
/// bytes 0-7 the significand, bytes 8-9 sign (bit 15) and exponent (bits 0-14), little-endian.
/// </summary>
[StructLayout(LayoutKind.Sequential, Pack = 2, Size = 10)]
public readonly struct Float80 : IEquatable<Float80>
{
    public const int ExponentBias = 16383;
    public const ushort MaxBiasedExponent = 0x7FFF;
    public const ulong IntegerBit = 1UL << 63;
    public const ulong QuietBit = 1UL << 62;

    /// <summary>Significand including the explicit integer bit J (bit 63).</summary>
    public readonly ulong Mantissa;

    /// <summary>Sign in bit 15, biased exponent in bits 0-14.</summary>
    public readonly ushort SignExponent;

    public Float80(ulong mantissa, ushort signExponent)
    {
        Mantissa = mantissa;
        SignExponent = signExponent;
    }

    public Float80(bool negative, int biasedExponent, ulong mantissa)
    {
        Mantissa = mantissa;
        SignExponent = (ushort)((negative ? 0x8000 : 0) | (biasedExponent & 0x7FFF));
    }

    public bool IsNegative => (SignExponent & 0x8000) != 0;
    public int BiasedExponent => SignExponent & 0x7FFF;
    public bool HasIntegerBit => (Mantissa & IntegerBit) != 0;

    public bool IsZero => BiasedExponent == 0 && Mantissa == 0;
    /// <summary>Exponent 0 with a non-zero significand: a denormal (J=0) or a pseudo-denormal (J=1).</summary>
    public bool IsDenormal => BiasedExponent == 0 && Mantissa != 0;
    public bool IsPseudoDenormal => BiasedExponent == 0 && HasIntegerBit;
    public bool IsInfinity => BiasedExponent == MaxBiasedExponent && Mantissa == IntegerBit;
    public bool IsNaN => BiasedExponent == MaxBiasedExponent && HasIntegerBit && (Mantissa << 1) != 0;
    public bool IsSignalingNaN => IsNaN && (Mantissa & QuietBit) == 0;
    public bool IsQuietNaN => IsNaN && (Mantissa & QuietBit) != 0;

    /// <summary>
    /// Encodings the 387 and later reject with an invalid-operation exception (SDM Vol. 1 §8.2.2,
    /// table 8-3): unnormals (J=0 with a non-zero, non-maximal exponent), pseudo-infinities and
    /// pseudo-NaNs (J=0 with the maximal exponent).
    /// </summary>
    public bool IsUnsupported => BiasedExponent != 0 && !HasIntegerBit;

    public Float80 Negate() => new(Mantissa, (ushort)(SignExponent ^ 0x8000));
    public Float80 Abs() => new(Mantissa, (ushort)(SignExponent & 0x7FFF));
    public Float80 WithSign(bool negative) => new(Mantissa, (ushort)((SignExponent & 0x7FFF) | (negative ? 0x8000 : 0)));

    public static Float80 Zero => new(0, 0);
    public static Float80 NegativeZero => new(0, 0x8000);
    public static Float80 One => new(IntegerBit, ExponentBias);
    public static Float80 PositiveInfinity => new(IntegerBit, MaxBiasedExponent);
    public static Float80 NegativeInfinity => new(IntegerBit, 0xFFFF);
    /// <summary>The QNaN "real indefinite" the FPU returns for masked invalid operations (SDM Vol. 1 table 4-3).</summary>
    public static Float80 Indefinite => new(0xC000_0000_0000_0000, 0xFFFF);
    public static Float80 MaxValue => new(ulong.MaxValue, 0x7FFE);
    public static Float80 MinNormal => new(IntegerBit, 1);
    public static Float80 Epsilon => new(1, 0);

    /// <summary>The exact value of a double (every double is representable).</summary>
    public static Float80 FromDouble(double value) => X87Arith.FromFloat64(BitConverter.DoubleToUInt64Bits(value), out _);

    /// <summary>Nearest double (round to nearest even), for diagnostics and tests.</summary>
    public double ToDouble() => BitConverter.UInt64BitsToDouble(X87Arith.ToFloat64(this, X87Control.Default, out _));

    public bool Equals(Float80 other) => Mantissa == other.Mantissa && SignExponent == other.SignExponent;
    public override bool Equals(object? obj) => obj is Float80 other && Equals(other);
    public override int GetHashCode() => HashCode.Combine(Mantissa, SignExponent);
    public static bool operator ==(Float80 left, Float80 right) => left.Equals(right);
    public static bool operator !=(Float80 left, Float80 right) => !left.Equals(right);

    public override string ToString() => $"{SignExponent:X4}_{Mantissa:X16} ({ToDouble():R})";
}
