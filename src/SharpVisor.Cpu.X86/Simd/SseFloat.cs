using System.Numerics;
using System.Runtime.CompilerServices;

namespace SharpVisor.Cpu.X86.Simd;

/// <summary>
/// Scalar IEEE-754 operations with x86 SSE semantics (SDM Vol. 1 4.8, 11.5): MXCSR rounding control,
/// DAZ, FTZ, the six exception flags, the x86 NaN rules (first NaN operand wins, SNaN quieted, the
/// negative QNaN "real indefinite" for invalid operations).
/// </summary>
/// <remarks>
/// Each result is formed in double precision on operands scaled by powers of two (so nothing
/// under- or overflows): the host's round-to-nearest result plus the sign of its exact error
/// (TwoSum for add, the FMA residual for multiply, divide and square root). <see cref="RoundScaled"/>
/// then rounds that to single or double precision under MXCSR.RC with the subnormal grid, FTZ,
/// overflow and the PE/UE/OE flags. Single-precision operands are exact in double, so one code
/// path serves both widths. Verified against the host CPU under random MXCSR values.
/// </remarks>
public static class SseFloat
{
    public const uint IE = 1, DE = 2, ZE = 4, OE = 8, UE = 16, PE = 32, Daz = 64, Ftz = 0x8000;
    public const int RoundNearest = 0, RoundDown = 1, RoundUp = 2, RoundZero = 3;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int Rc(uint mxcsr) => (int)(mxcsr >> 13) & 3;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static ulong Bits<T>(T v) where T : IBinaryFloatingPointIeee754<T> =>
        typeof(T) == typeof(double) ? BitConverter.DoubleToUInt64Bits(Unsafe.As<T, double>(ref v)) : BitConverter.SingleToUInt32Bits(Unsafe.As<T, float>(ref v));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static T FromBits<T>(ulong b) where T : IBinaryFloatingPointIeee754<T>
    {
        if (typeof(T) == typeof(double))
        {
            double d = BitConverter.UInt64BitsToDouble(b);
            return Unsafe.As<double, T>(ref d);
        }
        float f = BitConverter.UInt32BitsToSingle((uint)b);
        return Unsafe.As<float, T>(ref f);
    }

    /// <summary>The quiet bit of the significand (bit 51 / bit 22).</summary>
    static ulong QuietBit<T>() where T : IBinaryFloatingPointIeee754<T> => typeof(T) == typeof(double) ? 1UL << 51 : 1UL << 22;

    /// <summary>QNaN floating-point indefinite (SDM Vol. 1 Table 4-3): sign 1, quiet bit only.</summary>
    public static T Indefinite<T>() where T : IBinaryFloatingPointIeee754<T> =>
        typeof(T) == typeof(double) ? FromBits<T>(0xFFF8_0000_0000_0000) : FromBits<T>(0xFFC0_0000);

    public static bool IsSignaling<T>(T v) where T : IBinaryFloatingPointIeee754<T> => T.IsNaN(v) && (Bits(v) & QuietBit<T>()) == 0;

    public static T Quiet<T>(T v) where T : IBinaryFloatingPointIeee754<T> => FromBits<T>(Bits(v) | QuietBit<T>());

    /// <summary>DAZ: a denormal source is read as a zero of the same sign (SDM Vol. 1 10.2.3.4); no DE.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static T Source<T>(T v, uint mxcsr, ref uint flags) where T : IBinaryFloatingPointIeee754<T>
    {
        if (T.IsSubnormal(v))
        {
            if ((mxcsr & Daz) != 0)
            {
                return T.IsNegative(v) ? T.NegativeZero : T.Zero;
            }
            flags |= DE;
        }
        return v;
    }

    /// <summary>NaN operands (SDM Vol. 1 Table 4-7, SSE column): the first NaN operand, quieted; IE for an SNaN.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static bool NaNResult<T>(T a, T b, ref uint flags, out T r) where T : IBinaryFloatingPointIeee754<T>
    {
        if (!T.IsNaN(a) && !T.IsNaN(b))
        {
            r = default!;
            return false;
        }
        if (IsSignaling(a) || IsSignaling(b))
        {
            flags |= IE;
        }
        r = Quiet(T.IsNaN(a) ? a : b);
        return true;
    }

