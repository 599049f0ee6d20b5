using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics.X86;

namespace SharpVisor.Cpu.X86.Fpu;

/// <summary>
/// Bit-exact x87 arithmetic (Intel SDM Vol. 1 chapters 4 and 8), checked against a real x87 by the
/// differential tests. Every operation takes the control word (RC; PC only for add/sub/mul/div/sqrt,
/// as on hardware) and returns the result plus the exception flags and condition codes it raises
/// (<see cref="X87Status"/>, in FSW bit positions), with the masked responses applied.
/// <para>How an instruction handler uses a result (SDM §8.5):</para>
/// <list type="bullet">
/// <item>OR the exception bits into FSW; copy the condition codes the instruction defines (C1 after an
/// inexact result means "rounded up"; C1 is 0 otherwise).</item>
/// <item>IE, DE or ZE set and unmasked in FCW: leave the destination (and the stack) unchanged, then #MF.</item>
/// <item>OE/UE unmasked with a register destination: store the returned value, which already carries
/// the 2^∓24576 rebias of §8.5.3-8.5.4. With a memory destination (FST/FIST/FBSTP): store nothing.</item>
/// <item>Memory operands of arithmetic and compares: widen with Float32Operand/Float64Operand (or
/// FromInt16/32), operate, then <see cref="CombineOperandFlags"/>.</item>
/// </list>
/// Stack overflow/underflow (IE with SF, C1) and tags are the handler's business. Nothing here allocates.
/// </summary>
public static partial class X87Arith
{
    // Unbiased exponent limits of the double-extended format; the denormal lsb is 2^(EMin-63).
    private const int EMin = -16382;
    private const int EMax = 16383;
    private const int MinLsb = EMin - 63;
    // SDM §8.5.3/§8.5.4: unmasked overflow/underflow into a register rebias the exponent by this much.
    private const int BiasAdjust = 24576;

    private enum Kind : byte { Zero, Finite, Infinity, QNaN, SNaN, Unsupported }

    private static Kind Classify(Float80 v)
    {
        int e = v.BiasedExponent;
        ulong m = v.Mantissa;
        if (e == 0)
            return m == 0 ? Kind.Zero : Kind.Finite;
        if ((m & Float80.IntegerBit) == 0)
            return Kind.Unsupported; // unnormal, pseudo-infinity, pseudo-NaN
        if (e == Float80.MaxBiasedExponent)
        {
            if ((m << 1) == 0)
                return Kind.Infinity;
            return (m & Float80.QuietBit) != 0 ? Kind.QNaN : Kind.SNaN;
        }
        return Kind.Finite;
    }

    /// <summary>
    /// A finite non-zero value as sig·2^(exp-63) with bit 63 of sig set. Exponent field 0 (denormals
    /// and pseudo-denormals) has the weight of field 1 (SDM §8.2.2: pseudo-denormals are read as denormals).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong Unpack(Float80 v, out int exp)
    {
        int e = v.BiasedExponent;
        ulong m = v.Mantissa;
        if (e == 0)
        {
            int lz = BitOperations.LeadingZeroCount(m);
            exp = 1 - Float80.ExponentBias - lz;
            return m << lz;
        }
        exp = e - Float80.ExponentBias;
        return m;
    }

    private static Float80 Quiet(Float80 nan) => new(nan.Mantissa | Float80.QuietBit, nan.SignExponent);

    private static Float80 SignedZero(bool negative) => negative ? Float80.NegativeZero : Float80.Zero;

    private static Float80 Infinity(bool negative) => negative ? Float80.NegativeInfinity : Float80.PositiveInfinity;

