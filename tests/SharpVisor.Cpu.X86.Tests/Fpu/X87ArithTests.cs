using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using SharpVisor.Cpu.X86.Fpu;

namespace SharpVisor.Cpu.X86.Tests.Fpu;

/// <summary>Host-independent checks of behaviour guest code relies on (the differential tests cover the bulk).</summary>
public sealed class X87ArithTests
{
    private static readonly X87Control Nearest = X87Control.Default;

    private static Float80 F(double value) => Float80.FromDouble(value);

    [Fact]
    public void Float80IsTheTenByteMemoryImage()
    {
        Assert.Equal(10, Unsafe.SizeOf<Float80>());
        Float80 one = Float80.One;
        byte[] bytes = MemoryMarshal.AsBytes(new ReadOnlySpan<Float80>(in one)).ToArray();
        Assert.Equal(new byte[] { 0, 0, 0, 0, 0, 0, 0, 0x80, 0xFF, 0x3F }, bytes);
        Assert.Equal(new Float80(0xC000_0000_0000_0000, 0xFFFF), Float80.Indefinite);
    }

    [Fact]
    public void DoublesRoundTripExactly()
    {
        foreach (double d in new[] { 0.0, -0.0, 1.5, -3.25e-310, double.MaxValue, double.Epsilon, double.PositiveInfinity })
            Assert.Equal(BitConverter.DoubleToUInt64Bits(d), BitConverter.DoubleToUInt64Bits(F(d).ToDouble()));
    }

    [Fact]
    public void PrecisionControlRoundsArithmeticButNotConversions()
    {
        // 1 + 2^-30 is exact at 64 bits, rounds to 1 at 24 bits (PC = single) with PE.
        Float80 small = new(Float80.IntegerBit, Float80.ExponentBias - 30);
        Float80 sum = X87Arith.Add(Float80.One, small, X87Control.Create(X87Rounding.NearestEven, 24), out X87Status flags);
        Assert.Equal(Float80.One, sum);
        Assert.Equal(X87Status.Precision, flags);
        Assert.NotEqual(Float80.One, X87Arith.Add(Float80.One, small, Nearest, out flags));
        Assert.Equal(X87Status.None, flags);
    }

    [Fact]
    public void MaskedOverflowFollowsRoundingControl()
    {
        Float80 max = Float80.MaxValue;
        Assert.Equal(Float80.PositiveInfinity, X87Arith.Mul(max, F(2), Nearest, out X87Status flags));
        Assert.Equal(X87Status.Overflow | X87Status.Precision | X87Status.C1, flags);
        Assert.Equal(max, X87Arith.Mul(max, F(2), X87Control.Create(X87Rounding.TowardZero), out flags));
        Assert.Equal(X87Status.Overflow | X87Status.Precision, flags);
        // Unmasked overflow into a register delivers the result scaled by 2^-24576 (SDM §8.5.3).
        Float80 rebiased = X87Arith.Mul(max, F(2), X87Control.Create(X87Rounding.NearestEven, 64, 0x37), out flags);
        Assert.Equal(0x7FFF - 24576, rebiased.BiasedExponent);
        Assert.Equal(X87Status.Overflow, flags);
    }

    [Fact]
    public void InvalidOperationsGiveTheIndefinites()
    {
        Assert.Equal(Float80.Indefinite, X87Arith.Sqrt(F(-1), Nearest, out X87Status flags));
        Assert.Equal(X87Status.Invalid, flags);
        Assert.Equal(Float80.Indefinite, X87Arith.Sub(Float80.PositiveInfinity, Float80.PositiveInfinity, Nearest, out flags));
        Assert.Equal(int.MinValue, X87Arith.ToInt32(F(3e9), Nearest, out flags));
        Assert.Equal(X87Status.Invalid, flags);
        Assert.Equal(PackedBcd.Indefinite, X87Arith.ToPackedBcd(F(1e18), Nearest, out flags));
        Assert.Equal(X87Status.Invalid, flags);
        // An unnormal (J = 0, exponent non-zero) is an unsupported encoding on the 387 and later.
        Assert.Equal(Float80.Indefinite, X87Arith.Add(new Float80(0x4000_0000_0000_0000, 0x3FFF), Float80.One, Nearest, out flags));
        Assert.Equal(X87Status.Invalid, flags);
    }

