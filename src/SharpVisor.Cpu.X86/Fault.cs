namespace SharpVisor.Cpu.X86;

/// <summary>Exception and interrupt vectors (SDM Vol. 3A 6.3.1).</summary>
public static class Vector
{
    public const byte DE = 0, DB = 1, NMI = 2, BP = 3, OF = 4, BR = 5, UD = 6, NM = 7, DF = 8;
    public const byte TS = 10, NP = 11, SS = 12, GP = 13, PF = 14, MF = 16, AC = 17, MC = 18, XM = 19;

    /// <summary>Exceptions that push an error code in protected/long mode (SDM Table 6-1).</summary>
    public static bool HasErrorCode(byte v) => v is DF or TS or NP or SS or GP or PF or AC;

    /// <summary>Contributory exceptions for the double-fault rules (SDM Table 6-5).</summary>
    public static bool IsContributory(byte v) => v is DE or TS or NP or SS or GP;
}

/// <summary>
/// A guest exception raised while executing an instruction: the instruction has no effect and the
/// exception is delivered through the IDT. Thrown and caught only inside the interpreter; one
/// instance per vCPU is reused so a fault allocates nothing.
/// </summary>
public sealed class GuestFault : Exception
{
    public byte Vector { get; private set; }
    public uint ErrorCode { get; private set; }
    public bool HasErrorCode { get; private set; }

    internal GuestFault Set(byte vector, uint errorCode, bool hasErrorCode)
    {
        Vector = vector;
        ErrorCode = errorCode;
        HasErrorCode = hasErrorCode;
        return this;
    }

    public override string Message => $"guest exception {Vector}{(HasErrorCode ? $" error 0x{ErrorCode:x}" : "")}";
}

/// <summary>Why <see cref="Cpu.Run"/> returned.</summary>
public enum CpuExit
{
    /// <summary>The instruction budget is spent; call Run again.</summary>
    BudgetExhausted,
    /// <summary>HLT with nothing pending: wait for an interrupt (then call Run again).</summary>
    Halted,
    /// <summary>Stop requested from outside (<see cref="Cpu.RequestStop"/>).</summary>
    Stopped,
    /// <summary>Triple fault: the machine must reset or stop (<see cref="Cpu.ShutdownReason"/> says why).</summary>
    Shutdown,
    /// <summary>Waiting for a startup IPI (an application processor after INIT).</summary>
    WaitForSipi,
    /// <summary>
    /// The bootstrap processor took INIT and is back at the reset vector, where firmware runs
    /// (SDM Vol. 3A 8.4.2); the board decides what that means for the machine.
    /// </summary>
    BootstrapInit,
}
