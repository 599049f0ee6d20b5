namespace SharpVisor.Cpu.X86.Fpu;

/// <summary>
/// F2XM1, FYL2X, FYL2XP1, FPTAN, FSIN, FCOS, FSINCOS, FPATAN. The SDM does not specify these bit for
/// bit (Vol. 1 §8.3.10 only bounds the error); here each is evaluated with a 128-bit working precision
/// (<see cref="Wide"/>) and rounded once per RC, so results are the correctly rounded value of the
/// function except astronomically rarely. The trig instructions reduce their argument with the
/// x87's 66-bit π (SDM Vol. 1 §8.3.8), exactly as the host does: for large arguments the results are
/// those of x mod (π₆₆/2), not of the true sine. PC does not apply to any of them.
/// </summary>
public static partial class X87Arith
{
    private static readonly Wide InvLn2 = Wide.Constant(0, 0xb8aa3b295c17f0bb, 0xbe87fed0691d3e89);
    private static readonly Wide Ln2 = Wide.Constant(-1, 0xb17217f7d1cf79ab, 0xc9e3b39803f2f6af);
    private static readonly Wide Pi = Wide.Constant(1, 0xc90fdaa22168c234, 0xc4c6628b80dc1cd1);
    private static readonly Wide TwoOverPi = Wide.Constant(-1, 0xa2f9836e4e441529, 0xfc2757d1f534ddc1);

    /// <summary>π₆₆/2 = 0xC90FDAA22168C234C·2^-67: the 66-bit π of the x87 argument reduction, halved.</summary>
    private static readonly UInt128 HalfPi66 = new(0xC, 0x90FD_AA22_168C_234C);
    private const int HalfPi66FractionBits = 67;

    /// <summary>√2·2^63: significands above it are taken as f/2 with the exponent raised, keeping f near 1.</summary>
    private const ulong Sqrt2Significand = 0xB504_F333_F9DE_6484;

    /// <summary>FSIN/FCOS/FSINCOS/FPTAN leave ST0 unchanged and set C2 for |x| ≥ 2^63 (SDM Vol. 2 FSIN).</summary>
    private const int TrigMaxExponent = 62;

    private static Float80 RoundWide(Wide value, X87Control cw, ref X87Status flags)
    {
        if (value.IsZero)
            return SignedZero(value.Negative);
        // The low bit is forced so that the approximate value always counts as inexact: the exact
        // cases (zeros, ±1 …) are handled before getting here.
        return RoundPack(value.Negative, value.Exp, value.Sig | 1, 64, cw.WithPrecision64(), ref flags);
    }

    // ---------------------------------------------------------------- F2XM1

    /// <summary>F2XM1: 2^x - 1, defined for -1 ≤ x ≤ 1 (outside, the SDM leaves the result undefined).</summary>
    public static Float80 Exp2M1(Float80 x, X87Control cw, out X87Status flags)
    {
        flags = X87Status.None;
        Kind kx = Classify(x);
        if (PropagateNaN(x, kx, out Float80 nan, ref flags))
            return nan;
        if (kx == Kind.Zero)
            return x;
        if (kx == Kind.Infinity)
            return x.IsNegative ? new Float80(true, Float80.ExponentBias, Float80.IntegerBit) : x;
        if (x.IsDenormal)
            flags |= X87Status.Denormal;
        ulong m = Unpack(x, out int e);
        if (m == Float80.IntegerBit && e == 0)
            return x.IsNegative ? new Float80(true, Float80.ExponentBias - 1, Float80.IntegerBit) : x; // 2^-1 - 1, 2^1 - 1
        if (e >= 0)
            return RoundWide(Exp2M1OutOfDomain(x.IsNegative, e, m), cw, ref flags);
        return RoundWide(Expm1(Wide.FromParts(x.IsNegative, e, m) * Ln2), cw, ref flags);
    }

