namespace SharpVisor.Cpu.X86.Fpu;

public static partial class X87Arith
{
    // ---------------------------------------------------------------- compare and classify

    /// <summary>
    /// FCOM (<paramref name="quiet"/> false) / FUCOM (true): C3 C2 C0 = 000 a &gt; b, 001 a &lt; b,
    /// 100 equal, 111 unordered (SDM Vol. 2 FCOM table 3-21). FCOM raises IE for any NaN, FUCOM only for
    /// an SNaN; both raise it for unsupported encodings. FCOMI/FUCOMI map C3→ZF, C2→PF, C0→CF.
    /// </summary>
    public static X87Status Compare(Float80 a, Float80 b, bool quiet)
    {
        X87Status flags = X87Status.None;
        Kind ka = Classify(a), kb = Classify(b);
        if (ka is Kind.QNaN or Kind.SNaN or Kind.Unsupported || kb is Kind.QNaN or Kind.SNaN or Kind.Unsupported)
        {
            if (!quiet || ka is Kind.SNaN or Kind.Unsupported || kb is Kind.SNaN or Kind.Unsupported)
                flags |= X87Status.Invalid;
            return flags | X87Status.C0 | X87Status.C2 | X87Status.C3;
        }
        if (a.IsDenormal || b.IsDenormal)
            flags |= X87Status.Denormal;
        int order = CompareOrdered(a, ka, b, kb);
        return flags | (order == 0 ? X87Status.C3 : order < 0 ? X87Status.C0 : X87Status.None);
    }

    /// <summary>FTST: compare with +0.0.</summary>
    public static X87Status Test(Float80 a) => Compare(a, Float80.Zero, quiet: false);

    private static int CompareOrdered(Float80 a, Kind ka, Float80 b, Kind kb)
    {
        if (ka == Kind.Zero && kb == Kind.Zero)
            return 0;
        bool na = a.IsNegative && ka != Kind.Zero;
        bool nb = b.IsNegative && kb != Kind.Zero;
        if (na != nb)
            return na ? -1 : 1;
        int magnitude = CompareMagnitude(a, ka, b, kb);
        return na ? -magnitude : magnitude;
    }

    private static int CompareMagnitude(Float80 a, Kind ka, Float80 b, Kind kb)
    {
        int ra = ka switch { Kind.Zero => 0, Kind.Infinity => 2, _ => 1 };
        int rb = kb switch { Kind.Zero => 0, Kind.Infinity => 2, _ => 1 };
        if (ra != rb || ra != 1)
            return ra.CompareTo(rb);
        ulong ma = Unpack(a, out int ea);
        ulong mb = Unpack(b, out int eb);
        return ea != eb ? ea.CompareTo(eb) : ma.CompareTo(mb);
    }

    /// <summary>
    /// FXAM class in C3 C2 C0 (SDM Vol. 2 FXAM table 3-43) and the sign in C1. "Empty" (C3 C0) depends on
    /// the tag word, which only the caller knows.
    /// </summary>
    public static X87Status Examine(Float80 a)
    {
        X87Status sign = a.IsNegative ? X87Status.C1 : X87Status.None;
        X87Status cls = Classify(a) switch
        {
            Kind.Unsupported => X87Status.None,
            Kind.QNaN or Kind.SNaN => X87Status.C0,
            Kind.Infinity => X87Status.C2 | X87Status.C0,
            Kind.Zero => X87Status.C3,
            _ => a.BiasedExponent == 0 ? X87Status.C3 | X87Status.C2 : X87Status.C2,
        };
        return sign | cls;
    }

    /// <summary>FXAM's answer for an empty register.</summary>
    public static X87Status ExamineEmpty(bool signBit) => X87Status.C3 | X87Status.C0 | (signBit ? X87Status.C1 : X87Status.None);

    /// <summary>FABS: clears the sign of any encoding, NaNs included; never an exception.</summary>
    public static Float80 Abs(Float80 a) => a.Abs();

