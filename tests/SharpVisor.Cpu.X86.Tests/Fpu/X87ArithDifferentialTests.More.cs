using SharpVisor.Cpu.X86.Fpu;

namespace SharpVisor.Cpu.X86.Tests.Fpu;

public sealed partial class X87ArithDifferentialTests
{
    private const byte Mem = X87Frame.MemOffset;

    /// <summary>ModRM for [rdi+disp8] with /digit.</summary>
    private static byte M(int digit) => X87Host.RdiDisp8(digit);

    /// <summary>Values around the integer ranges: |x| from 1/8 to 2^66, halves, the range limits.</summary>
    private static Float80 IntegerLike(X87Inputs r)
    {
        int pick = r.Random.Next(10);
        if (pick < 2)
            return r.Any();
        if (pick < 4)
        {
            int bits = new[] { 15, 31, 63, 59, 60 }[r.Random.Next(5)];
            ulong m = Float80.IntegerBit + (ulong)(r.Random.Next(5) - 2) * (1UL << r.Random.Next(0, 64 - bits + 2));
            return new Float80(r.Random.Next(2) == 0, 0x3FFF + bits + r.Random.Next(-1, 2), m == 0 ? Float80.IntegerBit : m | Float80.IntegerBit);
        }
        ulong mant = r.Mantissa();
        int e = r.Random.Next(-3, 67);
        if (r.Random.Next(3) == 0 && e is >= 0 and < 62)
            mant = mant & ~(ulong.MaxValue >> (e + 1)) | (1UL << (62 - e)); // exact .5
        return new Float80(r.Random.Next(2) == 0, 0x3FFF + e, mant);
    }

    private static void IntegerInput(X87Inputs r, ref X87Frame f)
    {
        f.Cw = r.Control().Word;
        f.In0 = IntegerLike(r);
    }

    private static void CheckToInteger(string name, byte[] store, int bits, bool truncate, int seed)
        => Check(name, 1, store, 0, IntegerInput, (ref X87Frame f) =>
        {
            long v = X87Arith.ToInteger(f.In0, bits, truncate ? X87Rounding.TowardZero : new X87Control(f.Cw).Rounding, out var s);
            f.Mem = bits == 64 ? (ulong)v : (ulong)v & ((1UL << bits) - 1);
            f.Sw = (ushort)s;
        }, Outputs.Mem, Exceptions | C1, seed);

    [Fact] public void FistpInt16() => CheckToInteger("fistp m16", [0xDF, M(3), Mem], 16, false, 10);
    [Fact] public void FistpInt32() => CheckToInteger("fistp m32", [0xDB, M(3), Mem], 32, false, 11);
    [Fact] public void FistpInt64() => CheckToInteger("fistp m64", [0xDF, M(7), Mem], 64, false, 12);
    [Fact] public void FisttpInt16() => CheckToInteger("fisttp m16", [0xDF, M(1), Mem], 16, true, 13);
    [Fact] public void FisttpInt32() => CheckToInteger("fisttp m32", [0xDB, M(1), Mem], 32, true, 14);
    [Fact] public void FisttpInt64() => CheckToInteger("fisttp m64", [0xDD, M(1), Mem], 64, true, 15);

    [Fact]
    public void Fild() => Check("fild m16/m32/m64", 0, [0xDF, M(5), Mem], 1,
        (X87Inputs r, ref X87Frame f) =>
        {
            f.Cw = r.Control().Word;
            f.Mem = r.Random.Next(4) switch { 0 => 0, 1 => 1UL << 63, 2 => (ulong)r.Random.Next(-100, 100), _ => (ulong)r.Random.NextInt64() >> r.Random.Next(64) };
            if (r.Random.Next(2) == 0)
                f.Mem = 0 - f.Mem;
        },
        (ref X87Frame f) => { f.Out0 = X87Arith.FromInt64((long)f.Mem); f.Sw = 0; }, Outputs.Out0, Exceptions | C1, 16, 300);

    private static ulong FloatBits(X87Inputs r, int width)
    {
        int fractionBits = width == 32 ? 23 : 52;
        int exponentMax = width == 32 ? 0xFF : 0x7FF;
        ulong fraction = (ulong)r.Random.NextInt64() & ((1UL << fractionBits) - 1);
        int e = r.Random.Next(6) switch { 0 => 0, 1 => exponentMax, 2 => r.Random.Next(1, 4), _ => r.Random.Next(0, exponentMax + 1) };
        if (r.Random.Next(8) == 0)
            fraction = 0;
        ulong bits = (ulong)e << fractionBits | fraction;
        return r.Random.Next(2) == 0 ? bits : bits | 1UL << (width - 1);
    }