    /// <summary>
    /// |x| &gt; 1, where the SDM leaves F2XM1 undefined: a sensible 2^x - 1 = 2^n·2^f - 1 at bounded cost
    /// (the series alone would need ever more terms).
    /// </summary>
    private static Wide Exp2M1OutOfDomain(bool negative, int e, ulong m)
    {
        if (e >= 15)
            return negative ? Wide.One.Negate() + Wide.One.Scale(-40000) : Wide.One.Scale(40000); // → -1 or overflow
        long n = (long)(m >> (63 - e));
        Wide f = Wide.FromParts(false, e, m) - Wide.FromInt(n); // exact, in [0, 1)
        Wide power = (Expm1(f * Ln2) + Wide.One).Scale((int)n); // 2^|x|
        return negative ? power.Reciprocal() - Wide.One : power - Wide.One;
    }

    /// <summary>e^y - 1 = y + y²/2! + y³/3! + …, keeping full relative precision for small y (|y| &lt; 1).</summary>
    private static Wide Expm1(Wide y)
    {
        Wide sum = y, term = y;
        for (uint n = 2; n < 400; n++)
        {
            term = (term * y).DivideBy(n);
            if (term.NegligibleAgainst(sum))
            {
                sum = Wide.SeriesResult(sum, term);
                break;
            }
            sum += term;
        }
        return sum;
    }

    // ---------------------------------------------------------------- FYL2X, FYL2XP1

    /// <summary>FYL2X: y·log2(x) (x is ST0, y is ST1; the result replaces ST1 and ST0 is popped).</summary>
    public static Float80 YLog2X(Float80 x, Float80 y, X87Control cw, out X87Status flags)
    {
        flags = X87Status.None;
        Kind kx = Classify(x), ky = Classify(y);
        if (PropagateNaN(x, kx, y, ky, out Float80 nan, ref flags))
            return nan;
        if (x.IsNegative && kx != Kind.Zero)
            return InvalidResult(ref flags); // detected before DE, as on the host
        if (kx == Kind.Zero)
        {
            // log2(0) = -∞: ∞ with the opposite sign of y; 0·∞ is invalid. A denormal y raises no
            // DE here, only ZE (as the host shows: with DM unmasked the result is still written).
            if (ky == Kind.Zero)
                return InvalidResult(ref flags);
            if (ky != Kind.Infinity)
                flags |= X87Status.ZeroDivide;
            return Infinity(!y.IsNegative);
        }
        if (x.IsDenormal || y.IsDenormal)
            flags |= X87Status.Denormal;
        if (kx == Kind.Infinity)
            return ky == Kind.Zero ? InvalidResult(ref flags) : Infinity(y.IsNegative);
        ulong m = Unpack(x, out int e);
        bool isOne = m == Float80.IntegerBit && e == 0;
        bool logNegative = e < 0;
        if (ky == Kind.Infinity)
            return isOne ? InvalidResult(ref flags) : Infinity(y.IsNegative ^ logNegative);
        if (ky == Kind.Zero || isOne)
            return SignedZero(y.IsNegative ^ logNegative);
        if (m == Float80.IntegerBit)
        {
            // x = 2^e: the result y·e is a plain product, rounded like one; the host reports PE
            // even when it is exact.
            Float80 product = Mul(y, FromInt64(e), cw.WithPrecision64(), out X87Status mulFlags);
            flags |= mulFlags | X87Status.Precision;
            if (product.IsDenormal)
                flags |= X87Status.Underflow; // tiny and (as far as the host is concerned) inexact
            return product;
        }
        ulong my = Unpack(y, out int ey);
        return RoundWide(Wide.FromParts(y.IsNegative, ey, my) * Log2(m, e), cw, ref flags);
    }

