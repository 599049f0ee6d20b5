using System.Runtime.Intrinsics;

namespace SharpVisor.Cpu.X86.Fpu;

/// <summary>
/// x87 and SSE register state (SDM Vol. 1 8.1, 10.2). The x87 registers are stored physically
/// (R0..R7) as raw 80-bit values; ST(i) is R[(Top + i) mod 8].
/// </summary>
public sealed class FpuState
{
    /// <summary>Significand (with explicit integer bit) of R0..R7.</summary>
    public readonly ulong[] Mantissa = new ulong[8];
    /// <summary>Sign (bit 15) and biased exponent (14:0) of R0..R7.</summary>
    public readonly ushort[] SignExp = new ushort[8];
    public ushort Control, Status;
    /// <summary>Full tag word: 2 bits per physical register (00 valid, 01 zero, 10 special, 11 empty).</summary>
    public ushort Tag;
    public ushort LastOpcode;
    public ulong LastIp, LastDp;
    public ushort LastCs, LastDs;

    public readonly Vector128<byte>[] Xmm = new Vector128<byte>[16];
    public uint Mxcsr;

    public int Top
    {
        get => (Status >> 11) & 7;
        set => Status = (ushort)((Status & ~0x3800) | ((value & 7) << 11));
    }

    /// <summary>
    /// Power-up and RESET values (SDM Vol. 3A 9.1.1, Table 9-1): FCW 0040H (note: not FNINIT's 037FH —
    /// all exceptions unmasked, single precision), FSW 0, FTW 5555H (every register tagged zero, as
    /// R0-R7 hold +0.0), pointers and opcode 0, XMM0-15 zero, MXCSR 1F80H. INIT leaves all of this
    /// unchanged (Table 9-1 and its footnote), so it is not called for INIT.
    /// </summary>
    public void Reset()
    {
        Control = PowerOnControl;
        Status = 0;
        Tag = 0x5555;
        LastOpcode = 0;
        LastIp = LastDp = 0;
        LastCs = LastDs = 0;
        Array.Clear(Mantissa);
        Array.Clear(SignExp);
        Array.Clear(Xmm);
        Mxcsr = DefaultMxcsr;
    }

    /// <summary>FCW after power-up/RESET (Table 9-1).</summary>
    public const ushort PowerOnControl = 0x0040;
    /// <summary>FCW after FNINIT (SDM Vol. 2A FINIT/FNINIT; Vol. 1 8.1.5).</summary>
    public const ushort InitControl = 0x037F;
    /// <summary>MXCSR after power-up/RESET: all exceptions masked, round to nearest (SDM Vol. 1 10.2.3).</summary>
    public const uint DefaultMxcsr = 0x1F80;

    /// <summary>
    /// FNINIT (SDM Vol. 2A FINIT/FNINIT): FCW 037FH, FSW 0, all registers tagged empty, pointers and
    /// opcode 0. The data registers and the SSE state keep their contents.
    /// </summary>
    public void InitX87()
    {
        Control = InitControl;
        Status = 0;
        Tag = 0xFFFF;
        LastIp = LastDp = 0;
        LastCs = LastDs = 0;
        LastOpcode = 0;
    }
}
