using System.Numerics;

namespace SharpVisor.Cpu.X86.Fpu;

/// <summary>An 18-digit packed BCD integer, the m80bcd operand of FBLD/FBSTP (SDM Vol. 1 §4.7, figure 4-10).</summary>
public readonly struct PackedBcd : IEquatable<PackedBcd>
{
    /// <summary>Bytes 0-7: digits d0 (low nibble of byte 0) to d15.</summary>
    public readonly ulong Low;
    /// <summary>Byte 8: digits d16, d17; byte 9: sign in bit 7, bits 0-6 ignored on load.</summary>
    public readonly ushort High;

    public PackedBcd(ulong low, ushort high)
    {
        Low = low;
        High = high;
    }

    /// <summary>The packed BCD integer indefinite FBSTP stores on a masked invalid operation (SDM Vol. 1 table 4-5).</summary>
    public static PackedBcd Indefinite => new(0xC000_0000_0000_0000, 0xFFFF);

    public bool Equals(PackedBcd other) => Low == other.Low && High == other.High;
    public override bool Equals(object? obj) => obj is PackedBcd other && Equals(other);
    public override int GetHashCode() => HashCode.Combine(Low, High);
    public static bool operator ==(PackedBcd left, PackedBcd right) => left.Equals(right);
    public static bool operator !=(PackedBcd left, PackedBcd right) => !left.Equals(right);
    public override string ToString() => $"{High:X4}_{Low:X16}";
}

public static partial class X87Arith
{
    // ---------------------------------------------------------------- integers

    /// <summary>FILD: every 16/32/64-bit integer is exact in double-extended.</summary>
    public static Float80 FromInt64(long value)
    {
        if (value == 0)
            return Float80.Zero;
        bool negative = value < 0;
        ulong magnitude = negative ? (ulong)-value : (ulong)value; // -long.MinValue wraps to 2^63, as wanted
        int lz = BitOperations.LeadingZeroCount(magnitude);
        return new Float80(negative, Float80.ExponentBias + 63 - lz, magnitude << lz);
    }

    public static Float80 FromInt32(int value) => FromInt64(value);

    public static Float80 FromInt16(short value) => FromInt64(value);

    /// <summary>FIST/FISTP m16 per RC; out of range, NaN or infinity → IE and the integer indefinite 0x8000.</summary>
    public static short ToInt16(Float80 value, X87Control cw, out X87Status flags) => (short)ToInteger(value, 16, cw.Rounding, out flags);

    /// <summary>FIST/FISTP m32 per RC; invalid → 0x80000000.</summary>
    public static int ToInt32(Float80 value, X87Control cw, out X87Status flags) => (int)ToInteger(value, 32, cw.Rounding, out flags);

    /// <summary>FISTP m64 per RC; invalid → 0x8000000000000000.</summary>
    public static long ToInt64(Float80 value, X87Control cw, out X87Status flags) => ToInteger(value, 64, cw.Rounding, out flags);

    /// <summary>FISTTP m16: truncation whatever RC says (SSE3).</summary>
    public static short ToInt16Truncate(Float80 value, out X87Status flags) => (short)ToInteger(value, 16, X87Rounding.TowardZero, out flags);

    public static int ToInt32Truncate(Float80 value, out X87Status flags) => (int)ToInteger(value, 32, X87Rounding.TowardZero, out flags);

    public static long ToInt64Truncate(Float80 value, out X87Status flags) => ToInteger(value, 64, X87Rounding.TowardZero, out flags);

    /// <summary>Rounds to a signed integer of the given width; the integer indefinite on invalid.</summary>
    public static long ToInteger(Float80 value, int bits, X87Rounding rc, out X87Status flags)
    {
        flags = X87Status.None;
        long indefinite = long.MinValue >> (64 - bits);
        Kind kind = Classify(value);
        if (kind == Kind.Zero)
            return 0;
        if (kind != Kind.Finite)
        {
            flags |= X87Status.Invalid;
            return indefinite;
        }
        // No DE: the host reports none for a denormal source of a store (FIST/FST/FBSTP).
        bool negative = value.IsNegative;
        ulong m = Unpack(value, out int e);
        if (!RoundToIntegral(negative, m, e, rc, ref flags, out ulong magnitude))
            return InvalidInteger(indefinite, ref flags);
        ulong limit = 1UL << (bits - 1); // |min| of the width; max is limit - 1
        if (negative ? magnitude > limit : magnitude >= limit)
            return InvalidInteger(indefinite, ref flags);
        return negative ? (long)(0 - magnitude) : (long)magnitude;
    }

