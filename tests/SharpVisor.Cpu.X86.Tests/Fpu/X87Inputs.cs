using SharpVisor.Cpu.X86.Fpu;

namespace SharpVisor.Cpu.X86.Tests.Fpu;

/// <summary>Seeded operand and control-word generator: edge encodings plus random values in the interesting exponent bands.</summary>
internal sealed class X87Inputs
{
    private readonly Random _random;

    public X87Inputs(int seed) => _random = new Random(seed);

    public Random Random => _random;

    /// <summary>Zeros, denormals, pseudo-denormals, normal extremes, infinities, NaNs, unsupported encodings, rounding ties.</summary>
    public static readonly Float80[] Edges =
    [
        new(0, 0x0000), new(0, 0x8000),
        new(1, 0x0000), new(1, 0x8000),                                    // smallest denormal
        new(0x7FFF_FFFF_FFFF_FFFF, 0x0000), new(0x7FFF_FFFF_FFFF_FFFF, 0x8000), // largest denormal
        new(0x4000_0000_0000_0000, 0x0000),
        new(0x8000_0000_0000_0000, 0x0000), new(0x8000_0000_0000_0001, 0x8000), // pseudo-denormals
        new(0x8000_0000_0000_0000, 0x0001), new(0x8000_0000_0000_0000, 0x8001), // smallest normal
        new(0xFFFF_FFFF_FFFF_FFFF, 0x7FFE), new(0xFFFF_FFFF_FFFF_FFFF, 0xFFFE), // largest normal
        new(0x8000_0000_0000_0000, 0x7FFF), new(0x8000_0000_0000_0000, 0xFFFF), // infinities
        new(0xC000_0000_0000_0000, 0x7FFF), new(0xC000_0000_0000_0000, 0xFFFF), // QNaN, indefinite
        new(0xC123_4567_89AB_CDEF, 0x7FFF), new(0xE000_0000_0000_0001, 0xFFFF),
        new(0xA000_0000_0000_0000, 0x7FFF), new(0x8000_0000_0000_0001, 0xFFFF), // SNaNs
        new(0xB234_5678_9ABC_DEF0, 0x7FFF),
        new(0x0000_0000_0000_0000, 0x7FFF), new(0x4000_0000_0000_0000, 0xFFFF), // pseudo-infinity, pseudo-NaN
        new(0x4000_0000_0000_0000, 0x3FFF), new(0x1234_0000_0000_0000, 0x0001), // unnormals
        new(0x8000_0000_0000_0000, 0x3FFF), new(0x8000_0000_0000_0000, 0xBFFF), // ±1
        new(0x8000_0000_0000_0001, 0x3FFF), new(0xFFFF_FFFF_FFFF_FFFF, 0x3FFE), // 1+ulp, 1-ulp/2
        new(0xC000_0000_0000_0000, 0x4000), new(0x8000_0000_0000_0000, 0x3FFE), // 3, 0.5
        new(0xFFFF_FF80_0000_0000, 0x3FFF), new(0xFFFF_FFFF_FFFF_FC00, 0x3FFF), // single/double ties
        new(0x8000_0080_0000_0000, 0x3FFF), new(0x8000_0000_0000_0400, 0xBFFF),
        new(0xC90F_DAA2_2168_C235, 0x4000), new(0xC90F_DAA2_2168_C235, 0x3FFF), // π, π/2
        new(0xFFFF_FFFF_FFFF_FFFF, 0x403D), new(0x8000_0000_0000_0000, 0x403E), // 2^63-1+…, 2^63
        new(0x8000_0000_0000_0000, 0x3C01), new(0x8000_0000_0000_0000, 0x43FE), // double range ends
        new(0x8000_0000_0000_0000, 0x3F81), new(0x8000_0000_0000_0000, 0x407E), // single range ends
    ];

    public Float80 Edge() => Edges[_random.Next(Edges.Length)];

    public ulong Mantissa()
    {
        ulong m = (ulong)_random.NextInt64() << 1 ^ (ulong)_random.Next();
        switch (_random.Next(8))
        {
            case 0: m &= ~0xFF_FFFF_FFFFUL; m |= (ulong)_random.Next(3) << 38; break; // near single ties
            case 1: m &= ~0x7FFUL; m |= (ulong)_random.Next(3) << 9; break;            // near double ties
            case 2: m = ulong.MaxValue - (ulong)_random.Next(4); break;
            case 3: m = (ulong)_random.Next(4); break;
        }
        return m | Float80.IntegerBit;
    }

    /// <summary>A finite normal with its biased exponent in a band chosen at random (tiny, huge, near 1, anywhere).</summary>
    public Float80 Finite()
    {
        int e = _random.Next(6) switch
        {
            0 => _random.Next(1, 80),
            1 => _random.Next(0x7FFE - 80, 0x7FFF),
            2 => _random.Next(1, 0x7FFF),
            _ => 0x3FFF + _random.Next(-70, 70),
        };
        return new Float80(_random.Next(2) == 0, e, Mantissa());
    }

    /// <summary>A denormal or a normal near the denormal range.</summary>
    public Float80 Tiny()
    {
        ulong m = Mantissa() >> _random.Next(64);
        return new Float80(_random.Next(2) == 0, 0, m == 0 ? 1 : m);
    }

    public Float80 Any()
    {
        int pick = _random.Next(10);
        return pick < 2 ? Edge() : pick < 3 ? Tiny() : Finite();
    }

    /// <summary>A value whose exponent is within ±70 of the other's (cancellation, alignment, sticky bits).</summary>
    public Float80 Near(Float80 other)
    {
        if (_random.Next(4) == 0 || other.BiasedExponent is 0 or 0x7FFF)
            return Any();
        int e = Math.Clamp(other.BiasedExponent + _random.Next(-70, 71), 1, 0x7FFE);
        ulong m = _random.Next(3) == 0 ? other.Mantissa ^ (1UL << _random.Next(64)) | Float80.IntegerBit : Mantissa();
        return new Float80(_random.Next(2) == 0, e, m);
    }

    /// <summary>Every RC × PC combination with all exceptions masked; sometimes OM/UM/PM unmasked when asked.</summary>
    public X87Control Control(bool allowUnmaskedPost = false)
    {
        var rc = (X87Rounding)_random.Next(4);
        int pc = new[] { 0, 1, 2, 3, 3 }[_random.Next(5)]; // 1 is the reserved encoding
        int masks = 0x3F;
        if (allowUnmaskedPost && _random.Next(8) == 0)
            masks = 0x07 | (_random.Next(8) << 3); // IM, DM, ZM stay masked (their unmasked response leaves ST0 unchanged)
        return new X87Control((ushort)(0x40 | masks | (pc << 8) | ((int)rc << 10)));
    }
}
