using SharpVisor.Core;

namespace SharpVisor.Devices.Interrupts;

/// <summary>
/// The MSI path of a board without an IOMMU: compatibility-format messages (SDM Vol. 3A 11.11) are
/// decoded and handed to the APIC bus. Remappable-format messages (address bit 4) need an
/// interrupt-remapping unit; without one they are dropped, counted and logged once.
/// </summary>
public sealed class CompatibilityMsiSink(IApicBus bus, Log? log = null) : IMsiSink
{
    readonly Log Log = log ?? new Log();
    public readonly Counter Delivered = new("msi.delivered");
    public readonly Counter DroppedRemappable = new("msi.dropped_remappable");
    public readonly Counter DroppedBadAddress = new("msi.dropped_bad_address");

    public IEnumerable<Counter> Counters => [Delivered, DroppedRemappable, DroppedBadAddress];

    public void SendMsi(ulong address, uint data, ushort requesterId)
    {
        if (!MsiMessage.IsInterruptAddress(address))
        {
            DroppedBadAddress.Increment();
            Log.Once("msi.bad_address", "msi", $"MSI to 0x{address:x} from {requesterId:x4} is outside 0xFEExxxxx; dropped");
            return;
        }
        if (MsiMessage.IsRemappable(address))
        {
            DroppedRemappable.Increment();
            Log.Once("msi.remappable", "msi", $"remappable-format MSI from {requesterId:x4} without an IOMMU; dropped");
            return;
        }
        Delivered.Increment();
        bus.Deliver(MsiMessage.DecodeCompatibility(address, data));
    }
}