    static int Sign<T>(T v) where T : IBinaryFloatingPointIeee754<T> => v > T.Zero ? 1 : v < T.Zero ? -1 : 0;


    /// <summary>
    /// Rounds the value (r + e) * 2^scale to the format of T under MXCSR (RC, FTZ), setting
    /// OE/UE/PE. <paramref name="r"/> is a normal double (the round-to-nearest result of the exact
    /// value scaled into range) and <paramref name="err"/> the sign of the exact value minus r
    /// (|e| below half an ulp of r). Working on the 53-bit significand as 4*M + err keeps every
    /// comparison with a rounding boundary or midpoint of the (coarser or subnormal) target grid
    /// exact (SDM Vol. 1 4.8.4 rounding, 4.9.1.4-4.9.1.6 OE/UE/PE; x86 detects tininess after rounding).
    /// </summary>
    public static T RoundScaled<T>(double r, int err, int scale, uint mxcsr, ref uint flags) where T : IBinaryFloatingPointIeee754<T>
    {
        bool isDouble = typeof(T) == typeof(double);
        int p = isDouble ? 53 : 24, emin = isDouble ? -1022 : -126, emax = isDouble ? 1023 : 127;
        bool neg = r < 0;
        ulong rb = BitConverter.DoubleToUInt64Bits(r);
        int e = (int)((rb >> 52) & 0x7FF) - 1023;
        ulong m = (rb & 0xF_FFFF_FFFF_FFFF) | (1UL << 52);
        int x = e + scale; // exponent of the exact value
        int magErr = neg ? -err : err;
        UInt128 n;
        if (magErr < 0 && m == 1UL << 52)
        {
            // Just below a power of two: the exact value lies in the binade below, whose grid is
            // twice as fine; nearest rounding bounds it within half of that grid's ulp.
            n = ((UInt128)m << 3) - 1;
            x--;
        }
        else
        {
            n = ((UInt128)m << 2) + (UInt128)(Int128)magErr; // n/4 is the 53-bit significand, nudged by the sticky sign
        }
        int shift = (53 - p) + Math.Max(0, emin - x);
        int s2 = Math.Min(shift + 2, 120);
        UInt128 kept = n >> s2;
        UInt128 rem = n & ((UInt128.One << s2) - 1);
        UInt128 half = UInt128.One << (s2 - 1);
        bool inexact = rem != 0;
        int rc = Rc(mxcsr);
        bool up = rc switch
        {
            RoundNearest => rem > half || (rem == half && (kept & 1) != 0),
            RoundUp => inexact && !neg,
            RoundDown => inexact && neg,
            _ => false,
        };
        if (up)
        {
            kept++;
        }
        int qe = Math.Max(x, emin) - (p - 1); // exponent of the last kept bit
        if (kept >> p != 0)
        {
            kept >>= 1;
            qe++;
        }
        ulong sign = neg ? (isDouble ? 1UL << 63 : 1UL << 31) : 0;
        if (inexact)
        {
            flags |= PE;
        }
        bool normal = kept >> (p - 1) != 0;
        int resultExp = qe + (p - 1);
        if (normal && resultExp > emax)
        {
            flags |= OE | PE;
            bool toInf = rc == RoundNearest || (rc == RoundUp && !neg) || (rc == RoundDown && neg);
            ulong inf = isDouble ? 0x7FF0_0000_0000_0000UL : 0x7F80_0000UL;
            return FromBits<T>(sign | (toInf ? inf : inf - 1));
        }
        if (!normal)
        {
            // Tiny: masked underflow is signalled only when also inexact; FTZ flushes to a signed zero.
            if ((mxcsr & Ftz) != 0)
            {
                flags |= UE | PE;
                return FromBits<T>(sign);
            }
            if (inexact)
            {
                flags |= UE;
            }
            return FromBits<T>(sign | (ulong)kept);
        }
        ulong biased = (ulong)(resultExp + (isDouble ? 1023 : 127));
        ulong frac = (ulong)kept & ((1UL << (p - 1)) - 1);
        return FromBits<T>(sign | (biased << (p - 1)) | frac);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static double ToD<T>(T v) where T : IBinaryFloatingPointIeee754<T> => double.CreateTruncating(v);

    /// <summary>Splits a finite nonzero double into (value in [1,2), exponent).</summary>
    static double Normalize(double v, out int exp)
    {
        exp = Math.ILogB(v);
        return Math.ScaleB(v, -exp);
    }

    public static T Add<T>(T a, T b, uint mxcsr, ref uint flags) where T : IBinaryFloatingPointIeee754<T>
    {
        if (NaNResult(a, b, ref flags, out T n))
        {
            return n;
        }
        a = Source(a, mxcsr, ref flags);
        b = Source(b, mxcsr, ref flags);
        if (T.IsInfinity(a) || T.IsInfinity(b))
        {
            if (T.IsInfinity(a) && T.IsInfinity(b) && T.IsNegative(a) != T.IsNegative(b))
            {
                flags |= IE;
                return Indefinite<T>();
            }
            return a + b;
        }
        // In double (exact conversions for float operands); halved when the sum would overflow.
        double da = ToD(a), db = ToD(b);
        int scale = 0;
        if (double.IsInfinity(da + db))
        {
            da *= 0.5;
            db *= 0.5;
            scale = 1;
        }
        double r = da + db;
        // TwoSum (Knuth): the exact rounding error of da + db.
        double bb = r - da;
        double e = (da - (r - bb)) + (db - bb);
        if (r == 0)
        {
            // An exact zero: opposite values give +0, or -0 when rounding down (IEEE 754 6.3).
            bool negZero = (a == T.Zero && b == T.Zero && T.IsNegative(a) && T.IsNegative(b)) ||
                (Rc(mxcsr) == RoundDown && !(a == T.Zero && b == T.Zero && T.IsNegative(a) == T.IsNegative(b)));
            return negZero ? T.NegativeZero : T.Zero;
        }
        if (double.IsSubnormal(r))
        {
            r = Math.ScaleB(r, 128); // exact (a subnormal sum is exact); keeps the significand normal
            scale -= 128;
        }
        return RoundScaled<T>(r, Sign(e), scale, mxcsr, ref flags);
    }

    public static T Sub<T>(T a, T b, uint mxcsr, ref uint flags) where T : IBinaryFloatingPointIeee754<T>
    {
        if (NaNResult(a, b, ref flags, out T n))
        {
            return n;
        }
        return Add(a, -b, mxcsr, ref flags);
    }

    public static T Mul<T>(T a, T b, uint mxcsr, ref uint flags) where T : IBinaryFloatingPointIeee754<T>
    {
        if (NaNResult(a, b, ref flags, out T n))
        {
            return n;
        }
        a = Source(a, mxcsr, ref flags);
        b = Source(b, mxcsr, ref flags);
        if (T.IsInfinity(a) || T.IsInfinity(b))
        {
            if (a == T.Zero || b == T.Zero)
            {
                flags |= IE;
                return Indefinite<T>();
            }
            return a * b;
        }
        if (a == T.Zero || b == T.Zero)
        {
            return a * b;
        }
        // Operands scaled to [1,2): the product and its FMA residual cannot under/overflow.
        double ma = Normalize(ToD(a), out int ea), mb = Normalize(ToD(b), out int eb);
        double r = ma * mb;
        return RoundScaled<T>(r, Sign(Math.FusedMultiplyAdd(ma, mb, -r)), ea + eb, mxcsr, ref flags);
    }

    public static T Div<T>(T a, T b, uint mxcsr, ref uint flags) where T : IBinaryFloatingPointIeee754<T>
    {
        if (NaNResult(a, b, ref flags, out T n))
        {
            return n;
        }
        // A denormal dividend of a division by zero reports ZE only (the higher-priority
        // pre-computation exception of the element, as the host CPU does).
        uint de = 0;
        a = Source(a, mxcsr, ref de);
        b = Source(b, mxcsr, ref de);
        if ((a == T.Zero && b == T.Zero) || (T.IsInfinity(a) && T.IsInfinity(b)))
        {
            flags |= IE;
            return Indefinite<T>();
        }
        if (b == T.Zero && !T.IsInfinity(a))
        {
            flags |= ZE;
            return a / b;
        }
        flags |= de;
        if (T.IsInfinity(a) || T.IsInfinity(b) || a == T.Zero)
        {
            return a / b;
        }
        double ma = Normalize(ToD(a), out int ea), mb = Normalize(ToD(b), out int eb);
        double r = ma / mb;
        // ma - r*mb has the sign of (exact quotient - r) times the sign of mb.
        int err = Math.Sign(Math.FusedMultiplyAdd(-r, mb, ma)) * Math.Sign(mb);
        return RoundScaled<T>(r, err, ea - eb, mxcsr, ref flags);
    }

    public static T Sqrt<T>(T a, uint mxcsr, ref uint flags) where T : IBinaryFloatingPointIeee754<T>, IRootFunctions<T>
    {
        if (T.IsNaN(a))
        {
            if (IsSignaling(a))
            {
                flags |= IE;
            }
            return Quiet(a);
        }
        uint de = 0;
        a = Source(a, mxcsr, ref de);
        if (a == T.Zero)
        {
            flags |= de;
            return a; // sqrt(-0) = -0
        }
        if (T.IsNegative(a))
        {
            flags |= IE; // invalid takes priority over the denormal-operand flag
            return Indefinite<T>();
        }
        flags |= de;
        if (T.IsInfinity(a))
        {
            return a;
        }
        double d = ToD(a);
        int ea = Math.ILogB(d);
        int k = ea - (ea & 1); // even, so the square root scales exactly
        double m = Math.ScaleB(d, -k);
        double r = Math.Sqrt(m);
        return RoundScaled<T>(r, Math.Sign(Math.FusedMultiplyAdd(-r, r, m)), k / 2, mxcsr, ref flags);
    }

    /// <summary>MINxx/MAXxx (SDM Vol. 2B): any NaN or two zeros give the second (source) operand unchanged; IE for any NaN.</summary>
    public static T MinMax<T>(T a, T b, bool max, uint mxcsr, ref uint flags) where T : IBinaryFloatingPointIeee754<T>
    {
        if (T.IsNaN(a) || T.IsNaN(b))
        {
            flags |= IE;
            // The source comes back unchanged (even an SNaN), but a denormal one still reads as zero under DAZ.
            return T.IsSubnormal(b) && (mxcsr & Daz) != 0 ? (T.IsNegative(b) ? T.NegativeZero : T.Zero) : b;
        }
        a = Source(a, mxcsr, ref flags);
        b = Source(b, mxcsr, ref flags);
        return max ? (a > b ? a : b) : (a < b ? a : b);
    }

    /// <summary>CMPxx predicates 0-7 (SDM Vol. 2A CMPPS table); 1, 2, 5, 6 signal on QNaN too.</summary>
    public static bool Compare<T>(T a, T b, int predicate, uint mxcsr, ref uint flags) where T : IBinaryFloatingPointIeee754<T>
    {
        bool unordered = T.IsNaN(a) || T.IsNaN(b);
        if (unordered)
        {
            if (IsSignaling(a) || IsSignaling(b) || predicate is 1 or 2 or 5 or 6)
            {
                flags |= IE;
            }
        }
        else
        {
            a = Source(a, mxcsr, ref flags);
            b = Source(b, mxcsr, ref flags);
        }
        return predicate switch
        {
            0 => !unordered && a == b,
            1 => !unordered && a < b,
            2 => !unordered && a <= b,
            3 => unordered,
            4 => unordered || a != b,
            5 => unordered || !(a < b),
            6 => unordered || !(a <= b),
            _ => !unordered,
        };
    }

    /// <summary>
    /// COMIS*/UCOMIS*: returns ZF|PF|CF as RFLAGS bits (unordered 111, less 001, equal 100, greater 000).
    /// COMIS* signal IE on QNaN as well (SDM Vol. 2A COMISD).
    /// </summary>
    public static ulong CompareFlags<T>(T a, T b, bool signaling, uint mxcsr, ref uint flags) where T : IBinaryFloatingPointIeee754<T>
    {
        if (T.IsNaN(a) || T.IsNaN(b))
        {
            if (signaling || IsSignaling(a) || IsSignaling(b))
            {
                flags |= IE;
            }
            return RFlags.ZF | RFlags.PF | RFlags.CF;
        }
        a = Source(a, mxcsr, ref flags);
        b = Source(b, mxcsr, ref flags);
        return a < b ? RFlags.CF : a == b ? RFlags.ZF : 0;
    }

    /// <summary>Float/double to float/double (CVTSD2SS, CVTSS2SD, CVTPD2PS, CVTPS2PD).</summary>
    public static float ToSingle(double d, uint mxcsr, ref uint flags)
    {
        if (double.IsNaN(d))
        {
            if (IsSignaling(d))
            {
                flags |= IE;
            }
            // The quieted NaN keeps the top significand bits (SDM Vol. 1 4.8.3.5).
            ulong b = BitConverter.DoubleToUInt64Bits(d) | (1UL << 51);
            return BitConverter.UInt32BitsToSingle((uint)((b >> 32) & 0x8000_0000) | 0x7F80_0000 | (uint)((b >> 29) & 0x7F_FFFF));
        }
        d = Source(d, mxcsr, ref flags);
        if (double.IsInfinity(d) || d == 0)
        {
            return (float)d;
        }
        double m = Normalize(d, out int e);
        return RoundScaled<float>(m, 0, e, mxcsr, ref flags);
    }

    public static double ToDouble(float f, uint mxcsr, ref uint flags)
    {
        if (float.IsNaN(f))
        {
            if (IsSignaling(f))
            {
                flags |= IE;
            }
            uint b = BitConverter.SingleToUInt32Bits(f) | (1U << 22);
            return BitConverter.UInt64BitsToDouble(((ulong)(b & 0x8000_0000) << 32) | 0x7FF0_0000_0000_0000 | ((ulong)(b & 0x7F_FFFF) << 29));
        }
        return Source(f, mxcsr, ref flags);
    }

    /// <summary>Integer to float/double rounded by MXCSR.RC (CVTSI2SS/SD, CVTDQ2PS).</summary>
    public static T FromInt<T>(long v, uint mxcsr, ref uint flags) where T : IBinaryFloatingPointIeee754<T>
    {
        if (v == 0)
        {
            return T.Zero;
        }
        double r = v; // round to nearest double, then to T from the exact remainder's sign
        Int128 back = (Int128)r;
        Int128 exact = v;
        return RoundScaled<T>(r, exact > back ? 1 : exact < back ? -1 : 0, 0, mxcsr, ref flags);
    }

    /// <summary>
    /// Float/double to int32/int64 (CVT[T]S*2SI, CVT[T]P*2DQ): rounded by MXCSR.RC or truncated; NaN
    /// or out of range gives the integer indefinite (the minimum value) with IE (SDM Vol. 1 4.8.3.7).
    /// </summary>
    public static long ToInt<T>(T v, bool truncate, bool is64, uint mxcsr, ref uint flags) where T : IBinaryFloatingPointIeee754<T>
    {
        long indefinite = is64 ? long.MinValue : int.MinValue;
        if (T.IsNaN(v))
        {
            flags |= IE;
            return indefinite;
        }
        if (T.IsSubnormal(v) && (mxcsr & Daz) != 0)
        {
            return 0;
        }
        int rc = truncate ? RoundZero : Rc(mxcsr);
        T r = rc switch
        {
            RoundNearest => T.Round(v, MidpointRounding.ToEven),
            RoundDown => T.Floor(v),
            RoundUp => T.Ceiling(v),
            _ => T.Truncate(v),
        };
        T lo = is64 ? T.CreateTruncating(-9223372036854775808.0) : T.CreateTruncating(-2147483648.0);
        T hiExclusive = is64 ? T.CreateTruncating(9223372036854775808.0) : T.CreateTruncating(2147483648.0);
        if (!(r >= lo && r < hiExclusive))
        {
            flags |= IE;
            return indefinite;
        }
        if (r != v)
        {
            flags |= PE;
        }
        return long.CreateTruncating(r);
    }
}
