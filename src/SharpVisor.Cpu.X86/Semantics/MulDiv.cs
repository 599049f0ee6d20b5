namespace SharpVisor.Cpu.X86.Semantics;

/// <summary>Instruction family: not implemented yet (its instructions raise #UD with a log line).</summary>
public static class MulDiv
{
    public static void Register()
    {
    }
}