    /// <summary>
    /// NaN operands of a two-operand instruction (SDM Vol. 1 table 4-7): an SNaN raises IE and is
    /// quieted; with two NaNs the one with the larger significand wins (on a tie the positive one);
    /// a QNaN wins over an SNaN. Unsupported encodings give IE and the indefinite.
    /// Returns false when neither operand is a NaN or unsupported.
    /// </summary>
    private static bool PropagateNaN(Float80 a, Kind ka, Float80 b, Kind kb, out Float80 result, ref X87Status flags)
    {
        if (ka == Kind.Unsupported || kb == Kind.Unsupported)
        {
            flags |= X87Status.Invalid;
            result = Float80.Indefinite;
            return true;
        }
        bool aNaN = ka is Kind.QNaN or Kind.SNaN;
        bool bNaN = kb is Kind.QNaN or Kind.SNaN;
        if (!aNaN && !bNaN)
        {
            result = default;
            return false;
        }
        if (ka == Kind.SNaN || kb == Kind.SNaN)
            flags |= X87Status.Invalid;
        if (aNaN && bNaN)
        {
            if (ka == Kind.QNaN && kb == Kind.SNaN)
                result = a;
            else if (kb == Kind.QNaN && ka == Kind.SNaN)
                result = b;
            else
            {
                ulong sa = a.Mantissa << 1, sb = b.Mantissa << 1;
                result = sa > sb ? a : sb > sa ? b : (a.SignExponent <= b.SignExponent ? a : b);
            }
        }
        else
        {
            result = aNaN ? a : b;
        }
        result = Quiet(result);
        return true;
    }

    private static Float80 InvalidResult(ref X87Status flags)
    {
        flags |= X87Status.Invalid;
        return Float80.Indefinite;
    }

    // ---------------------------------------------------------------- rounding

    /// <summary>Which target format a rounding is for: the precision and the exponent range.</summary>
    private readonly struct Format
    {
        public readonly int Precision;
        public readonly int EMin;
        public readonly int EMax;

        public Format(int precision, int eMin, int eMax)
        {
            Precision = precision;
            EMin = eMin;
            EMax = eMax;
        }

        /// <summary>
        /// The denormal lsb exponent. Under PC the register format denormalises at the reduced
        /// precision too (a tiny PC=24 result keeps 24 bits counted from 2^EMin), as the host shows.
        /// </summary>
        public int MinLsb => EMin - Precision + 1;
    }

    private static readonly Format Single = new(24, -126, 127);
    private static readonly Format Double = new(53, -1022, 1023);

    private static Format Extended(int precision) => new(precision, EMin, EMax);

    private enum Rounded : byte { Finite, Infinity, MaxFinite }

