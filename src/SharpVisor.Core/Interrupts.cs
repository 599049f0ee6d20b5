namespace SharpVisor.Core;

/// <summary>Delivery modes of an interrupt message (SDM Vol. 3A 11.6.1, ICR bits 10:8).</summary>
public enum ApicDeliveryMode : byte
{
    Fixed = 0,
    LowestPriority = 1,
    Smi = 2,
    Nmi = 4,
    Init = 5,
    StartUp = 6,
    ExtInt = 7,
}

/// <summary>
/// One interrupt message on the system bus, as an IOAPIC, an MSI or an IPI produces it, after any
/// interrupt remapping. Destination is an APIC ID (physical mode) or a logical mask/cluster
/// (logical mode); 0xFFFFFFFF (x2APIC) or 0xFF (xAPIC) broadcasts.
/// </summary>
public readonly record struct ApicInterrupt(
    uint Destination,
    bool LogicalDestination,
    ApicDeliveryMode DeliveryMode,
    byte Vector,
    bool LevelTriggered,
    bool Assert = true);

/// <summary>Routes interrupt messages to the local APICs (implemented by the machine over all vCPUs).</summary>
public interface IApicBus
{
    void Deliver(in ApicInterrupt interrupt);
}

/// <summary>
/// Compatibility-format MSI (SDM Vol. 3A 11.11): address 0xFEEx_xxxx carries the destination,
/// data carries vector, delivery mode and trigger mode. Remappable-format messages (address bit 4)
/// are the IOMMU's to translate; <see cref="IsRemappable"/> tells them apart.
/// </summary>
public static class MsiMessage
{
    public const ulong AddressBase = 0xFEE0_0000;
    public const ulong AddressMask = 0xFFF0_0000;

    public static bool IsInterruptAddress(ulong address) => (address & AddressMask) == AddressBase;

    /// <summary>Bit 4 of the address selects the remappable format (VT-d spec 5.1.2.2).</summary>
    public static bool IsRemappable(ulong address) => (address & (1 << 4)) != 0;

    public static ApicInterrupt DecodeCompatibility(ulong address, uint data)
    {
        uint destination = (uint)(address >> 12) & 0xFF;
        // Extended destination ID (address bits 11:5) as used by some hypervisors is not advertised.
        bool logical = (address & (1 << 2)) != 0;
        var mode = (ApicDeliveryMode)((data >> 8) & 7);
        bool level = (data & (1 << 15)) != 0;
        bool assert = !level || (data & (1 << 14)) != 0;
        return new ApicInterrupt(destination, logical, mode, (byte)data, level, assert);
    }
}

/// <summary>
/// What a vCPU asks its local APIC between instructions. The CPU checks
/// <see cref="HasPendingInterrupt"/> when RFLAGS.IF allows and then acknowledges (the INTA cycle).
/// </summary>
public interface IVcpuInterruptSource
{
    /// <summary>True when a maskable interrupt is deliverable (IRR above the processor priority, or ExtINT).</summary>
    bool HasPendingInterrupt { get; }

    /// <summary>Accepts the highest-priority interrupt and returns its vector (a spurious vector when it vanished).</summary>
    byte AcknowledgeInterrupt();
}

/// <summary>Signals a local APIC sends to its vCPU; safe to call from any thread.</summary>
public interface IVcpuSignals
{
    /// <summary>A maskable interrupt may have become pending: re-check, and wake from HLT.</summary>
    void NotifyInterrupt();
    void RaiseNmi();
    void RaiseInit();
    void RaiseStartup(byte vector);
}

/// <summary>The legacy PIC's side of an ExtINT acknowledge cycle (virtual-wire mode through LINT0).</summary>
public interface IExtIntController
{
    bool HasInterrupt { get; }
    byte Acknowledge();
}
