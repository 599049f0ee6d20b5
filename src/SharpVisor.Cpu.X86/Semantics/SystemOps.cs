using Iced.Intel;

namespace SharpVisor.Cpu.X86.Semantics;

/// <summary>System instructions: not implemented yet (they raise #UD with a log line).</summary>
public static class SystemOps
{
    public static void Register()
    {
    }

    /// <summary>MOV to/from control and debug registers (called by DataMove for those MOV forms).</summary>
    public static bool BindMovSystem(in Instruction ins, ref Op op) => false;

    /// <summary>Far JMP/CALL (direct and indirect), called by Control for those forms.</summary>
    public static bool BindFar(in Instruction ins, ref Op op) => false;
}