    /// <summary>
    /// Rounds sig·2^(exp-127) (bit 127 of sig set; anything below bit 0 already jammed into bit 0)
    /// to the format per RC, reporting PE/C1, UE and OE. On return a finite result is
    /// m·2^lsbExp; exp is the exponent of the rounded value's leading bit.
    /// Tininess is detected after rounding (SDM Vol. 1 §4.9.1.5: "the result of rounding with
    /// unbounded exponent ... is non-zero and tiny"), which is what the differential tests confirm.
    /// </summary>
    private static Rounded Round(bool negative, ref int exp, UInt128 sig, Format format, X87Control cw,
        bool rebiasUnmasked, ref X87Status flags, out ulong m, out int lsbExp)
    {
        X87Rounding rc = cw.Rounding;
        int precision = format.Precision;
        bool tiny = exp < format.EMin;
        if (tiny && exp == format.EMin - 1 && RoundsUpToNextBinade(negative, sig, precision, rc))
            tiny = false; // rounding with unbounded exponent reaches the smallest normal
        if (tiny && rebiasUnmasked && !cw.IsMasked(X87Status.Underflow) && exp + BiasAdjust < format.EMin)
        {
            // Too tiny even for the rebias (FSCALE): the host delivers a signed zero whatever RC says.
            flags |= X87Status.Underflow | X87Status.Precision;
            m = 0;
            lsbExp = format.MinLsb;
            return Rounded.Finite;
        }
        if (tiny && rebiasUnmasked && !cw.IsMasked(X87Status.Underflow))
        {
            // SDM §8.5.4: unmasked underflow delivers the rounded result scaled by 2^24576 (when
            // that is in range; beyond it, as FSCALE can produce, the masked response is delivered).
            flags |= X87Status.Underflow;
            exp += BiasAdjust;
            return Round(negative, ref exp, sig, format, cw, rebiasUnmasked, ref flags, out m, out lsbExp);
        }

        lsbExp = Math.Max(exp - precision + 1, format.MinLsb);
        int keep = exp - lsbExp + 1; // significant bits kept, <= precision (<= 64)
        // Plain 64-bit halves: the kept bits all lie in the high half, and this is the hot path.
        ulong hi = (ulong)(sig >> 64), lo = (ulong)sig;
        bool roundBit, sticky;
        if (keep <= 0)
        {
            m = 0;
            roundBit = keep == 0;
            sticky = keep < 0 || (hi << 1) != 0 || lo != 0;
        }
        else if (keep == 64)
        {
            m = hi;
            roundBit = (lo >> 63) != 0;
            sticky = (lo << 1) != 0;
        }
        else
        {
            int drop = 64 - keep; // 1..63 bits of the high half go
            m = hi >> drop;
            roundBit = ((hi >> (drop - 1)) & 1) != 0;
            sticky = (hi & ((1UL << (drop - 1)) - 1)) != 0 || lo != 0;
        }

        bool inexact = roundBit | sticky;
        if (inexact)
        {
            flags |= X87Status.Precision;
            if (tiny)
                flags |= X87Status.Underflow;
            bool up = rc switch
            {
                X87Rounding.NearestEven => roundBit && (sticky || (m & 1) != 0),
                X87Rounding.Up => !negative,
                X87Rounding.Down => negative,
                _ => false,
            };
            if (up)
            {
                flags |= X87Status.C1;
                m++;
                if (m == 0)
                {
                    // 64 kept bits carried out: 2^64·2^lsbExp.
                    m = Float80.IntegerBit;
                    lsbExp++;
                }
            }
        }
        else if (tiny && !cw.IsMasked(X87Status.Underflow))
        {
            flags |= X87Status.Underflow; // unmasked underflow is signalled even for exact results
        }

        if (m != 0)
            exp = BitOperations.Log2(m) + lsbExp;

        if (m != 0 && exp > format.EMax)
        {
            flags |= X87Status.Overflow;
            // Beyond the rebias range (possible with FSCALE) the masked response is delivered.
            if (rebiasUnmasked && !cw.IsMasked(X87Status.Overflow) && exp - BiasAdjust <= format.EMax)
            {
                // SDM §8.5.3: unmasked overflow delivers the rounded result scaled by 2^-24576.
                exp -= BiasAdjust;
                lsbExp -= BiasAdjust;
                return Rounded.Finite;
            }
            flags |= X87Status.Precision;
            // Too large even for the rebias (FSCALE): the host delivers infinity whatever RC says.
            bool beyondRebias = rebiasUnmasked && !cw.IsMasked(X87Status.Overflow);
            bool toInfinity = beyondRebias || rc switch
            {
                X87Rounding.NearestEven => true,
                X87Rounding.Up => !negative,
                X87Rounding.Down => negative,
                _ => false,
            };
            if (toInfinity)
            {
                flags |= X87Status.C1;
                return Rounded.Infinity;
            }
            flags &= ~X87Status.C1;
            return Rounded.MaxFinite;
        }
        return Rounded.Finite;
    }

    /// <summary>Whether rounding sig to precision bits (unbounded exponent) carries into the next power of two.</summary>
    private static bool RoundsUpToNextBinade(bool negative, UInt128 sig, int precision, X87Rounding rc)
    {
        ulong hi = (ulong)(sig >> 64), lo = (ulong)sig;
        bool roundBit, sticky;
        if (precision == 64)
        {
            if (hi != ulong.MaxValue)
                return false;
            roundBit = (lo >> 63) != 0;
            sticky = (lo << 1) != 0;
        }
        else
        {
            int drop = 64 - precision;
            if (hi >> drop != (1UL << precision) - 1)
                return false;
            roundBit = ((hi >> (drop - 1)) & 1) != 0;
            sticky = (hi & ((1UL << (drop - 1)) - 1)) != 0 || lo != 0;
        }
        return rc switch
        {
            X87Rounding.NearestEven => roundBit,
            X87Rounding.Up => !negative && (roundBit || sticky),
            X87Rounding.Down => negative && (roundBit || sticky),
            _ => false,
        };
    }