    [Fact]
    public void DivideByZeroAndSignalingNaN()
    {
        Assert.Equal(Float80.NegativeInfinity, X87Arith.Div(F(-1), Float80.Zero, Nearest, out X87Status flags));
        Assert.Equal(X87Status.ZeroDivide, flags);
        Float80 snan = new(0xA000_0000_0000_0000, 0x7FFF);
        Assert.Equal(new Float80(0xE000_0000_0000_0000, 0x7FFF), X87Arith.Mul(snan, Float80.One, Nearest, out flags));
        Assert.Equal(X87Status.Invalid, flags);
        Assert.Equal(X87Status.C0 | X87Status.C2 | X87Status.C3, X87Arith.Compare(Float80.Indefinite, Float80.One, quiet: true));
        Assert.Equal(X87Status.Invalid | X87Status.C0 | X87Status.C2 | X87Status.C3, X87Arith.Compare(Float80.Indefinite, Float80.One, quiet: false));
    }

    [Fact]
    public void IntegerConversionsRoundPerRc()
    {
        Assert.Equal(2, X87Arith.ToInt32(F(2.5), Nearest, out X87Status flags));
        Assert.Equal(X87Status.Precision, flags);
        Assert.Equal(-3, X87Arith.ToInt32(F(-2.5), X87Control.Create(X87Rounding.Down), out flags));
        Assert.Equal(X87Status.Precision | X87Status.C1, flags);
        Assert.Equal(-2, X87Arith.ToInt32Truncate(F(-2.9), out _));
        Assert.Equal(long.MinValue, X87Arith.ToInt64(X87Arith.FromInt64(long.MinValue), Nearest, out flags));
        Assert.Equal(X87Status.None, flags);
    }

    [Fact]
    public void PackedBcdRoundTrips()
    {
        var bcd = new PackedBcd(0x8765_4321_0987_6543, 0x8099);
        Float80 value = X87Arith.FromPackedBcd(bcd);
        Assert.Equal(-998765432109876543.0, value.ToDouble());
        Assert.Equal(bcd, X87Arith.ToPackedBcd(value, Nearest, out X87Status flags));
        Assert.Equal(X87Status.None, flags);
    }

    [Fact]
    public void RemainderReportsQuotientBits()
    {
        // 7 rem 2: Q = 3 → C1 (Q0) and C3 (Q1); FPREM1 rounds Q to 4 → remainder -1 and C0 (Q2).
        Assert.Equal(F(1), X87Arith.Remainder(F(7), F(2), ieee: false, out X87Status flags));
        Assert.Equal(X87Status.C1 | X87Status.C3, flags);
        Assert.Equal(F(-1), X87Arith.Remainder(F(7), F(2), ieee: true, out flags));
        Assert.Equal(X87Status.C0, flags);
    }

    [Fact]
    public void PartialRemainderLoopConvergesLikeFmodl()
    {
        // glibc's fmodl repeats FPREM while C2 reports an incomplete reduction. 2^200 mod 3 = 1.
        Float80 x = new(Float80.IntegerBit, Float80.ExponentBias + 200);
        int steps = 0;
        X87Status flags;
        do
        {
            x = X87Arith.Remainder(x, F(3), ieee: false, out flags);
            steps++;
        }
        while ((flags & X87Status.C2) != 0 && steps < 100);
        Assert.True(steps > 1);
        Assert.Equal(F(1), x);
    }

    [Fact]
    public void TrigUsesTheX87sSixtySixBitPi()
    {
        // sin(M_PIl) on an x87 is -2^-64 (the difference from the 66-bit internal π), not -5.0165e-20.
        Float80 pi = new(0xC90F_DAA2_2168_C235, 0x4000);
        Assert.Equal(new Float80(Float80.IntegerBit, 0xBFBF), X87Arith.Sin(pi, Nearest, out X87Status flags));
        Assert.Equal(X87Status.Precision, flags & X87Status.ExceptionMask);
        Float80 huge = new(Float80.IntegerBit, Float80.ExponentBias + 63);
        Assert.Equal(huge, X87Arith.Sin(huge, Nearest, out flags));
        Assert.Equal(X87Status.C2, flags);
        Assert.Equal(Float80.One, X87Arith.Cos(Float80.NegativeZero, Nearest, out flags));
        Assert.Equal(X87Status.None, flags);
    }

