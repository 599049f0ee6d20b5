using System.Numerics;
using System.Runtime.CompilerServices;

namespace SharpVisor.Cpu.X86.Semantics;

/// <summary>
/// Scalar IEEE-754 operations with x86 SSE semantics (SDM Vol. 1 4.8, 11.5): MXCSR rounding control,
/// DAZ, FTZ, the six exception flags, the x86 NaN rules (first NaN operand wins, SNaN quieted, the
/// negative QNaN "real indefinite" for invalid operations).
/// </summary>
/// <remarks>
/// The host computes round-to-nearest results exactly (.NET float/double arithmetic). Whether a
/// result is inexact, and on which side of the exact value it lies, comes from error-free
/// transformations (TwoSum, and the FMA residual for multiply, divide and square root); a directed
/// rounding result is then the nearest result or its neighbour one ulp away. Known limit: when a
/// product or quotient is itself subnormal the FMA residual can underflow, so the directed-rounding
/// and UE/PE decisions for such results rely on the residual's sign only (a zero residual is taken
/// as exact).
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

    /// <summary>
    /// Turns the round-to-nearest result <paramref name="r"/> of finite operands, whose exact value
    /// lies on the side <paramref name="err"/> (-1, 0, +1) of it, into the MXCSR-rounded result with
    /// OE/UE/PE and FTZ applied.
    /// </summary>
    public static T Finish<T>(T r, int err, uint mxcsr, ref uint flags) where T : IBinaryFloatingPointIeee754<T>
    {
        int rc = Rc(mxcsr);
        if (T.IsInfinity(r))
        {
            // Overflow of the nearest result (SDM Vol. 1 4.9.1.4): the mode picks infinity or the largest finite value.
            flags |= OE | PE;
            bool neg = T.IsNegative(r);
            bool toInf = rc == RoundNearest || (rc == RoundUp && !neg) || (rc == RoundDown && neg);
            return toInf ? r : neg ? T.NegativeOne * MaxFinite<T>() : MaxFinite<T>();
        }
        if (err != 0)
        {
            flags |= PE;
            switch (rc)
            {
                case RoundDown when err < 0: r = T.BitDecrement(r); break;
                case RoundUp when err > 0: r = T.BitIncrement(r); break;
                case RoundZero when err < 0 && (T.IsPositive(r) && r != T.Zero): r = T.BitDecrement(r); break;
                case RoundZero when err > 0 && T.IsNegative(r) && r != T.Zero: r = T.BitIncrement(r); break;
            }
            if (T.IsInfinity(r))
            {
                flags |= OE;
                return r;
            }
            // Masked underflow: tiny and inexact (x86 detects tininess after rounding).
            if (r == T.Zero || T.IsSubnormal(r))
            {
                flags |= UE;
                if ((mxcsr & Ftz) != 0)
                {
                    return T.IsNegative(r) || (r == T.Zero && err < 0) ? T.NegativeZero : T.Zero;
                }
            }
        }
        else if (T.IsSubnormal(r) && (mxcsr & Ftz) != 0)
        {
            // FTZ flushes a tiny exact result too, signalling underflow and precision (SDM Vol. 1 10.2.3.3).
            flags |= UE | PE;
            return T.IsNegative(r) ? T.NegativeZero : T.Zero;
        }
        return r;
    }

    static T MaxFinite<T>() where T : IBinaryFloatingPointIeee754<T> => T.BitDecrement(T.PositiveInfinity);

    static int Sign<T>(T v) where T : IBinaryFloatingPointIeee754<T> => v > T.Zero ? 1 : v < T.Zero ? -1 : 0;

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
        T r = a + b;
        if (T.IsInfinity(r))
        {
            return Finish(r, 0, mxcsr, ref flags);
        }
        // TwoSum (Knuth): the exact rounding error of a + b.
        T bb = r - a;
        T e = (a - (r - bb)) + (b - bb);
        if (r == T.Zero && e == T.Zero && Rc(mxcsr) == RoundDown && !(a == T.Zero && b == T.Zero && T.IsNegative(a) == T.IsNegative(b)))
        {
            return T.NegativeZero; // an exact zero sum of opposite values is -0 when rounding down (IEEE 754 6.3)
        }
        return Finish(r, Sign(e), mxcsr, ref flags);
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
        T r = a * b;
        if (T.IsInfinity(r))
        {
            return Finish(r, 0, mxcsr, ref flags);
        }
        int err;
        if (r == T.Zero)
        {
            err = a == T.Zero || b == T.Zero ? 0 : T.IsNegative(a) != T.IsNegative(b) ? -1 : 1;
        }
        else
        {
            err = Sign(T.FusedMultiplyAdd(a, b, -r));
        }
        return Finish(r, err, mxcsr, ref flags);
    }

    public static T Div<T>(T a, T b, uint mxcsr, ref uint flags) where T : IBinaryFloatingPointIeee754<T>
    {
        if (NaNResult(a, b, ref flags, out T n))
        {
            return n;
        }
        a = Source(a, mxcsr, ref flags);
        b = Source(b, mxcsr, ref flags);
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
        if (T.IsInfinity(a) || T.IsInfinity(b) || a == T.Zero)
        {
            return a / b;
        }
        T r = a / b;
        if (T.IsInfinity(r))
        {
            return Finish(r, 0, mxcsr, ref flags);
        }
        int err;
        if (r == T.Zero)
        {
            err = T.IsNegative(a) != T.IsNegative(b) ? -1 : 1;
        }
        else
        {
            // a - r*b has the sign of (exact quotient - r) times the sign of b.
            err = Sign(T.FusedMultiplyAdd(-r, b, a)) * Sign(b);
        }
        return Finish(r, err, mxcsr, ref flags);
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
        a = Source(a, mxcsr, ref flags);
        if (a == T.Zero)
        {
            return a; // sqrt(-0) = -0
        }
        if (T.IsNegative(a))
        {
            flags |= IE;
            return Indefinite<T>();
        }
        if (T.IsInfinity(a))
        {
            return a;
        }
        T r = T.Sqrt(a);
        return Finish(r, Sign(T.FusedMultiplyAdd(-r, r, a)), mxcsr, ref flags);
    }

    /// <summary>MINxx/MAXxx (SDM Vol. 2B): any NaN or two zeros give the second (source) operand unchanged; IE for any NaN.</summary>
    public static T MinMax<T>(T a, T b, bool max, uint mxcsr, ref uint flags) where T : IBinaryFloatingPointIeee754<T>
    {
        if (T.IsNaN(a) || T.IsNaN(b))
        {
            flags |= IE;
            return b;
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
        float r = (float)d;
        if (float.IsInfinity(r))
        {
            return Finish(r, 0, mxcsr, ref flags);
        }
        return Finish(r, Math.Sign(d - r), mxcsr, ref flags);
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
        T r = T.CreateTruncating(v); // correctly rounded to nearest
        Int128 back = Int128.CreateTruncating(r);
        Int128 exact = v;
        return Finish(r, exact > back ? 1 : exact < back ? -1 : 0, mxcsr, ref flags);
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