    /// <summary>Rounds and packs into the double-extended register format.</summary>
    private static Float80 RoundPack(bool negative, int exp, UInt128 sig, int precision, X87Control cw, ref X87Status flags)
    {
        Rounded r = Round(negative, ref exp, sig, Extended(precision), cw, rebiasUnmasked: true, ref flags, out ulong m, out int lsbExp);
        if (r == Rounded.Infinity)
            return Infinity(negative);
        if (r == Rounded.MaxFinite)
            return new Float80(negative, 0x7FFE, ulong.MaxValue << (64 - precision));
        if (m == 0)
            return SignedZero(negative);
        if (exp >= EMin)
        {
            int lz = BitOperations.LeadingZeroCount(m);
            return new Float80(negative, exp + Float80.ExponentBias, m << lz);
        }
        // Denormal: m·2^lsbExp with the exponent field 0 (whose lsb weighs 2^MinLsb).
        return new Float80(negative, 0, m << (lsbExp - MinLsb));
    }

    /// <summary>Rounds a finite non-zero sig·2^(exp-63) (bit 63 set) to the register format.</summary>
    private static Float80 RoundPack64(bool negative, int exp, ulong sig, int precision, X87Control cw, ref X87Status flags)
        => RoundPack(negative, exp, (UInt128)sig << 64, precision, cw, ref flags);

    /// <summary>Rounds a finite non-zero register value to another precision (e.g. x + 0 under PC).</summary>
    private static Float80 RoundPack64(bool negative, out int eb, Float80 value, int precision, X87Control cw, ref X87Status flags)
    {
        ulong m = Unpack(value, out eb);
        return RoundPack64(negative, eb, m, precision, cw, ref flags);
    }

