using System.Runtime.InteropServices;

namespace SharpVisor.Cpu.X86.Tests.Harness;

/// <summary>The user-visible state a differential test sets up and compares: 16 GPRs and RFLAGS.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct X86Context
{
    public fixed ulong Gpr[16];
    public ulong Rflags;
    /// <summary>Scratch for the native stub (the host RSP while guest registers are live).</summary>
    public ulong HostRsp;

    public static readonly string[] Names = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"];
}