    private static long InvalidInteger(long indefinite, ref X87Status flags)
    {
        // The masked response replaces the rounded value, so no precision exception is reported.
        flags = X87Status.Invalid;
        return indefinite;
    }

    /// <summary>
    /// Rounds m·2^(e-63) to an integer per RC, reporting PE and C1 (rounded up). Returns false when the
    /// magnitude does not fit in 64 bits.
    /// </summary>
    private static bool RoundToIntegral(bool negative, ulong m, int e, X87Rounding rc, ref X87Status flags, out ulong magnitude)
    {
        if (e > 63)
        {
            magnitude = 0;
            return false;
        }
        // Integer part and the fraction as a 64-bit binary fraction (anything below jammed into bit 0).
        int shift = 63 - e;
        ulong fraction;
        if (shift == 0)
        {
            magnitude = m;
            fraction = 0;
        }
        else if (shift < 64)
        {
            magnitude = m >> shift;
            fraction = m << (64 - shift);
        }
        else
        {
            magnitude = 0;
            fraction = shift == 64 ? m : 1;
        }
        if (fraction == 0)
            return true;
        flags |= X87Status.Precision;
        bool roundBit = (fraction >> 63) != 0;
        bool sticky = (fraction << 1) != 0;
        bool up = rc switch
        {
            X87Rounding.NearestEven => roundBit && (sticky || (magnitude & 1) != 0),
            X87Rounding.Up => !negative,
            X87Rounding.Down => negative,
            _ => false,
        };
        if (up)
        {
            flags |= X87Status.C1;
            magnitude++;
            if (magnitude == 0)
                return false;
        }
        return true;
    }

    // ---------------------------------------------------------------- packed BCD

    /// <summary>FBLD. Invalid digits (A-F) give an undefined result per the SDM; here they simply weigh their nibble value.</summary>
    public static Float80 FromPackedBcd(PackedBcd bcd)
    {
        ulong value = 0;
        for (int i = 17; i >= 0; i--)
        {
            int nibble = i >= 16 ? (bcd.High >> ((i - 16) * 4)) & 0xF : (int)(bcd.Low >> (i * 4)) & 0xF;
            value = value * 10 + (ulong)nibble;
        }
        bool negative = (bcd.High & 0x8000) != 0;
        if (value == 0)
            return SignedZero(negative);
        int lz = BitOperations.LeadingZeroCount(value);
        return new Float80(negative, Float80.ExponentBias + 63 - lz, value << lz);
    }

    /// <summary>FBSTP: round per RC; |result| > 10^18-1, NaN or infinity → IE and the BCD indefinite.</summary>
    public static PackedBcd ToPackedBcd(Float80 value, X87Control cw, out X87Status flags)
    {
        flags = X87Status.None;
        Kind kind = Classify(value);
        bool negative = value.IsNegative;
        if (kind == Kind.Zero)
            return new PackedBcd(0, (ushort)(negative ? 0x8000 : 0));
        if (kind != Kind.Finite)
        {
            flags |= X87Status.Invalid;
            return PackedBcd.Indefinite;
        }
        // No DE: the host reports none for a denormal source of a store (FIST/FST/FBSTP).
        ulong m = Unpack(value, out int e);
        if (!RoundToIntegral(negative, m, e, cw.Rounding, ref flags, out ulong magnitude) || magnitude > 999_999_999_999_999_999UL)
        {
            flags = X87Status.Invalid;
            return PackedBcd.Indefinite;
        }
        ulong low = 0;
        for (int i = 0; i < 16; i++)
        {
            low |= (magnitude % 10) << (i * 4);
            magnitude /= 10;
        }
        int high = (int)(magnitude % 10) | (int)(magnitude / 10 << 4);
        return new PackedBcd(low, (ushort)(high | (negative ? 0x8000 : 0)));
    }

    // ---------------------------------------------------------------- binary32 / binary64