    /// <summary>NaN and unsupported handling for one operand: SNaN → IE and quieted, unsupported → IE and indefinite.</summary>
    private static bool PropagateNaN(Float80 a, Kind ka, out Float80 result, ref X87Status flags)
    {
        switch (ka)
        {
            case Kind.Unsupported:
                result = InvalidResult(ref flags);
                return true;
            case Kind.SNaN:
                flags |= X87Status.Invalid;
                result = Quiet(a);
                return true;
            case Kind.QNaN:
                result = a;
                return true;
            default:
                result = default;
                return false;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static UInt128 ShiftRightJam(UInt128 x, int n)
    {
        if (n <= 0)
            return x;
        if (n >= 128)
            return x != 0 ? UInt128.One : UInt128.Zero;
        UInt128 r = x >> n;
        if ((r << n) != x)
            r |= 1;
        return r;
    }

    private static int LeadingZeros(UInt128 x) => (int)UInt128.LeadingZeroCount(x);

    // ---------------------------------------------------------------- add, sub, mul, div, sqrt

    /// <summary>FADD: a + b rounded to PC/RC.</summary>
    public static Float80 Add(Float80 a, Float80 b, X87Control cw, out X87Status flags) => AddCore(a, b, false, cw, out flags);

    /// <summary>FSUB: a - b rounded to PC/RC (FSUBR is Sub with the operands swapped).</summary>
    public static Float80 Sub(Float80 a, Float80 b, X87Control cw, out X87Status flags) => AddCore(a, b, true, cw, out flags);

    private static Float80 AddCore(Float80 a, Float80 b, bool subtract, X87Control cw, out X87Status flags)
    {
        flags = X87Status.None;
        Kind ka = Classify(a), kb = Classify(b);
        if (PropagateNaN(a, ka, b, kb, out Float80 nan, ref flags))
            return nan;
        if (a.IsDenormal || b.IsDenormal)
            flags |= X87Status.Denormal;
        bool sa = a.IsNegative, sb = b.IsNegative ^ subtract;
        if (ka == Kind.Infinity || kb == Kind.Infinity)
        {
            if (ka == Kind.Infinity && kb == Kind.Infinity && sa != sb)
                return InvalidResult(ref flags);
            return Infinity(ka == Kind.Infinity ? sa : sb);
        }
        bool roundDown = cw.Rounding == X87Rounding.Down;
        if (ka == Kind.Zero && kb == Kind.Zero)
            return SignedZero(sa == sb ? sa : roundDown);
        int precision = cw.PrecisionBits;
        if (ka == Kind.Zero)
            return RoundPack64(sb, eb: out _, b, precision, cw, ref flags);
        if (kb == Kind.Zero)
            return RoundPack64(sa, eb: out _, a, precision, cw, ref flags);

        ulong ma = Unpack(a, out int ea);
        ulong mb = Unpack(b, out int eb);
        if (ea < eb || (ea == eb && ma < mb))
        {
            (ma, mb) = (mb, ma);
            (ea, eb) = (eb, ea);
            (sa, sb) = (sb, sa);
        }
        // a's leading bit at bit 126 leaves a carry bit above and 63 guard bits below.
        UInt128 x = (UInt128)ma << 63;
        UInt128 y = ShiftRightJam((UInt128)mb << 63, ea - eb);
        UInt128 s;
        if (sa == sb)
        {
            s = x + y;
        }
        else
        {
            s = x - y;
            if (s == 0)
                return SignedZero(roundDown); // IEEE 754 §6.3: an exact x - x is +0, -0 when rounding down
        }
        int lz = LeadingZeros(s);
        return RoundPack(sa, ea + 1 - lz, s << lz, precision, cw, ref flags);
    }

    /// <summary>FMUL: a × b rounded to PC/RC.</summary>
    public static Float80 Mul(Float80 a, Float80 b, X87Control cw, out X87Status flags)
    {
        flags = X87Status.None;
        Kind ka = Classify(a), kb = Classify(b);
        if (PropagateNaN(a, ka, b, kb, out Float80 nan, ref flags))
            return nan;
        if (a.IsDenormal || b.IsDenormal)
            flags |= X87Status.Denormal;
        bool negative = a.IsNegative ^ b.IsNegative;
        if (ka == Kind.Infinity || kb == Kind.Infinity)
        {
            if (ka == Kind.Zero || kb == Kind.Zero)
                return InvalidResult(ref flags);
            return Infinity(negative);
        }
        if (ka == Kind.Zero || kb == Kind.Zero)
            return SignedZero(negative);
        ulong ma = Unpack(a, out int ea);
        ulong mb = Unpack(b, out int eb);
        ulong hi = Math.BigMul(ma, mb, out ulong lo);
        UInt128 p = new(hi, lo);
        int lz = LeadingZeros(p);
        return RoundPack(negative, ea + eb + 1 - lz, p << lz, cw.PrecisionBits, cw, ref flags);
    }

    /// <summary>FDIV: a ÷ b rounded to PC/RC (FDIVR is Div with the operands swapped).</summary>
    public static Float80 Div(Float80 a, Float80 b, X87Control cw, out X87Status flags)
    {
        flags = X87Status.None;
        Kind ka = Classify(a), kb = Classify(b);
        if (PropagateNaN(a, ka, b, kb, out Float80 nan, ref flags))
            return nan;
        bool negative = a.IsNegative ^ b.IsNegative;
        if (ka == Kind.Infinity)
        {
            if (kb == Kind.Infinity)
                return InvalidResult(ref flags);
            if (b.IsDenormal)
                flags |= X87Status.Denormal;
            return Infinity(negative);
        }
        if (kb == Kind.Infinity)
        {
            if (a.IsDenormal)
                flags |= X87Status.Denormal;
            return SignedZero(negative);
        }
        if (kb == Kind.Zero)
        {
            if (ka == Kind.Zero)
                return InvalidResult(ref flags);
            // The host reports only ZE for denormal ÷ 0: division by zero is detected before DE.
            flags |= X87Status.ZeroDivide;
            return Infinity(negative);
        }
        if (a.IsDenormal || b.IsDenormal)
            flags |= X87Status.Denormal;
        if (ka == Kind.Zero)
            return SignedZero(negative);
        ulong ma = Unpack(a, out int ea);
        ulong mb = Unpack(b, out int eb);
        // ma/mb is in (1/2, 2): take the integer bit first so both long-division steps have a
        // 64-bit quotient, then 128 fraction bits and the remainder as the sticky bit.
        bool atLeastOne = ma >= mb;
        if (atLeastOne)
            ma -= mb;
        ulong q1 = DivRem128(ma, 0, mb, out ulong r1);
        ulong q2 = DivRem128(r1, 0, mb, out ulong r2);
        UInt128 sig;
        int exp;
        if (atLeastOne)
        {
            sig = (UInt128.One << 127) | ((UInt128)q1 << 63) | (q2 >> 1) | (((q2 & 1) | r2) != 0 ? UInt128.One : 0);
            exp = ea - eb;
        }
        else
        {
            sig = new UInt128(q1, q2 | (r2 != 0 ? 1UL : 0));
            exp = ea - eb - 1;
        }
        return RoundPack(negative, exp, sig, cw.PrecisionBits, cw, ref flags);
    }

    /// <summary>(hi:lo) ÷ d for hi &lt; d, so that the quotient fits in 64 bits; the DIV instruction where there is one.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static ulong DivRem128(ulong hi, ulong lo, ulong d, out ulong remainder)
    {
        if (X86Base.X64.IsSupported)
        {
            // SYSLIB5004: DivRem is marked "for evaluation" in .NET 10; it is the plain DIV r/m64, and
            // UInt128's software division is several times slower. The fallback keeps other hosts working.
#pragma warning disable SYSLIB5004
            (ulong q, ulong r) = X86Base.X64.DivRem(lo, hi, d);
#pragma warning restore SYSLIB5004
            remainder = r;
            return q;
        }
        (UInt128 quotient, UInt128 rem) = UInt128.DivRem(new UInt128(hi, lo), d);
        remainder = (ulong)rem;
        return (ulong)quotient;
    }

    /// <summary>FSQRT: √a rounded to PC/RC; negative non-zero operands are invalid, √-0 = -0.</summary>
    public static Float80 Sqrt(Float80 a, X87Control cw, out X87Status flags)
    {
        flags = X87Status.None;
        Kind ka = Classify(a);
        if (PropagateNaN(a, ka, out Float80 nan, ref flags))
            return nan;
        if (ka == Kind.Zero)
            return a;
        if (a.IsNegative)
            return InvalidResult(ref flags); // detected before DE: √(negative denormal) reports IE alone
        if (a.IsDenormal)
            flags |= X87Status.Denormal;
        if (ka == Kind.Infinity)
            return a;
        ulong m = Unpack(a, out int e);
        // m·2^(e-63) = R·2^(2k) with R = m·2^s in [2^126, 2^128), so √ = √R·2^k with √R in [2^63, 2^64).
        int s = (e & 1) == 0 ? 63 : 64;
        UInt128 radicand = (UInt128)m << s;
        int k = (e - 63 - s) / 2;
        ulong root = ISqrt(radicand);
        UInt128 rem = radicand - (UInt128)root * root;
        // The discarded fraction f of the true root is >= 1/2 iff rem > root; it is never exactly 1/2.
        UInt128 sig = ((UInt128)root << 64) | (rem > root ? (UInt128)1 << 63 : 0) | (rem != 0 ? UInt128.One : UInt128.Zero);
        return RoundPack(false, k + 63, sig, cw.PrecisionBits, cw, ref flags);
    }

    /// <summary>⌊√x⌋ for x &lt; 2^128.</summary>
    private static ulong ISqrt(UInt128 x)
    {
        double estimate = Math.Sqrt((double)x);
        ulong r = estimate >= 18446744073709551615.0 ? ulong.MaxValue : (ulong)estimate;
        if (r != 0 && (ulong)(x >> 64) < r)
        {
            UInt128 next = ((UInt128)r + DivRem128((ulong)(x >> 64), (ulong)x, r, out _)) >> 1;
            r = next > ulong.MaxValue ? ulong.MaxValue : (ulong)next;
        }
        while ((UInt128)r * r > x)
            r--;
        while (r != ulong.MaxValue && (UInt128)(r + 1) * (r + 1) <= x)
            r++;
        return r;
    }
}
