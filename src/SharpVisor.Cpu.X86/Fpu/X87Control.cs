namespace SharpVisor.Cpu.X86.Fpu;

/// <summary>
/// Exception flags and condition codes, at their bit positions in the x87 status word FSW
/// (Intel SDM Vol. 1 §8.1.3, figure 8-4) so a handler can OR the exceptions into FSW and copy the
/// condition codes. <see cref="C1"/> after an arithmetic result with <see cref="Precision"/> means
/// "the result was rounded up" (SDM §8.1.3.1); after FXAM it is the sign.
/// </summary>
[Flags]
public enum X87Status : ushort
{
    None = 0,
    Invalid = 1 << 0,       // IE
    Denormal = 1 << 1,      // DE
    ZeroDivide = 1 << 2,    // ZE
    Overflow = 1 << 3,      // OE
    Underflow = 1 << 4,     // UE
    Precision = 1 << 5,     // PE
    C0 = 1 << 8,
    C1 = 1 << 9,
    C2 = 1 << 10,
    C3 = 1 << 14,

    ExceptionMask = Invalid | Denormal | ZeroDivide | Overflow | Underflow | Precision,
    ConditionMask = C0 | C1 | C2 | C3,
}

/// <summary>FCW rounding control RC, bits 10-11 (SDM Vol. 1 table 4-8).</summary>
public enum X87Rounding
{
    NearestEven = 0,
    Down = 1,
    Up = 2,
    TowardZero = 3,
}

/// <summary>
/// The x87 control word FCW (SDM Vol. 1 §8.1.5, figure 8-6): exception masks in bits 0-5, precision
/// control PC in bits 8-9, rounding control RC in bits 10-11.
/// </summary>
public readonly struct X87Control
{
    public readonly ushort Word;

    public X87Control(ushort word) => Word = word;

    /// <summary>The FNINIT value: every exception masked, 64-bit precision, round to nearest.</summary>
    public static X87Control Default => new(0x037F);

    public static X87Control Create(X87Rounding rounding, int precisionBits = 64, ushort masks = 0x3F)
    {
        int pc = precisionBits switch { 24 => 0, 53 => 2, 64 => 3, _ => throw new ArgumentOutOfRangeException(nameof(precisionBits)) };
        return new((ushort)(0x40 | masks | (pc << 8) | ((int)rounding << 10)));
    }

    public X87Rounding Rounding => (X87Rounding)((Word >> 10) & 3);

    /// <summary>
    /// Significand bits PC selects: 00 single (24), 10 double (53), 11 extended (64). The reserved
    /// encoding 01 behaves as extended on the processors we compare against (checked by the tests).
    /// </summary>
    public int PrecisionBits => ((Word >> 8) & 3) switch { 0 => 24, 2 => 53, _ => 64 };

    public bool IsMasked(X87Status exception) => (Word & (ushort)exception) == (ushort)exception;

    /// <summary>The same control word with PC = 64 bits, for the instructions PC does not apply to.</summary>
    public X87Control WithPrecision64() => new((ushort)(Word | 0x0300));

    public X87Control WithRounding(X87Rounding rounding) => new((ushort)((Word & ~0x0C00) | ((int)rounding << 10)));
}
