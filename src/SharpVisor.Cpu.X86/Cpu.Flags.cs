using System.Numerics;
using System.Runtime.CompilerServices;

namespace SharpVisor.Cpu.X86;

/// <summary>
/// Lazy arithmetic flags. An ALU instruction stores its result sign-extended to 64 bits in
/// <see cref="RegisterFile.FlagRes"/> (ZF = result is 0, SF = bit 63, PF = parity of bits 7:0) and
/// the flags that need the operands — CF, AF, OF — computed at once into <see cref="RegisterFile.FlagAux"/>
/// at their RFLAGS positions. Bits 2 and 7 of FlagAux invert PF and SF so that any combination of
/// explicitly written flags (POPF, SAHF) can be represented with a FlagRes of 0 or 0x100.
/// Nothing is switch-dispatched on the last operation: reading a flag is a couple of ALU ops.
/// </summary>
public sealed unsafe partial class Cpu
{
    const ulong AuxStored = RFlags.CF | RFlags.AF | RFlags.OF;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool CF() => (Regs.FlagAux & 1) != 0;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool ZF() => Regs.FlagRes == 0;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool SF() => (((Regs.FlagRes >> 63) ^ (Regs.FlagAux >> 7)) & 1) != 0;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool OF() => (Regs.FlagAux & RFlags.OF) != 0;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool AF() => (Regs.FlagAux & RFlags.AF) != 0;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool PF() => ((BitOperations.PopCount((uint)(byte)Regs.FlagRes) ^ (int)(Regs.FlagAux >> 2) ^ 1) & 1) != 0;

    /// <summary>Evaluates condition code <paramref name="cc"/> (the low nibble of Jcc/SETcc/CMOVcc, SDM Vol. 1 B.1).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool Condition(int cc)
    {
        bool r = (cc >> 1) switch
        {
            0 => OF(),
            1 => CF(),
            2 => ZF(),
            3 => CF() || ZF(),
            4 => SF(),
            5 => PF(),
            6 => SF() != OF(),
            _ => ZF() || SF() != OF(),
        };
        return r ^ ((cc & 1) != 0);
    }

    /// <summary>The full RFLAGS value.</summary>
    public ulong GetFlags()
    {
        ulong f = FlagsOther | (Regs.FlagAux & AuxStored);
        if (ZF()) f |= RFlags.ZF;
        if (SF()) f |= RFlags.SF;
        if (PF()) f |= RFlags.PF;
        return f;
    }

    /// <summary>Sets only the arithmetic flags from an RFLAGS-shaped value.</summary>
    public void SetArithFlags(ulong f)
    {
        Regs.FlagRes = (f & RFlags.ZF) != 0 ? 0 : 0x100UL;
        // FlagRes has bit 63 clear and even parity in its low byte, so SF and PF come entirely from
        // the inverter bits: store SF as is and PF inverted.
        Regs.FlagAux = (f & AuxStored) | (f & RFlags.SF) | (~f & RFlags.PF);
    }

    /// <summary>Sets the whole RFLAGS register (callers apply privilege rules first). Updates the mode if VM changed.</summary>
    public void SetFlags(ulong f)
    {
        ulong old = FlagsOther;
        SetArithFlags(f);
        FlagsOther = (f & RFlags.Writable & ~RFlags.Arith) | RFlags.Reserved1;
        ulong changed = old ^ FlagsOther;
        if ((changed & RFlags.VM) != 0)
        {
            UpdateMode();
        }
        if ((changed & (RFlags.TF | RFlags.RF)) != 0)
        {
            UpdateDebugActive(); // single-step or resume flag: the run loop must check each instruction
        }
        if ((changed & RFlags.AC) != 0)
        {
            SelectTlb(); // alignment checks on or off (Cpu.AlignmentChecks.cs)
        }
    }

    /// <summary>Sets CF and keeps the other flags (materialising only what is needed).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void SetCF(bool cf) => Regs.FlagAux = (Regs.FlagAux & ~1UL) | (cf ? 1UL : 0);

    public bool IF => (FlagsOther & RFlags.IF) != 0;
    public bool DF => (FlagsOther & RFlags.DF) != 0;
    public int Iopl => (int)((FlagsOther >> 12) & 3);

    // ---- flag producers used by the ALU semantics (size is the operand width in bits) ----

    /// <summary>Flags of <c>r = a + b + carryIn</c> at width <paramref name="bits"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void FlagsAdd(ulong a, ulong b, ulong r, int bits)
    {
        ulong carries = (a & b) | ((a | b) & ~r); // bit i: carry out of bit i
        int top = bits - 1;
        ulong cf = (carries >> top) & 1;
        ulong of = (cf ^ (carries >> (top - 1))) & 1;
        Regs.FlagAux = cf | ((carries << 1) & RFlags.AF) | (of << 11); // AF: carry out of bit 3
        Regs.FlagRes = SignExtend(r, bits);
    }

    /// <summary>Flags of <c>r = a - b - borrowIn</c> at width <paramref name="bits"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void FlagsSub(ulong a, ulong b, ulong r, int bits)
    {
        ulong borrows = (~a & b) | ((~a | b) & r); // bit i: borrow out of bit i
        int top = bits - 1;
        ulong cf = (borrows >> top) & 1;
        ulong of = (cf ^ (borrows >> (top - 1))) & 1;
        Regs.FlagAux = cf | ((borrows << 1) & RFlags.AF) | (of << 11); // AF: borrow out of bit 3
        Regs.FlagRes = SignExtend(r, bits);
    }

    /// <summary>Flags of a logical operation: CF = OF = 0, AF cleared (undefined on hardware, 0 on most).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void FlagsLogic(ulong r, int bits)
    {
        Regs.FlagAux = 0;
        Regs.FlagRes = SignExtend(r, bits);
    }

    /// <summary>Sets the result-derived flags from <paramref name="r"/> and CF/OF/AF from explicit values.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void FlagsResult(ulong r, int bits, bool cf, bool of, bool af = false)
    {
        Regs.FlagAux = (cf ? 1UL : 0) | (of ? RFlags.OF : 0) | (af ? RFlags.AF : 0);
        Regs.FlagRes = SignExtend(r, bits);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong SignExtend(ulong v, int bits) => (ulong)((long)(v << (64 - bits)) >> (64 - bits));
}
