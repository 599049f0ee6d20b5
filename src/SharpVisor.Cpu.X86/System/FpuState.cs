using System.Runtime.Intrinsics;

namespace SharpVisor.Cpu.X86;

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

    /// <summary>FNINIT / power-on values (SDM Vol. 1 8.1.1; MXCSR from 10.2.3.1).</summary>
    public void Reset()
    {
        Control = 0x037F;
        Status = 0;
        Tag = 0xFFFF;
        LastOpcode = 0;
        LastIp = LastDp = 0;
        LastCs = LastDs = 0;
        Array.Clear(Mantissa);
        Array.Clear(SignExp);
        Array.Clear(Xmm);
        Mxcsr = 0x1F80;
    }
}
