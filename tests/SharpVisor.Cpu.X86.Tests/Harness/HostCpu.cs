using System.Runtime.Intrinsics.X86;

namespace SharpVisor.Cpu.X86.Tests.Harness;

/// <summary>
/// What the native differential tests need to know about the host CPU, for the behaviour the
/// architecture leaves to the implementation: the vendor and CPUID.(EAX=07H,ECX=0):EBX.
/// </summary>
internal static class HostCpu
{
    /// <summary>CPUID vendor "GenuineIntel" (otherwise the tests assume AMD's documented behaviour).</summary>
    public static bool IsIntel { get; } = X86Base.IsSupported && X86Base.CpuId(0, 0) is (_, 0x756E_6547, 0x6C65_746E, 0x4965_6E69); // EBX "Genu", ECX "ntel", EDX "ineI"

    /// <summary>CPUID.(EAX=07H,ECX=0):EBX, the structured extended feature flags (0 when the leaf does not exist).</summary>
    public static uint ExtendedFeaturesEbx { get; } = X86Base.IsSupported && X86Base.CpuId(0, 0).Eax >= 7 ? (uint)X86Base.CpuId(7, 0).Ebx : 0;
}