    [Fact]
    public void FldFloat32() => Check("fld m32", 0, [0xD9, M(0), Mem], 1,
        (X87Inputs r, ref X87Frame f) => { f.Cw = r.Control().Word; f.Mem = FloatBits(r, 32); },
        (ref X87Frame f) => { f.Out0 = X87Arith.FromFloat32((uint)f.Mem, out var s); f.Sw = (ushort)s; }, Outputs.Out0, Exceptions | C1, 17, 500);

    [Fact]
    public void FldFloat64() => Check("fld m64", 0, [0xDD, M(0), Mem], 1,
        (X87Inputs r, ref X87Frame f) => { f.Cw = r.Control().Word; f.Mem = FloatBits(r, 64); },
        (ref X87Frame f) => { f.Out0 = X87Arith.FromFloat64(f.Mem, out var s); f.Sw = (ushort)s; }, Outputs.Out0, Exceptions | C1, 18, 500);

    /// <summary>Values in and around the single and double exponent ranges (overflow, denormal results).</summary>
    private static void FloatRangeInput(X87Inputs r, ref X87Frame f, int bias)
    {
        f.Cw = r.Control(allowUnmaskedPost: true).Word;
        if (r.Random.Next(4) == 0)
        {
            f.In0 = r.Any();
            return;
        }
        int e = r.Random.Next(3) switch
        {
            0 => 0x3FFF - bias + 1 - r.Random.Next(0, 70), // denormal range and below
            1 => 0x3FFF + bias + r.Random.Next(-2, 3),     // overflow boundary
            _ => 0x3FFF + r.Random.Next(-bias, bias),
        };
        f.In0 = new Float80(r.Random.Next(2) == 0, e, r.Mantissa());
    }

    [Fact]
    public void FstpFloat32() => Check("fstp m32", 1, [0xD9, M(3), Mem], 0,
        (X87Inputs r, ref X87Frame f) => FloatRangeInput(r, ref f, 127),
        (ref X87Frame f) => { f.Mem = StoreUnlessUnmasked(X87Arith.ToFloat32(f.In0, new X87Control(f.Cw), out var s), s, f.Cw); f.Sw = (ushort)s; }, Outputs.Mem, Exceptions | C1, 19);

    /// <summary>SDM §8.5.3-8.5.4: with OE/UE unmasked a memory destination is left unchanged (here: 0).</summary>
    private static ulong StoreUnlessUnmasked(ulong value, X87Status flags, ushort cw)
        => ((ushort)flags & ~cw & (ushort)(X87Status.Overflow | X87Status.Underflow)) != 0 ? 0 : value;

    [Fact]
    public void FstpFloat64() => Check("fstp m64", 1, [0xDD, M(3), Mem], 0,
        (X87Inputs r, ref X87Frame f) => FloatRangeInput(r, ref f, 1023),
        (ref X87Frame f) => { f.Mem = StoreUnlessUnmasked(X87Arith.ToFloat64(f.In0, new X87Control(f.Cw), out var s), s, f.Cw); f.Sw = (ushort)s; }, Outputs.Mem, Exceptions | C1, 20);

    [Fact]
    public void Fbld() => Check("fbld", 0, [0xDF, M(4), Mem], 1,
        (X87Inputs r, ref X87Frame f) =>
        {
            f.Cw = r.Control().Word;
            ulong low = 0;
            int digits = r.Random.Next(0, 19);
            for (int i = 0; i < 16; i++)
                low |= (ulong)(i < digits ? r.Random.Next(10) : 0) << (i * 4);
            f.Mem = low;
            f.MemHigh = (ushort)((digits > 16 ? r.Random.Next(10) : 0) | (digits > 17 ? r.Random.Next(10) << 4 : 0) | (r.Random.Next(2) << 15));
        },
        (ref X87Frame f) => { f.Out0 = X87Arith.FromPackedBcd(new PackedBcd(f.Mem, f.MemHigh)); f.Sw = 0; }, Outputs.Out0, Exceptions | C1, 21, 300);

    [Fact]
    public void Fbstp() => Check("fbstp", 1, [0xDF, M(6), Mem], 0,
        (X87Inputs r, ref X87Frame f) =>
        {
            IntegerInput(r, ref f);
            if (r.Random.Next(3) == 0) // around 10^18
                f.In0 = X87Arith.Add(X87Arith.FromInt64(999_999_999_999_999_999 + r.Random.Next(-2, 2)), new Float80(false, 0x3FFF - r.Random.Next(4), r.Mantissa()), X87Control.Default, out _);
        },
        (ref X87Frame f) =>
        {
            PackedBcd b = X87Arith.ToPackedBcd(f.In0, new X87Control(f.Cw), out var s);
            f.Mem = b.Low;
            f.MemHigh = b.High;
            f.Sw = (ushort)s;
        }, Outputs.Mem | Outputs.MemHigh, Exceptions | C1, 22);

