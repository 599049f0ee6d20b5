using SharpVisor.Core;

namespace SharpVisor.Cpu.X86;

/// <summary>
/// The local APIC as its vCPU sees it: the interrupt source between instructions, the x2APIC MSRs
/// and the xAPIC MMIO page (each vCPU reaches its own APIC at the same physical address).
/// </summary>
public interface IVcpuApic : IVcpuInterruptSource
{
    /// <summary>Physical base of the xAPIC page while MMIO mode is enabled, else null.</summary>
    ulong? MmioBase { get; }
    ulong MmioRead(ulong offset, int size);
    void MmioWrite(ulong offset, int size, ulong value);
    /// <summary>APIC MSRs (IA32_APIC_BASE, x2APIC 0x800-0x8FF, TSC_DEADLINE): false means #GP.</summary>
    bool TryReadMsr(uint msr, out ulong value);
    bool TryWriteMsr(uint msr, ulong value);
    /// <summary>True when the APIC handles this MSR number at all.</summary>
    bool OwnsMsr(uint msr);
}

/// <summary>What one vCPU needs from the machine around it.</summary>
public sealed class CpuPlatform
{
    public required PhysicalMemoryMap Memory { get; init; }
    public required PortBus Ports { get; init; }
    public required VirtualClock Clock { get; init; }
    /// <summary>TSC rate the guest is told (CPUID 0x15/0x16) and RDTSC counts at.</summary>
    public long TscHz { get; init; } = 2_000_000_000;
    /// <summary>Serialises device access across vCPUs until devices are individually locked.</summary>
    public object? DeviceLock { get; init; }
    public CpuIdModel CpuId { get; init; } = new();
}
