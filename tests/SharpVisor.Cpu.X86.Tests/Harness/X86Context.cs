using System.Runtime.InteropServices;

namespace SharpVisor.Cpu.X86.Tests.Harness;

/// <summary>
/// The user-visible state a differential test sets up and compares: 16 GPRs, RFLAGS, XMM0-15 and
/// MXCSR. The GPR/RFLAGS/HostRsp offsets are fixed (the native stub addresses them).
/// </summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct X86Context
{
    public fixed ulong Gpr[16];
    public ulong Rflags;
    /// <summary>Scratch for the native stub (the host RSP while guest registers are live).</summary>
    public ulong HostRsp;
    /// <summary>XMM0..XMM15, 16 bytes each (little-endian lanes).</summary>
    public fixed byte Xmm[256];
    /// <summary>
    /// MXCSR. A value of 0 means "the power-on default 0x1F80" so contexts built before XMM support
    /// keep working; the runner always forces the six exception mask bits on natively (an unmasked
    /// SIMD exception natively is a SIGFPE that kills the test process).
    /// </summary>
    public uint Mxcsr;
    public uint Pad;
    /// <summary>MM0..MM7 (the x87 registers' significands); compared only by tests that use MMX.</summary>
    public fixed ulong Mm[8];

    public static readonly string[] Names = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"];

    public const int XmmOffset = 18 * 8;
    public const int MxcsrOffset = XmmOffset + 256;
    public const int MmOffset = MxcsrOffset + 8;

    public ulong XmmLow(int i) => MemoryMarshal.Read<ulong>(XmmSpan(i));
    public ulong XmmHigh(int i) => MemoryMarshal.Read<ulong>(XmmSpan(i)[8..]);

    public void SetXmm(int i, ulong low, ulong high)
    {
        var s = XmmSpan(i);
        MemoryMarshal.Write(s, low);
        MemoryMarshal.Write(s[8..], high);
    }

    public Span<byte> XmmSpan(int i) => MemoryMarshal.CreateSpan(ref Xmm[i * 16], 16);
}