    private static void CompareInput(X87Inputs r, ref X87Frame f)
    {
        f.Cw = r.Control().Word;
        f.In0 = r.Any();
        f.In1 = r.Random.Next(4) switch { 0 => f.In0, 1 => f.In0.Negate(), 2 => r.Any(), _ => r.Near(f.In0) };
    }

    [Fact]
    public void Fcom() => Check("fcom", 2, [0xD8, 0xD1], 2, CompareInput,
        (ref X87Frame f) => f.Sw = (ushort)X87Arith.Compare(f.In0, f.In1, quiet: false), Outputs.None, Exceptions | C0 | C1 | C2 | C3, 23);

    [Fact]
    public void Fucom() => Check("fucom", 2, [0xDD, 0xE1], 2, CompareInput,
        (ref X87Frame f) => f.Sw = (ushort)X87Arith.Compare(f.In0, f.In1, quiet: true), Outputs.None, Exceptions | C0 | C1 | C2 | C3, 24);

    [Fact]
    public void Ftst() => Check("ftst", 1, [0xD9, 0xE4], 1, (X87Inputs r, ref X87Frame f) => Unary(r, ref f, false),
        (ref X87Frame f) => f.Sw = (ushort)X87Arith.Test(f.In0), Outputs.None, Exceptions | C0 | C1 | C2 | C3, 25, 500);

    [Fact]
    public void Fxam() => Check("fxam", 1, [0xD9, 0xE5], 1, (X87Inputs r, ref X87Frame f) => Unary(r, ref f, false),
        (ref X87Frame f) => f.Sw = (ushort)X87Arith.Examine(f.In0), Outputs.None, Exceptions | C0 | C1 | C2 | C3, 26, 500);

    [Fact]
    public void FabsFchs() => Check("fabs;fchs", 1, [0xD9, 0xE1, 0xD9, 0xE0], 1, (X87Inputs r, ref X87Frame f) => Unary(r, ref f, false),
        (ref X87Frame f) => { f.Out0 = X87Arith.ChangeSign(X87Arith.Abs(f.In0)); f.Sw = 0; }, Outputs.Out0, Exceptions | C1, 27, 300);

    [Fact]
    public void Frndint() => Check("frndint", 1, [0xD9, 0xFC], 1, IntegerInput,
        (ref X87Frame f) => { f.Out0 = X87Arith.RoundToInteger(f.In0, new X87Control(f.Cw), out var s); f.Sw = (ushort)s; },
        Outputs.Out0, Exceptions | C1, 28);

    [Fact]
    public void Fscale() => Check("fscale", 2, [0xD9, 0xFD], 2,
        (X87Inputs r, ref X87Frame f) =>
        {
            f.Cw = r.Control(allowUnmaskedPost: true).Word;
            f.In0 = r.Any();
            f.In1 = r.Random.Next(5) switch
            {
                0 => r.Any(),
                1 => X87Arith.FromInt64(r.Random.Next(-40000, 40000)),
                2 => X87Arith.Add(X87Arith.FromInt64(r.Random.Next(-100, 100)), new Float80(r.Random.Next(2) == 0, 0x3FFE - r.Random.Next(3), r.Mantissa()), X87Control.Default, out _),
                3 => X87Arith.FromInt64(r.Random.Next(-16500, -16300)),
                _ => X87Arith.FromInt64(r.Random.Next(-70, 70)),
            };
        },
        (ref X87Frame f) => { f.Out0 = X87Arith.Scale(f.In0, f.In1, new X87Control(f.Cw), out var s); f.Sw = (ushort)s; },
        Outputs.Out0, Exceptions | C1, 29);

    [Fact]
    public void Fxtract() => Check("fxtract", 1, [0xD9, 0xF4], 2, (X87Inputs r, ref X87Frame f) => Unary(r, ref f, false),
        (ref X87Frame f) =>
        {
            f.Out0 = X87Arith.Extract(f.In0, out Float80 exponent, out var s);
            f.Out1 = exponent;
            f.Sw = (ushort)s;
        }, Outputs.Out0 | Outputs.Out1, Exceptions | C1, 30);

    private static void RemainderInput(X87Inputs r, ref X87Frame f)
    {
        f.Cw = r.Control().Word;
        f.In1 = r.Any();
        if (r.Random.Next(4) == 0 || f.In1.BiasedExponent is 0 or 0x7FFF)
        {
            f.In0 = r.Any();
            return;
        }
        int e = Math.Clamp(f.In1.BiasedExponent + r.Random.Next(-3, r.Random.Next(2) == 0 ? 70 : 300), 1, 0x7FFE);
        f.In0 = new Float80(r.Random.Next(2) == 0, e, r.Mantissa());
    }