    /// <summary>FYL2XP1: y·log2(x + 1), defined for |x| &lt; 1 - √2/2 (x is ST0, y is ST1).</summary>
    public static Float80 YLog2XPlus1(Float80 x, Float80 y, X87Control cw, out X87Status flags)
    {
        flags = X87Status.None;
        Kind kx = Classify(x), ky = Classify(y);
        if (PropagateNaN(x, kx, y, ky, out Float80 nan, ref flags))
            return nan;
        if (x.IsDenormal || y.IsDenormal)
            flags |= X87Status.Denormal;
        bool negative = x.IsNegative ^ y.IsNegative;
        if (kx == Kind.Zero)
            return ky == Kind.Infinity ? InvalidResult(ref flags) : SignedZero(negative);
        if (kx == Kind.Infinity)
            return x.IsNegative || ky == Kind.Zero ? InvalidResult(ref flags) : Infinity(y.IsNegative);
        ulong m = Unpack(x, out int e);
        if (x.IsNegative && e >= 0)
            return InvalidResult(ref flags); // 1 + x ≤ 0
        if (ky == Kind.Infinity)
            return Infinity(negative);
        if (ky == Kind.Zero)
            return SignedZero(negative);
        // ln(1 + x) = 2·atanh(x / (2 + x)) keeps full relative precision for small x. For |x| ≥ 1/2,
        // well outside the defined range, log2 of 1 + x is taken directly (bounded cost).
        Wide wx = Wide.FromParts(x.IsNegative, e, m);
        Wide log2;
        if (e >= -1)
        {
            Wide onePlus = Wide.One + wx;
            log2 = Log2((ulong)(onePlus.Sig >> 64), onePlus.Exp);
        }
        else
        {
            log2 = AtanhSeries(wx / (Wide.One.Scale(1) + wx)).Scale(1) * InvLn2;
        }
        ulong my = Unpack(y, out int ey);
        return RoundWide(Wide.FromParts(y.IsNegative, ey, my) * log2, cw, ref flags);
    }

    /// <summary>log2(m·2^(e-63)) for a normalised significand.</summary>
    private static Wide Log2(ulong m, int e)
    {
        Wide f = Wide.FromParts(false, 0, m);
        int k = e;
        if (m > Sqrt2Significand)
        {
            f = f.Scale(-1);
            k++;
        }
        Wide ln = AtanhSeries((f - Wide.One) / (f + Wide.One)).Scale(1);
        return Wide.FromInt(k) + ln * InvLn2;
    }

    /// <summary>atanh(t) = t + t³/3 + t⁵/5 + … for |t| well below 1.</summary>
    private static Wide AtanhSeries(Wide t)
    {
        Wide t2 = t * t, power = t, sum = t;
        for (uint n = 3; n < 2000; n += 2)
        {
            power *= t2;
            Wide term = power.DivideBy(n);
            if (term.NegligibleAgainst(sum))
                return Wide.SeriesResult(sum, term);
            sum += term;
        }
        return sum;
    }

    // ---------------------------------------------------------------- FSIN, FCOS, FSINCOS, FPTAN

    /// <summary>
    /// Common special cases of the trig instructions: NaN/unsupported propagation, ±∞ invalid, and
    /// |x| ≥ 2^63 out of range (C2 set, ST0 unchanged, nothing pushed). Returns true when handled.
    /// </summary>
    private static bool TrigSpecial(Float80 x, Kind kx, out Float80 result, ref X87Status flags)
    {
        if (PropagateNaN(x, kx, out result, ref flags))
            return true;
        if (kx == Kind.Infinity)
        {
            result = InvalidResult(ref flags);
            return true;
        }
        if (kx == Kind.Finite && x.BiasedExponent > Float80.ExponentBias + TrigMaxExponent)
        {
            flags |= X87Status.C2;
            result = x;
            return true;
        }
        if (x.IsDenormal)
            flags |= X87Status.Denormal;
        return false;
    }

    /// <summary>|x| = r + k·π₆₆/2 with |r| ≲ π/4, computed exactly; returns r and k mod 4.</summary>
    private static Wide Reduce(Float80 x, out int quadrant)
    {
        ulong m = Unpack(x, out int e);
        quadrant = 0;
        if (e < -1)
            return Wide.FromParts(false, e, m);
        // k = nearest integer to |x|/(π/2); the working precision decides it except within ~2^-60 of
        // a half-integer, where either choice gives the same function value.
        Wide q = Wide.FromParts(false, e, m) * TwoOverPi;
        ulong k = 0;
        if (q.Exp >= -1)
        {
            UInt128 scaled = q.Sig >> (126 - q.Exp); // integer part and one more bit
            k = (ulong)((scaled + 1) >> 1);
        }
        // |x| and k·π₆₆/2 in fixed point with 67 fraction bits. Both may exceed 2^128 but their
        // difference is below 2^67, so wrapping arithmetic gives it exactly.
        UInt128 xFixed = (UInt128)m << (e - 63 + HalfPi66FractionBits);
        var r = (Int128)(xFixed - (UInt128)k * HalfPi66);
        bool negative = r < 0;
        UInt128 magnitude = negative ? (UInt128)(-r) : (UInt128)r;
        quadrant = (int)(k & 3);
        return new Wide(negative, 127 - HalfPi66FractionBits, magnitude);
    }

