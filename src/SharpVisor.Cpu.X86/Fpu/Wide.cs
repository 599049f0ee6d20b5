using System.Numerics;

namespace SharpVisor.Cpu.X86.Fpu;

/// <summary>
/// A working float with a 128-bit significand for the transcendental instructions: sign, unbounded
/// exponent, value = Sig·2^(Exp-127) with bit 127 of Sig set (Sig = 0 is zero). Operations truncate,
/// so each loses at most about 2^-126 relative; the series built on it carry some 120 good bits,
/// far beyond the 64 the x87 result keeps, which makes the final single rounding correct except in
/// cases astronomically close to a rounding boundary.
/// </summary>
internal readonly struct Wide
{
    public readonly UInt128 Sig;
    public readonly int Exp;
    public readonly bool Negative;

    private static readonly UInt128 TopBit = UInt128.One << 127;

    public Wide(bool negative, int exp, UInt128 sig)
    {
        if (sig == 0)
        {
            Sig = 0;
            Exp = int.MinValue / 2;
            Negative = negative;
            return;
        }
        int lz = (int)UInt128.LeadingZeroCount(sig);
        Sig = sig << lz;
        Exp = exp - lz;
        Negative = negative;
    }

    public bool IsZero => Sig == 0;

    public static Wide Zero => default;

    public static Wide One => new(false, 0, TopBit);

    /// <summary>sig·2^(exp-63) with bit 63 of sig set, i.e. an unpacked Float80.</summary>
    public static Wide FromParts(bool negative, int exp, ulong sig) => new(negative, exp, (UInt128)sig << 64);

    public static Wide FromInt(long value)
    {
        bool negative = value < 0;
        ulong magnitude = negative ? (ulong)-value : (ulong)value;
        return new Wide(negative, 127, magnitude);
    }

    /// <summary>A constant given as its 128-bit significand (hi:lo) and exponent.</summary>
    public static Wide Constant(int exp, ulong hi, ulong lo) => new(false, exp, new UInt128(hi, lo));

    private static Wide FromDouble(double value)
    {
        ulong bits = BitConverter.DoubleToUInt64Bits(value);
        int e = (int)(bits >> 52) & 0x7FF;
        ulong m = (bits & 0xF_FFFF_FFFF_FFFF) | (1UL << 52);
        return new Wide(value < 0, e - 1023 - 52 + 127, m);
    }

    public Wide Negate() => new(!Negative, Exp, Sig);

    public Wide Abs() => new(false, Exp, Sig);

    public Wide Scale(int n) => IsZero ? this : new(Negative, Exp + n, Sig);

    /// <summary>The top 53 bits as a double in [1, 2).</summary>
    private double TopAsDouble() => (double)(ulong)(Sig >> 64) / 9223372036854775808.0;

    public static Wide operator *(Wide a, Wide b)
    {
        if (a.IsZero || b.IsZero)
            return new Wide(a.Negative ^ b.Negative, 0, 0);
        ulong a1 = (ulong)(a.Sig >> 64), a0 = (ulong)a.Sig;
        ulong b1 = (ulong)(b.Sig >> 64), b0 = (ulong)b.Sig;
        UInt128 p11 = (UInt128)a1 * b1, p10 = (UInt128)a1 * b0, p01 = (UInt128)a0 * b1, p00 = (UInt128)a0 * b0;
        UInt128 mid = (UInt128)(ulong)p10 + (ulong)p01 + (ulong)(p00 >> 64);
        UInt128 hi = p11 + (p10 >> 64) + (p01 >> 64) + (mid >> 64);
        // hi is in [2^126, 2^128): one more bit from below keeps full precision when it is normalised.
        if ((hi >> 127) == 0)
            return new Wide(a.Negative ^ b.Negative, a.Exp + b.Exp, (hi << 1) | (UInt128)((ulong)mid >> 63));
        return new Wide(a.Negative ^ b.Negative, a.Exp + b.Exp + 1, hi);
    }

    public static Wide operator +(Wide a, Wide b)
    {
        if (b.IsZero)
            return a;
        if (a.IsZero)
            return b;
        if (a.Exp < b.Exp || (a.Exp == b.Exp && a.Sig < b.Sig))
            (a, b) = (b, a);
        // Bits of b shifted out still decide on which side of a representable value the sum lies:
        // the result is truncated toward zero and marked inexact in the low bit, never left equal
        // to a when b is not zero (cos x = 1 - x²/2 for tiny x must stay below 1).
        int d = a.Exp - b.Exp;
        UInt128 bs = d >= 128 ? 0 : b.Sig >> d;
        bool lost = d >= 128 || (d > 0 && (b.Sig << (128 - d)) != 0);
        if (a.Negative == b.Negative)
        {
            UInt128 sum = a.Sig + bs;
            if (sum < a.Sig)
                return new Wide(a.Negative, a.Exp + 1, (sum >> 1) | TopBit | (lost || (sum & 1) != 0 ? UInt128.One : 0));
            return new Wide(a.Negative, a.Exp, sum | (lost ? UInt128.One : 0));
        }
        UInt128 difference = a.Sig - bs - (lost ? UInt128.One : 0);
        return new Wide(a.Negative, a.Exp, difference);
    }

    public static Wide operator -(Wide a, Wide b) => a + b.Negate();

    public static Wide operator /(Wide a, Wide b) => a * b.Reciprocal();

    /// <summary>
    /// Division by a positive integer below 2^32. The series divide by small integers in every term;
    /// multiplying by a tabulated reciprocal is about twice as fast as the five hardware divisions of
    /// the long division, at the same ~2^-126 accuracy.
    /// </summary>
    public Wide DivideBy(uint n) => n < SmallReciprocals.Count ? this * SmallReciprocals.Table[n] : LongDivideBy(n);

    /// <summary>1/n for 1 ≤ n &lt; Count (index 0 unused), built once on first use.</summary>
    private static class SmallReciprocals
    {
        public const int Count = 1400; // covers the sin/cos series' n(n+1) denominators
        public static readonly Wide[] Table = Build();

        private static Wide[] Build()
        {
            var table = new Wide[Count];
            for (int n = 1; n < Count; n++)
                table[n] = FromInt(n).Reciprocal();
            return table;
        }
    }

    /// <summary>Schoolbook long division by n &lt; 2^32 in 32-bit digits, keeping all 128 bits.</summary>
    private Wide LongDivideBy(uint n)
    {
        ulong hi = (ulong)(Sig >> 64), lo = (ulong)Sig;
        ulong d3 = (hi >> 32) / n, rem = (hi >> 32) - d3 * n;
        ulong cur = (rem << 32) | (uint)hi;
        ulong d2 = cur / n;
        rem = cur - d2 * n;
        cur = (rem << 32) | (lo >> 32);
        ulong d1 = cur / n;
        rem = cur - d1 * n;
        cur = (rem << 32) | (uint)lo;
        ulong d0 = cur / n;
        rem = cur - d0 * n;
        ulong extra = (rem << 32) / n; // 32 more quotient bits to refill after normalising
        var q = new UInt128((d3 << 32) | d2, (d1 << 32) | d0);
        int lz = (int)UInt128.LeadingZeroCount(q); // at most 32 since Sig ≥ 2^127 and n < 2^32
        if (lz != 0)
            q = (q << lz) | (extra >> (32 - lz));
        return new Wide(Negative, Exp - lz, q);
    }

    /// <summary>1/x by Newton's iteration r ← r(2 - xr) from a double estimate (53 → 106 → 128 bits).</summary>
    public Wide Reciprocal()
    {
        var x = new Wide(false, 0, Sig); // in [1, 2)
        Wide r = FromDouble(1.0 / TopAsDouble());
        Wide two = One.Scale(1);
        for (int i = 0; i < 3; i++)
            r *= two - x * r;
        return new Wide(Negative, r.Exp - Exp, r.Sig);
    }

    /// <summary>√x for x ≥ 0 via the inverse square root z ← z(3 - xz²)/2, then x·z.</summary>
    public Wide Sqrt()
    {
        if (IsZero)
            return this;
        // x = f·2^(2h) with f in [1, 4).
        int half = Exp >> 1;
        var f = new Wide(false, Exp - 2 * half, Sig);
        Wide z = FromDouble(1.0 / Math.Sqrt(f.TopAsDouble() * (f.Exp == 1 ? 2 : 1)));
        Wide three = FromInt(3);
        for (int i = 0; i < 3; i++)
            z = (z * (three - f * z * z)).Scale(-1);
        Wide root = f * z;
        return new Wide(false, root.Exp + half, root.Sig);
    }

    /// <summary>
    /// The sum of a series that stopped at <paramref name="firstDropped"/>: nudged by one unit of its
    /// last place towards the dropped tail, so that a sum whose low bits happen to be zero (sin x = x
    /// for tiny x, cos x = 1) still rounds on the correct side of the representable value.
    /// </summary>
    public static Wide SeriesResult(Wide sum, Wide firstDropped)
    {
        if (firstDropped.IsZero || sum.IsZero)
            return sum;
        if (firstDropped.Negative == sum.Negative)
            return sum.Sig == UInt128.MaxValue ? new Wide(sum.Negative, sum.Exp + 1, TopBit) : new Wide(sum.Negative, sum.Exp, sum.Sig + 1);
        return sum.Sig == TopBit ? new Wide(sum.Negative, sum.Exp - 1, UInt128.MaxValue) : new Wide(sum.Negative, sum.Exp, sum.Sig - 1);
    }

    /// <summary>Whether a term of this size no longer matters next to a sum of the given exponent.</summary>
    public bool NegligibleAgainst(Wide sum) => IsZero || Exp < sum.Exp - 130;

    public override string ToString() => IsZero ? "0" : $"{(Negative ? "-" : "")}{(double)(Sig >> 64) / 9223372036854775808.0}*2^{Exp}";
}
