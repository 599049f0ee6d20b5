using SharpVisor.Core;

namespace SharpVisor.Devices.Pci;

/// <summary>
/// One requester's Address Translation Services machinery, supplied by the platform's IOMMU: the
/// DMA path used while the function's ATS Enable bit is set (translation requests, a device-TLB,
/// translated requests) and the answering of the IOMMU's device-TLB invalidations.
/// </summary>
public interface IAtsPort : IDmaSpace
{
    /// <summary>
    /// ATS Control Enable changed (PCIe Base 4.0, 10.5.1.3). Enabling connects the function to
    /// the IOMMU's device-TLB invalidations; disabling disconnects it; either way the device-TLB
    /// starts empty. <paramref name="smallestTranslationShift"/> is 12 + the Smallest Translation
    /// Unit field: the function caches no translation smaller than that.
    /// </summary>
    void SetEnabled(bool enabled, int smallestTranslationShift);

    /// <summary>The device-TLB's counters, registered with the function's.</summary>
    IEnumerable<Counter> Counters { get; }
}

/// <summary>An <see cref="IDmaSpaceProvider"/> whose IOMMU can serve ATS (device-TLBs).</summary>
public interface IAtsDmaSpaceProvider
{
    /// <summary>The ATS port of <paramref name="requesterId"/>; <paramref name="name"/> names its counters.</summary>
    IAtsPort CreateAtsPort(ushort requesterId, string name);
}

public abstract partial class PciFunction
{
    // ATS Extended Capability (PCIe Base 4.0, 10.5.1): header, then the 16-bit ATS Capability
    // register at +4 and the 16-bit ATS Control register at +6.
    const int AtsCapabilityRegister = 4;
    const int AtsControlRegister = 6;
    const int AtsCapabilityLength = 8;
    /// <summary>ATS Capability bit 5: the function sends translation requests only for page-aligned addresses (Linux pci_ats_page_aligned needs it).</summary>
    const uint AtsPageAlignedRequest = 1u << 5;
    /// <summary>ATS Control bit 15: Enable; bits 4:0: Smallest Translation Unit (STU, 2^(STU+12) bytes).</summary>
    const uint AtsEnable = 1u << 15;
    const uint AtsStuMask = 0x1F;

    int _atsCapability;
    IAtsPort? _atsPort;
    AtsSelectingDmaSpace? _atsDma;
    readonly Lock _atsGate = new();

    /// <summary>Offset of the ATS extended capability, 0 when there is none.</summary>
    public int AtsCapabilityOffset => _atsCapability;

    /// <summary>True while the guest has ATS enabled and the platform's IOMMU serves it.</summary>
    public bool AtsEnabled => _atsDma?.Enabled ?? false;

    /// <summary>
    /// Gives the function ATS (PCIe Base 4.0, 10.5.1): the PCI Express capability first when it
    /// has none (as a Root Complex Integrated Endpoint: our devices sit on the root bus with no
    /// root port, which is where Linux's dmar_ats_supported allows ATS without an ATSR lookup),
    /// then the ATS extended capability: Invalidate Queue Depth 0 (32 outstanding invalidations),
    /// Page Aligned Request set, Enable and STU writable. Call before the function is on a bus.
    /// When the bus's DMA provider is not an <see cref="IAtsDmaSpaceProvider"/> (no IOMMU, or one
    /// without device-TLB support) the Enable bit is still writable but DMA stays untranslated.
    /// </summary>
    public void AddAtsCapability()
    {
        EnsureNotAttached();
        if (_atsCapability != 0)
        {
            ThrowHelper.InvalidOperation($"{Name}: the ATS capability is already present");
        }
        if (_pcieCapability == 0)
        {
            AddPciExpressCapability(PciExpressDeviceType.RootComplexIntegratedEndpoint);
        }
        int offset = AddExtendedCapability(PciCapabilityId.ExtendedAts, 1, AtsCapabilityLength);
        InitConfig(offset + AtsCapabilityRegister, 2, AtsPageAlignedRequest);
        InitConfig(offset + AtsControlRegister, 2, 0, AtsEnable | AtsStuMask);
        _atsCapability = offset;
    }

    /// <summary>At attach: the DMA path, switching to the ATS port while Enable is set.</summary>
    IDmaSpace WrapForAts(IDmaSpace untranslated, IAtsDmaSpaceProvider? atsProvider, ushort requesterId)
    {
        if (_atsCapability == 0 || atsProvider is null)
        {
            return untranslated;
        }
        _atsPort = atsProvider.CreateAtsPort(requesterId, $"pci.{Name}");
        _atsDma = new AtsSelectingDmaSpace(untranslated, _atsPort);
        return _atsDma;
    }

    IEnumerable<Counter> AtsCounters => _atsPort?.Counters ?? [];

    /// <summary>
    /// After a configuration write that touched ATS Control: hands the new Enable/STU to the ATS
    /// port. Serialised by its own gate and reading the register inside it, so two racing writes
    /// cannot leave the port in a state other than the last value written.
    /// </summary>
    void ApplyAtsControl()
    {
        if (_atsPort is not { } port || _atsDma is not { } selector)
        {
            return;
        }
        lock (_atsGate)
        {
            uint control = ReadConfigLocked(_atsCapability + AtsControlRegister, 2);
            bool enabled = (control & AtsEnable) != 0;
            int shift = 12 + (int)(control & AtsStuMask);
            if (enabled == selector.Enabled && (!enabled || shift == selector.SmallestTranslationShift))
            {
                return;
            }
            // Switch the DMA path off before the port forgets its translations, and on only after
            // the port is connected to invalidations, so no DMA uses a device-TLB the IOMMU cannot reach.
            selector.Enabled = false;
            port.SetEnabled(enabled, shift);
            selector.SmallestTranslationShift = shift;
            selector.Enabled = enabled;
        }
    }
}

/// <summary>A function's DMA: untranslated requests, or its ATS port while ATS is enabled.</summary>
sealed class AtsSelectingDmaSpace(IDmaSpace untranslated, IAtsPort ats) : IDmaSpace
{
    volatile bool _enabled;

    public bool Enabled
    {
        get => _enabled;
        set => _enabled = value;
    }

    public int SmallestTranslationShift { get; set; } = 12;

    public DmaStatus Read(ulong address, Span<byte> destination) =>
        _enabled ? ats.Read(address, destination) : untranslated.Read(address, destination);

    public DmaStatus Write(ulong address, ReadOnlySpan<byte> source) =>
        _enabled ? ats.Write(address, source) : untranslated.Write(address, source);
}