    private static void SinCosSeries(Wide r, bool wantSin, bool wantCos, out Wide sin, out Wide cos)
    {
        Wide r2 = r * r;
        Wide term = r;
        sin = r;
        for (uint n = 2; wantSin && n < 200; n += 2)
        {
            term = (term * r2).DivideBy(n * (n + 1)).Negate();
            if (term.NegligibleAgainst(sin))
            {
                sin = Wide.SeriesResult(sin, term);
                break;
            }
            sin += term;
        }
        term = Wide.One;
        cos = Wide.One;
        for (uint n = 1; wantCos && n < 200; n += 2)
        {
            term = (term * r2).DivideBy(n * (n + 1)).Negate();
            if (term.NegligibleAgainst(cos))
            {
                cos = Wide.SeriesResult(cos, term);
                break;
            }
            cos += term;
        }
    }

    /// <summary>sin and/or cos of |x| after the π₆₆ reduction (what is not needed is not computed).</summary>
    private static void SinCosOfMagnitude(Float80 x, bool needSin, bool needCos, out Wide sin, out Wide cos)
    {
        Wide r = Reduce(x, out int quadrant);
        bool odd = (quadrant & 1) != 0;
        SinCosSeries(r, odd ? needCos : needSin, odd ? needSin : needCos, out Wide s, out Wide c);
        (sin, cos) = quadrant switch
        {
            0 => (s, c),
            1 => (c, s.Negate()),
            2 => (s.Negate(), c.Negate()),
            _ => (c.Negate(), s),
        };
    }

    /// <summary>FSIN. For |x| ≥ 2^63, C2 is set and x is returned unchanged.</summary>
    public static Float80 Sin(Float80 x, X87Control cw, out X87Status flags)
    {
        flags = X87Status.None;
        Kind kx = Classify(x);
        if (TrigSpecial(x, kx, out Float80 special, ref flags))
            return special;
        if (kx == Kind.Zero)
            return x;
        SinCosOfMagnitude(x, needSin: true, needCos: false, out Wide sin, out _);
        return RoundWide(x.IsNegative ? sin.Negate() : sin, cw, ref flags);
    }

    /// <summary>FCOS. For |x| ≥ 2^63, C2 is set and x is returned unchanged.</summary>
    public static Float80 Cos(Float80 x, X87Control cw, out X87Status flags)
    {
        flags = X87Status.None;
        Kind kx = Classify(x);
        if (TrigSpecial(x, kx, out Float80 special, ref flags))
            return special;
        if (kx == Kind.Zero)
            return Float80.One;
        SinCosOfMagnitude(x, needSin: false, needCos: true, out _, out Wide cos);
        return RoundWide(cos, cw, ref flags);
    }

    /// <summary>
    /// FSINCOS: returns the sine (which goes to ST1) and the cosine (the new ST0). Out of range: C2 set,
    /// sin = x and nothing is to be pushed. The flags are those of both roundings.
    /// </summary>
    public static Float80 SinCos(Float80 x, X87Control cw, out Float80 cos, out X87Status flags)
    {
        flags = X87Status.None;
        Kind kx = Classify(x);
        if (TrigSpecial(x, kx, out Float80 special, ref flags))
        {
            cos = special;
            return special;
        }
        if (kx == Kind.Zero)
        {
            cos = Float80.One;
            return x;
        }
        SinCosOfMagnitude(x, needSin: true, needCos: true, out Wide s, out Wide c);
        X87Status sinFlags = X87Status.None, cosFlags = X87Status.None;
        Float80 sin = RoundWide(x.IsNegative ? s.Negate() : s, cw, ref sinFlags);
        cos = RoundWide(c, cw, ref cosFlags);
        flags |= (sinFlags | cosFlags) & ~X87Status.C1 | (sinFlags & X87Status.C1);
        return sin;
    }