    [Fact]
    public void TranscendentalsAreCloseToTheirValues()
    {
        Assert.Equal(Math.Sqrt(2) - 1, X87Arith.Exp2M1(F(0.5), Nearest, out _).ToDouble(), 15);
        Assert.Equal(3 * Math.Log2(10), X87Arith.YLog2X(F(10), F(3), Nearest, out _).ToDouble(), 14);
        Assert.Equal(Math.Log2(1.25), X87Arith.YLog2XPlus1(F(0.25), F(1), Nearest, out _).ToDouble(), 15);
        Assert.Equal(Math.Atan2(-1, -3), X87Arith.Atan2(F(-1), F(-3), Nearest, out _).ToDouble(), 15);
        Assert.Equal(Math.Tan(1.2), X87Arith.Tan(F(1.2), Nearest, out Float80 pushed, out _).ToDouble(), 14);
        Assert.Equal(Float80.One, pushed);
        Float80 sin = X87Arith.SinCos(F(0.7), Nearest, out Float80 cos, out _);
        Assert.Equal(Math.Sin(0.7), sin.ToDouble(), 15);
        Assert.Equal(Math.Cos(0.7), cos.ToDouble(), 15);
    }

    [Fact]
    public void OperationsDoNotAllocate()
    {
        Float80 a = F(1.2345), b = F(-0.75);
        X87Control cw = Nearest;
        // Warm up (static constants, tiering) before measuring. The runtime's own tiering work can
        // still allocate on this thread once, in some window (seen: one failure in a full run), so
        // the test asks for a window of 100 runs that allocates nothing: an allocation in the
        // operations themselves would show in every window.
        Float80 sink = Run(a, b, cw);
        long allocated = long.MaxValue;
        for (int window = 0; window < 5 && allocated != 0; window++)
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < 100; i++)
                sink = Run(sink.IsNaN ? a : a, b, cw);
            allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        }
        Assert.Equal(0, allocated);

        static Float80 Run(Float80 a, Float80 b, X87Control cw)
        {
            Float80 r = X87Arith.Add(a, b, cw, out _);
            r = X87Arith.Mul(r, b, cw, out _);
            r = X87Arith.Div(r, a, cw, out _);
            r = X87Arith.Sqrt(r.Abs(), cw, out _);
            r = X87Arith.Remainder(a, r, false, out _);
            _ = X87Arith.ToFloat64(r, cw, out _);
            _ = X87Arith.ToPackedBcd(r, cw, out _);
            r = X87Arith.Sin(r, cw, out _);
            r = X87Arith.Tan(r, cw, out _, out _);
            r = X87Arith.YLog2X(a, r, cw, out _);
            return X87Arith.Atan2(r, b, cw, out _);
        }
    }
}

public sealed class X87TranscendentalDomainTests
{
    private static Float80 F(double value) => Float80.FromDouble(value);

    [Fact]
    public void OutsideTheDefinedRangesResultsStaySensibleAndCheap()
    {
        // F2XM1 for |x| > 1 and FYL2XP1 for |x| ≥ 1 - √2/2 are undefined by the SDM; a guest may still
        // execute them, and they must not cost unbounded time or produce garbage.
        X87Control cw = X87Control.Default;
        Assert.Equal(Math.Pow(2, 5.5) - 1, X87Arith.Exp2M1(F(5.5), cw, out _).ToDouble(), 12);
        Assert.Equal(Math.Pow(2, -3.25) - 1, X87Arith.Exp2M1(F(-3.25), cw, out _).ToDouble(), 15);
        Assert.Equal(Float80.PositiveInfinity, X87Arith.Exp2M1(F(1e300), cw, out X87Status flags));
        Assert.Equal(X87Status.Overflow, flags & X87Status.Overflow);
        Assert.Equal(-1.0, X87Arith.Exp2M1(F(-1e300), cw, out _).ToDouble());
        Assert.Equal(2 * Math.Log2(1e6 + 1), X87Arith.YLog2XPlus1(F(1e6), F(2), cw, out _).ToDouble(), 9);
        Assert.Equal(Math.Log2(1 - 0.999), X87Arith.YLog2XPlus1(F(-0.999), F(1), cw, out _).ToDouble(), 12);
    }
}