    /// <summary>
    /// Flags of an arithmetic or compare instruction with a memory operand (FADD m32, FCOM m64 …), built
    /// as "convert the operand, then operate": the conversion's IE (SNaN operand) always counts, its DE
    /// only when the operation went ahead on numbers — not when the register operand is a NaN or an
    /// unsupported encoding, and not when the operation itself was invalid or divided by zero, as the
    /// host shows (the same precedence as for register operands).
    /// </summary>
    public static X87Status CombineOperandFlags(X87Status operation, X87Status conversion, Float80 registerOperand)
    {
        X87Status flags = operation | (conversion & X87Status.Invalid);
        bool proceeded = (operation & (X87Status.Invalid | X87Status.ZeroDivide)) == 0
            && !registerOperand.IsNaN && !registerOperand.IsUnsupported;
        if ((conversion & X87Status.Denormal) != 0 && proceeded)
            flags |= X87Status.Denormal;
        return flags;
    }

    /// <summary>FLD m32: exact; a denormal raises DE, an SNaN raises IE and is quieted.</summary>
    public static Float80 FromFloat32(uint bits, out X87Status flags) => WidenFloat32(bits, quietSignaling: true, out flags);

    /// <summary>
    /// The m32 operand of FADD/FSUB/FMUL/FDIV/FCOM …: widened exactly with an SNaN left signaling (the
    /// operation then raises IE and picks the NaN by the two-operand rule, as the host does); DE is
    /// reported for <see cref="CombineOperandFlags"/>.
    /// </summary>
    public static Float80 Float32Operand(uint bits, out X87Status flags) => WidenFloat32(bits, quietSignaling: false, out flags);

    private static Float80 WidenFloat32(uint bits, bool quietSignaling, out X87Status flags)
    {
        flags = X87Status.None;
        bool negative = (bits >> 31) != 0;
        int e = (int)(bits >> 23) & 0xFF;
        ulong fraction = bits & 0x7FFFFF;
        if (e == 0xFF)
        {
            if (fraction == 0)
                return Infinity(negative);
            ulong quiet = Float80.QuietBit;
            if ((fraction & 0x400000) == 0)
            {
                if (!quietSignaling)
                    quiet = 0;
                else
                    flags |= X87Status.Invalid;
            }
            return new Float80(negative, Float80.MaxBiasedExponent, Float80.IntegerBit | quiet | (fraction << 40));
        }
        if (e == 0)
        {
            if (fraction == 0)
                return SignedZero(negative);
            flags |= X87Status.Denormal;
            int lz = BitOperations.LeadingZeroCount(fraction);
            return new Float80(negative, Float80.ExponentBias - 149 + 63 - lz, fraction << lz);
        }
        return new Float80(negative, e - 127 + Float80.ExponentBias, ((1UL << 23) | fraction) << 40);
    }

    /// <summary>FLD m64: exact; a denormal raises DE, an SNaN raises IE and is quieted.</summary>
    public static Float80 FromFloat64(ulong bits, out X87Status flags) => WidenFloat64(bits, quietSignaling: true, out flags);

    /// <summary>The m64 operand of an arithmetic or compare instruction; see <see cref="Float32Operand"/>.</summary>
    public static Float80 Float64Operand(ulong bits, out X87Status flags) => WidenFloat64(bits, quietSignaling: false, out flags);

    private static Float80 WidenFloat64(ulong bits, bool quietSignaling, out X87Status flags)
    {
        flags = X87Status.None;
        bool negative = (bits >> 63) != 0;
        int e = (int)(bits >> 52) & 0x7FF;
        ulong fraction = bits & 0xF_FFFF_FFFF_FFFF;
        if (e == 0x7FF)
        {
            if (fraction == 0)
                return Infinity(negative);
            ulong quiet = Float80.QuietBit;
            if ((fraction & (1UL << 51)) == 0)
            {
                if (!quietSignaling)
                    quiet = 0;
                else
                    flags |= X87Status.Invalid;
            }
            return new Float80(negative, Float80.MaxBiasedExponent, Float80.IntegerBit | quiet | (fraction << 11));
        }
        if (e == 0)
        {
            if (fraction == 0)
                return SignedZero(negative);
            flags |= X87Status.Denormal;
            int lz = BitOperations.LeadingZeroCount(fraction);
            return new Float80(negative, Float80.ExponentBias - 1074 + 63 - lz, fraction << lz);
        }
        return new Float80(negative, e - 1023 + Float80.ExponentBias, ((1UL << 52) | fraction) << 11);
    }