    /// <summary>
    /// FPTAN: tan(x) replaces ST0, then <paramref name="pushed"/> is pushed: +1.0, or for a NaN operand
    /// or an invalid operation the same NaN (as the host does). Out of range (C2): nothing is pushed.
    /// </summary>
    public static Float80 Tan(Float80 x, X87Control cw, out Float80 pushed, out X87Status flags)
    {
        flags = X87Status.None;
        pushed = Float80.One;
        Kind kx = Classify(x);
        if (TrigSpecial(x, kx, out Float80 special, ref flags))
        {
            if (special.IsNaN)
                pushed = special;
            return special;
        }
        if (kx == Kind.Zero)
            return x;
        Wide r = Reduce(x, out int quadrant);
        Wide tan;
        if ((quadrant & 1) == 0 && r.Exp < -40)
        {
            // tan r = r + r³/3 + 2r⁵/15 + …: for tiny r the quotient sin/cos would lose on which side
            // of r the value lies (it matters for directed rounding), the series keeps it.
            Wide cube = (r * r * r).DivideBy(3);
            tan = Wide.SeriesResult(r + cube, cube);
        }
        else
        {
            SinCosSeries(r, wantSin: true, wantCos: true, out Wide s, out Wide c);
            tan = (quadrant & 1) == 0 ? s / c : (c / s).Negate();
        }
        return RoundWide(x.IsNegative ? tan.Negate() : tan, cw, ref flags);
    }

    // ---------------------------------------------------------------- FPATAN

    /// <summary>FPATAN: atan2(y, x) with y = ST1 and x = ST0, in [-π, π] (SDM Vol. 2 FPATAN table 3-30).</summary>
    public static Float80 Atan2(Float80 y, Float80 x, X87Control cw, out X87Status flags)
    {
        flags = X87Status.None;
        Kind kx = Classify(x), ky = Classify(y);
        if (PropagateNaN(x, kx, y, ky, out Float80 nan, ref flags))
            return nan;
        if (x.IsDenormal || y.IsDenormal)
            flags |= X87Status.Denormal;
        bool negative = y.IsNegative;
        Wide halfPi = Pi.Scale(-1);
        if (ky == Kind.Zero)
            return x.IsNegative ? RoundWide(negative ? Pi.Negate() : Pi, cw, ref flags) : y;
        if (ky == Kind.Infinity)
        {
            Wide angle = kx != Kind.Infinity ? halfPi : x.IsNegative ? Pi.Scale(-2) * Wide.FromInt(3) : Pi.Scale(-2);
            return RoundWide(negative ? angle.Negate() : angle, cw, ref flags);
        }
        if (kx == Kind.Zero)
            return RoundWide(negative ? halfPi.Negate() : halfPi, cw, ref flags);
        if (kx == Kind.Infinity)
            return x.IsNegative ? RoundWide(negative ? Pi.Negate() : Pi, cw, ref flags) : SignedZero(negative);

        ulong mx = Unpack(x, out int ex);
        ulong my = Unpack(y, out int ey);
        Wide ax = Wide.FromParts(false, ex, mx), ay = Wide.FromParts(false, ey, my);
        Wide result;
        if (ey < ex || (ey == ex && my <= mx))
        {
            result = Atan(ay / ax);
            if (x.IsNegative)
                result = Pi - result;
        }
        else
        {
            Wide a = Atan(ax / ay);
            result = x.IsNegative ? halfPi + a : halfPi - a;
        }
        return RoundWide(negative ? result.Negate() : result, cw, ref flags);
    }

    /// <summary>atan(t) for 0 ≤ t ≤ 1: three argument halvings t ← t/(1 + √(1 + t²)), then the series.</summary>
    private static Wide Atan(Wide t)
    {
        int halvings = 0;
        while (halvings < 3 && t.Exp > -8)
        {
            t /= Wide.One + (Wide.One + t * t).Sqrt();
            halvings++;
        }
        Wide t2 = t * t, power = t, sum = t;
        for (uint n = 3; n < 400; n += 2)
        {
            power = (power * t2).Negate();
            Wide term = power.DivideBy(n);
            if (term.NegligibleAgainst(sum))
            {
                sum = Wide.SeriesResult(sum, term);
                break;
            }
            sum += term;
        }
        return sum.Scale(halvings);
    }
}