    [Fact]
    public void Fprem() => Check("fprem", 2, [0xD9, 0xF8], 2, RemainderInput,
        (ref X87Frame f) => { f.Out0 = X87Arith.Remainder(f.In0, f.In1, ieee: false, out var s); f.Sw = (ushort)s; },
        Outputs.Out0, Exceptions | C0 | C1 | C2 | C3, 31);

    [Fact]
    public void Fprem1() => Check("fprem1", 2, [0xD9, 0xF5], 2, RemainderInput,
        (ref X87Frame f) => { f.Out0 = X87Arith.Remainder(f.In0, f.In1, ieee: true, out var s); f.Sw = (ushort)s; },
        Outputs.Out0, Exceptions | C0 | C1 | C2 | C3, 32);
}

public sealed partial class X87ArithDifferentialTests
{
    // Memory-operand arithmetic as an instruction handler composes it: convert the operand, operate,
    // combine the flags with CombineOperandFlags. FADD m32, FDIV m64, FIADD m32, FCOM m32.
    private static void MemoryOperand(X87Inputs r, ref X87Frame f, int width)
    {
        f.Cw = r.Control().Word;
        f.In0 = r.Any();
        f.Mem = width == 0 ? (ulong)(uint)r.Random.Next(int.MinValue, int.MaxValue) >> r.Random.Next(32) : FloatBits(r, width);
    }


    [Fact]
    public void FaddFloat32() => Check("fadd m32", 1, [0xD8, M(0), Mem], 1, (X87Inputs r, ref X87Frame f) => MemoryOperand(r, ref f, 32),
        (ref X87Frame f) =>
        {
            Float80 m = X87Arith.Float32Operand((uint)f.Mem, out X87Status cf);
            f.Out0 = X87Arith.Add(f.In0, m, new X87Control(f.Cw), out X87Status s);
            f.Sw = (ushort)X87Arith.CombineOperandFlags(s, cf, f.In0);
        }, Outputs.Out0, ArithMask, 33);

    [Fact]
    public void FdivFloat64() => Check("fdiv m64", 1, [0xDC, M(6), Mem], 1, (X87Inputs r, ref X87Frame f) => MemoryOperand(r, ref f, 64),
        (ref X87Frame f) =>
        {
            Float80 m = X87Arith.Float64Operand(f.Mem, out X87Status cf);
            f.Out0 = X87Arith.Div(f.In0, m, new X87Control(f.Cw), out X87Status s);
            f.Sw = (ushort)X87Arith.CombineOperandFlags(s, cf, f.In0);
        }, Outputs.Out0, ArithMask, 34);

    [Fact]
    public void FiaddInt32() => Check("fiadd m32", 1, [0xDA, M(0), Mem], 1, (X87Inputs r, ref X87Frame f) => MemoryOperand(r, ref f, 0),
        (ref X87Frame f) =>
        {
            f.Out0 = X87Arith.Add(f.In0, X87Arith.FromInt32((int)(uint)f.Mem), new X87Control(f.Cw), out X87Status s);
            f.Sw = (ushort)s;
        }, Outputs.Out0, ArithMask, 35);

    [Fact]
    public void FcomFloat32() => Check("fcom m32", 1, [0xD8, M(2), Mem], 1, (X87Inputs r, ref X87Frame f) => MemoryOperand(r, ref f, 32),
        (ref X87Frame f) =>
        {
            Float80 m = X87Arith.Float32Operand((uint)f.Mem, out X87Status cf);
            f.Sw = (ushort)X87Arith.CombineOperandFlags(X87Arith.Compare(f.In0, m, quiet: false), cf, f.In0);
        }, Outputs.None, Exceptions | C0 | C1 | C2 | C3, 36);

    /// <summary>
    /// Results just below the smallest normal that round up to it: UE depends on whether tininess is
    /// detected before or after rounding (the host: after). Every RC × PC, both signs.
    /// </summary>
    [Fact]
    public void TininessAtTheNormalBoundary() => Check("fmul tiny boundary", 2, [0xD8, 0xC9], 2,
        (X87Inputs r, ref X87Frame f) =>
        {
            f.Cw = r.Control().Word;
            ulong[] justBelow = [ulong.MaxValue, ulong.MaxValue - 1, 0xFFFF_FFFF_FFFF_F800, 0xFFFF_FFFF_FFFF_FC00, 0xFFFF_FF80_0000_0000, 0xFFFF_FFC0_0000_0000, 0xFFFF_FF7F_FFFF_FFFF];
            f.In0 = new Float80(r.Random.Next(2) == 0, 1, justBelow[r.Random.Next(justBelow.Length)]);
            f.In1 = new Float80(false, 0x3FFE, Float80.IntegerBit); // × 0.5
        },
        (ref X87Frame f) => { f.Out0 = X87Arith.Mul(f.In0, f.In1, new X87Control(f.Cw), out var s); f.Sw = (ushort)s; },
        Outputs.Out0, ArithMask, 37, 400);
}
