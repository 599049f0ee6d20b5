namespace SharpVisor.Cpu.X86.Semantics;

/// <summary>
/// Whether an ALU handler updates the arithmetic flags, as a type: the interpreter always binds
/// <see cref="UpdateFlags"/>; the translator calls the <see cref="SkipFlags"/> form of a handler when
/// no later instruction, exception or block exit can observe the flags it would write (they are
/// dead: overwritten before anything reads them). The result is the same either way, and the JIT
/// drops the flag computation, the largest part of an ALU instruction, from the skipping form.
/// </summary>
public interface IFlagUpdate
{
    static abstract bool Update { get; }
}

public readonly struct UpdateFlags : IFlagUpdate
{
    public static bool Update => true;
}

public readonly struct SkipFlags : IFlagUpdate
{
    public static bool Update => false;
}
