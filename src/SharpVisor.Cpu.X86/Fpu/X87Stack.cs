namespace SharpVisor.Cpu.X86.Fpu;

/// <summary>
/// The register-stack view of <see cref="FpuState"/> (Intel SDM Vol. 1 §8.1.2, §8.1.7): ST(i) is the
/// physical register R[(TOP + i) mod 8], and each physical register has a 2-bit tag in the tag word
/// (00 valid, 01 zero, 10 special, 11 empty). Tags are kept exact on every register write so that
/// FSTENV/FSAVE/FXSAVE can store them as they are.
/// </summary>
public static class X87Stack
{
    public const int TagValid = 0, TagZero = 1, TagSpecial = 2, TagEmpty = 3;

    /// <summary>Status word bits the stack machinery sets (SDM Vol. 1 figure 8-4).</summary>
    public const ushort StackFault = 0x40, ErrorSummary = 0x80, Busy = 0x8000;

    public static int Physical(FpuState f, int st) => (f.Top + st) & 7;

    public static int TagOfPhysical(FpuState f, int reg) => (f.Tag >> (reg * 2)) & 3;

    public static bool IsEmpty(FpuState f, int st) => TagOfPhysical(f, Physical(f, st)) == TagEmpty;

    public static Float80 Get(FpuState f, int st)
    {
        int p = Physical(f, st);
        return new Float80(f.Mantissa[p], f.SignExp[p]);
    }

    /// <summary>Writes ST(i) and tags it from its contents.</summary>
    public static void Set(FpuState f, int st, Float80 value) => SetPhysical(f, Physical(f, st), value);

    public static void SetPhysical(FpuState f, int reg, Float80 value)
    {
        f.Mantissa[reg] = value.Mantissa;
        f.SignExp[reg] = value.SignExponent;
        SetTag(f, reg, TagFor(value));
    }

    public static void SetTag(FpuState f, int reg, int tag) =>
        f.Tag = (ushort)((f.Tag & ~(3 << (reg * 2))) | (tag << (reg * 2)));

    /// <summary>Marks ST(0) empty and increments TOP.</summary>
    public static void Pop(FpuState f)
    {
        SetTag(f, Physical(f, 0), TagEmpty);
        f.Top = f.Top + 1;
    }

    /// <summary>Decrements TOP and writes the new ST(0) (the caller checked that it was empty).</summary>
    public static void Push(FpuState f, Float80 value)
    {
        f.Top = f.Top - 1;
        Set(f, 0, value);
    }

    /// <summary>
    /// The tag a value gets (SDM Vol. 1 §8.1.7): zero → 01; a normal (J=1, exponent 1..7FFEh) → 00;
    /// everything else (NaN, infinity, denormal, pseudo-denormal, unsupported) → 10.
    /// </summary>
    public static int TagFor(Float80 value)
    {
        int e = value.BiasedExponent;
        if (e == 0)
            return value.Mantissa == 0 ? TagZero : TagSpecial;
        if (e == Float80.MaxBiasedExponent || !value.HasIntegerBit)
            return TagSpecial;
        return TagValid;
    }

    /// <summary>
    /// A tag word loaded by FLDENV/FRSTOR: only "empty or not" is taken from it; the tags of
    /// non-empty registers are recomputed from their contents (SDM Vol. 1 §8.1.7).
    /// </summary>
    public static void LoadTagWord(FpuState f, ushort tagWord)
    {
        ushort tag = 0;
        for (int reg = 0; reg < 8; reg++)
        {
            int t = (tagWord >> (reg * 2)) & 3;
            if (t != TagEmpty)
                t = TagFor(new Float80(f.Mantissa[reg], f.SignExp[reg]));
            tag |= (ushort)(t << (reg * 2));
        }
        f.Tag = tag;
    }

    /// <summary>
    /// A control word as loaded by FLDCW/FLDENV/FRSTOR: bits 7 and 13-15 are reserved and read as
    /// 0, bit 6 is reserved and reads as 1 (SDM Vol. 1 figure 8-6; checked against the host).
    /// </summary>
    public static ushort ControlWord(ushort value) => (ushort)((value & 0x1F3F) | 0x0040);

    /// <summary>
    /// Recomputes ES (bit 7) and B (bit 15, a copy of ES on every processor since the 387) from
    /// the exception flags and masks: ES is set while any unmasked exception flag is set
    /// (SDM Vol. 1 §8.1.3.7). Used after FLDCW/FLDENV/FRSTOR.
    /// </summary>
    public static void UpdateErrorSummary(FpuState f)
    {
        bool pending = (f.Status & ~f.Control & 0x3F) != 0;
        f.Status = pending ? (ushort)(f.Status | ErrorSummary | Busy) : (ushort)(f.Status & ~(ErrorSummary | Busy));
    }
}
