using SharpVisor.Core;
using SharpVisor.Cpu.X86.Model;

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
    /// <summary>The log of the VM these vCPUs belong to.</summary>
    public Log Log { get; init; } = new();
    /// <summary>
    /// Serialises LOCKed operations that cannot be done with one host atomic (MMIO, page-straddling,
    /// CMPXCHG16B) among the vCPUs of this VM; another VM's vCPUs cannot see this VM's RAM.
    /// </summary>
    public Lock SplitLock { get; } = new();
    /// <summary>The second execution tier shared by this VM's vCPUs, or null to interpret only.</summary>
    public Translation.Translator? Translator { get; init; }
    /// <summary>Far transfers through gates or to descriptor types this CPU does not implement (#GP instead).</summary>
    public Counter UnsupportedFarTransfers { get; } = new("cpu.unsupported_far_transfers");
    /// <summary>Unknown MSR numbers (and whether written) some vCPU of this VM accessed: each is logged once.</summary>
    internal System.Collections.Concurrent.ConcurrentDictionary<(uint Msr, bool Write), byte> UnknownMsrsSeen { get; } = new();
}