    /// <summary>
    /// With OE or UE unmasked, a store to memory stores nothing and reports that exception alone (no
    /// PE, no C1), as the host shows; the caller must then leave memory unchanged.
    /// </summary>
    private static X87Status UnmaskedStoreFault(X87Status flags, X87Control cw)
    {
        var fault = (X87Status)((ushort)flags & ~cw.Word) & (X87Status.Overflow | X87Status.Underflow);
        return fault != 0 ? fault : flags;
    }

    /// <summary>
    /// FST m32 per RC with single range and precision (PC does not apply). NaNs keep their top
    /// fraction bits and are quieted; unsupported encodings store the single indefinite 0xFFC00000.
    /// With OE/UE unmasked the handler must not store (SDM §8.5.3-8.5.4: memory destinations are unchanged);
    /// the flags then hold that exception alone.
    /// </summary>
    public static uint ToFloat32(Float80 value, X87Control cw, out X87Status flags)
    {
        flags = X87Status.None;
        uint sign = value.IsNegative ? 0x8000_0000u : 0;
        switch (Classify(value))
        {
            case Kind.Zero:
                return sign;
            case Kind.Infinity:
                return sign | 0x7F80_0000;
            case Kind.Unsupported:
                flags |= X87Status.Invalid;
                return 0xFFC0_0000;
            case Kind.SNaN:
            case Kind.QNaN:
                if (value.IsSignalingNaN)
                    flags |= X87Status.Invalid;
                return sign | 0x7FC0_0000 | (uint)(value.Mantissa >> 40) & 0x7F_FFFF;
        }
        // No DE: the host reports none for a denormal source of a store (FIST/FST/FBSTP).
        ulong m = Unpack(value, out int e);
        Rounded r = Round(value.IsNegative, ref e, (UInt128)m << 64, Single, cw, rebiasUnmasked: false, ref flags, out ulong rm, out int lsbExp);
        flags = UnmaskedStoreFault(flags, cw);
        if (r == Rounded.Infinity)
            return sign | 0x7F80_0000;
        if (r == Rounded.MaxFinite)
            return sign | 0x7F7F_FFFF;
        if (rm == 0)
            return sign;
        if (e >= Single.EMin)
            return sign | (uint)(e + 127) << 23 | (uint)((rm << BitOperations.LeadingZeroCount(rm)) >> 40) & 0x7F_FFFF;
        return sign | (uint)(rm << (lsbExp + 149));
    }

    /// <summary>FST m64 per RC with double range and precision; see <see cref="ToFloat32"/>.</summary>
    public static ulong ToFloat64(Float80 value, X87Control cw, out X87Status flags)
    {
        flags = X87Status.None;
        ulong sign = value.IsNegative ? 0x8000_0000_0000_0000UL : 0;
        switch (Classify(value))
        {
            case Kind.Zero:
                return sign;
            case Kind.Infinity:
                return sign | 0x7FF0_0000_0000_0000;
            case Kind.Unsupported:
                flags |= X87Status.Invalid;
                return 0xFFF8_0000_0000_0000;
            case Kind.SNaN:
            case Kind.QNaN:
                if (value.IsSignalingNaN)
                    flags |= X87Status.Invalid;
                return sign | 0x7FF8_0000_0000_0000 | (value.Mantissa >> 11) & 0xF_FFFF_FFFF_FFFF;
        }
        // No DE: the host reports none for a denormal source of a store (FIST/FST/FBSTP).
        ulong m = Unpack(value, out int e);
        Rounded r = Round(value.IsNegative, ref e, (UInt128)m << 64, Double, cw, rebiasUnmasked: false, ref flags, out ulong rm, out int lsbExp);
        flags = UnmaskedStoreFault(flags, cw);
        if (r == Rounded.Infinity)
            return sign | 0x7FF0_0000_0000_0000;
        if (r == Rounded.MaxFinite)
            return sign | 0x7FEF_FFFF_FFFF_FFFF;
        if (rm == 0)
            return sign;
        if (e >= Double.EMin)
            return sign | (ulong)(e + 1023) << 52 | ((rm << BitOperations.LeadingZeroCount(rm)) >> 11) & 0xF_FFFF_FFFF_FFFF;
        return sign | (rm << (lsbExp + 1074));
    }
}