    /// <summary>FCHS: flips the sign of any encoding; never an exception.</summary>
    public static Float80 ChangeSign(Float80 a) => a.Negate();

    // ---------------------------------------------------------------- FRNDINT, FSCALE, FXTRACT

    /// <summary>FRNDINT: round to an integral value per RC (PC does not apply).</summary>
    public static Float80 RoundToInteger(Float80 a, X87Control cw, out X87Status flags)
    {
        flags = X87Status.None;
        Kind ka = Classify(a);
        if (PropagateNaN(a, ka, out Float80 nan, ref flags))
            return nan;
        if (ka is Kind.Zero or Kind.Infinity)
            return a;
        if (a.IsDenormal)
            flags |= X87Status.Denormal;
        ulong m = Unpack(a, out int e);
        if (e >= 63)
            return a;
        RoundToIntegral(a.IsNegative, m, e, cw.Rounding, ref flags, out ulong magnitude);
        if (magnitude == 0)
            return SignedZero(a.IsNegative);
        int lz = System.Numerics.BitOperations.LeadingZeroCount(magnitude);
        return new Float80(a.IsNegative, Float80.ExponentBias + 63 - lz, magnitude << lz);
    }

    /// <summary>FSCALE: a·2^trunc(b), rounded per RC at 64 bits (SDM Vol. 2 FSCALE table 3-47).</summary>
    public static Float80 Scale(Float80 a, Float80 b, X87Control cw, out X87Status flags)
    {
        flags = X87Status.None;
        Kind ka = Classify(a), kb = Classify(b);
        if (PropagateNaN(a, ka, b, kb, out Float80 nan, ref flags))
            return nan;
        if (a.IsDenormal || b.IsDenormal)
            flags |= X87Status.Denormal;
        if (kb == Kind.Infinity)
        {
            if (b.IsNegative)
                return ka == Kind.Infinity ? InvalidResult(ref flags) : ka == Kind.Zero ? a : SignedZero(a.IsNegative);
            return ka == Kind.Zero ? InvalidResult(ref flags) : Infinity(a.IsNegative);
        }
        if (ka is Kind.Zero or Kind.Infinity)
            return a;
        int n = 0;
        if (kb == Kind.Finite)
        {
            ulong mb = Unpack(b, out int eb);
            // Beyond 2^16 any scale over- or underflows; clamping keeps the arithmetic in int range.
            int magnitude = eb < 0 ? 0 : eb > 20 ? 1 << 21 : (int)(mb >> (63 - eb));
            n = b.IsNegative ? -magnitude : magnitude;
        }
        ulong m = Unpack(a, out int e);
        return RoundPack64(a.IsNegative, e + n, m, 64, cw, ref flags);
    }

    /// <summary>
    /// FXTRACT: returns the significand (new ST0, exponent forced to 0 i.e. [1,2)) and the unbiased
    /// exponent as a value (new ST1). Zero → ZE with exponent -∞ (SDM Vol. 2 FXTRACT).
    /// </summary>
    public static Float80 Extract(Float80 a, out Float80 exponent, out X87Status flags)
    {
        flags = X87Status.None;
        Kind ka = Classify(a);
        if (PropagateNaN(a, ka, out Float80 nan, ref flags))
        {
            exponent = nan;
            return nan;
        }
        switch (ka)
        {
            case Kind.Zero:
                flags |= X87Status.ZeroDivide;
                exponent = Float80.NegativeInfinity;
                return a;
            case Kind.Infinity:
                exponent = Float80.PositiveInfinity;
                return a;
        }
        if (a.IsDenormal)
            flags |= X87Status.Denormal;
        ulong m = Unpack(a, out int e);
        exponent = FromInt64(e);
        return new Float80(a.IsNegative, Float80.ExponentBias, m);
    }

    // ---------------------------------------------------------------- FPREM, FPREM1

    /// <summary>
    /// How many quotient bits one partial FPREM/FPREM1 step develops when the exponent difference d is
    /// 64 or more (SDM Vol. 2 FPREM: "N is an implementation-dependent number between 32 and 63"):
    /// 32 + d mod 32, so that the leftover difference d - N is a multiple of 32. This is what the host
    /// (AMD) computes, and what QEMU cites from AMD's documentation.
    /// </summary>
    private static int PartialRemainderBits(int d) => 32 + (d & 31);

    /// <summary>
    /// FPREM (<paramref name="ieee"/> false: quotient truncated) or FPREM1 (true: quotient rounded to
    /// nearest even). a rem b, exact. When the exponent difference is 64 or more the reduction is
    /// partial and C2 is set; otherwise C2 is clear and C0, C3, C1 hold quotient bits 2, 1, 0.
    /// </summary>
    public static Float80 Remainder(Float80 a, Float80 b, bool ieee, out X87Status flags)
    {
        flags = X87Status.None;
        Kind ka = Classify(a), kb = Classify(b);
        if (PropagateNaN(a, ka, b, kb, out Float80 nan, ref flags))
            return nan;
        if (ka == Kind.Infinity || kb == Kind.Zero)
            return InvalidResult(ref flags);
        if (a.IsDenormal || b.IsDenormal)
            flags |= X87Status.Denormal;
        if (ka == Kind.Zero)
            return a;
        if (kb == Kind.Infinity) // a unchanged, except that a pseudo-denormal comes back normalised
            return a.IsPseudoDenormal ? new Float80(a.IsNegative, 1, a.Mantissa) : a;

        bool negative = a.IsNegative;
        ulong ma = Unpack(a, out int ea);
        ulong mb = Unpack(b, out int eb);
        int d = ea - eb;
        bool partial = d >= 64;
        if (partial)
        {
            // Reduce by b·2^(d-N) only: eb is raised so that d becomes N.
            int n = PartialRemainderBits(d);
            eb += d - n;
            d = n;
            flags |= X87Status.C2;
        }
        ulong q;
        ulong r; // remainder in units of 2^(eb-63)
        if (d < 0)
        {
            q = 0;
            if (ieee && d == -1 && ma > mb)
            {
                // |a| in (|b|/2, |b|): the nearest quotient is 1 and |a - b| = (2mb - ma)·2^(eb-64).
                q = 1;
                negative = !negative;
                return FinishRemainder(negative, (2 * (UInt128)mb - ma), eb - 1, q, partial, ref flags);
            }
            return FinishRemainder(negative, ma, ea, 0, partial, ref flags);
        }
        // ma·2^d ÷ mb: the high word ma >> (64 - d) is below 2^d ≤ mb, so the quotient fits 64 bits.
        q = DivRem128(d == 0 ? 0 : ma >> (64 - d), ma << d, mb, out r); // only q's bits 0-2 are reported
        if (ieee && !partial)
        {
            UInt128 twice = (UInt128)r << 1;
            if (twice > mb || (twice == mb && (q & 1) != 0))
            {
                q++;
                r = mb - r;
                negative = !negative;
            }
        }
        return FinishRemainder(negative, r, eb, q, partial, ref flags);
    }

    private static Float80 FinishRemainder(bool negative, UInt128 r, int exp, ulong q, bool partial, ref X87Status flags)
    {
        if (!partial)
        {
            if ((q & 4) != 0)
                flags |= X87Status.C0;
            if ((q & 2) != 0)
                flags |= X87Status.C3;
            if ((q & 1) != 0)
                flags |= X87Status.C1;
        }
        if (r == 0)
            return SignedZero(negative);
        // r·2^(exp-63) is exactly representable; normalise through the common packer (denormals included).
        int lz = LeadingZeros(r);
        X87Status ignored = X87Status.None;
        Float80 result = RoundPack(negative, exp + 64 - lz, r << lz, 64, X87Control.Default, ref ignored);
        flags |= ignored & X87Status.Underflow;
        return result;
    }
}
