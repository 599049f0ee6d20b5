namespace SharpVisor.Core;

/// <summary>Outcome of a device's DMA request.</summary>
public enum DmaStatus
{
    Ok,
    /// <summary>The address is not RAM (or it targets MMIO, which devices may not DMA into).</summary>
    NotRam,
    /// <summary>An IOMMU blocked the request (and recorded a fault).</summary>
    Blocked,
}

/// <summary>
/// The address space one requester (PCI bus/device/function) sees for DMA. With an IOMMU this is a
/// translating view per requester ID; without one it is the identity over guest RAM. Devices never
/// touch guest RAM any other way.
/// </summary>
public interface IDmaSpace
{
    DmaStatus Read(ulong address, Span<byte> destination);
    DmaStatus Write(ulong address, ReadOnlySpan<byte> source);
}

/// <summary>DMA straight to guest RAM (no IOMMU). MMIO is never a DMA target here.</summary>
public sealed class IdentityDmaSpace(GuestMemory ram) : IDmaSpace
{
    public DmaStatus Read(ulong address, Span<byte> destination) => ram.TryRead(address, destination) ? DmaStatus.Ok : DmaStatus.NotRam;
    public DmaStatus Write(ulong address, ReadOnlySpan<byte> source) => ram.TryWrite(address, source) ? DmaStatus.Ok : DmaStatus.NotRam;
}

/// <summary>A level- or edge-triggered interrupt input (an IRQ pin on a PIC or IOAPIC).</summary>
public interface IIrqLine
{
    /// <summary>Drives the line: true asserts it. Edge-triggered inputs react to the rising edge.</summary>
    void SetLevel(bool asserted);
}

/// <summary>Receives message-signalled interrupts: the write a device makes to 0xFEExxxxx.</summary>
public interface IMsiSink
{
    /// <summary>Delivers (or, through interrupt remapping, translates or blocks) one MSI.</summary>
    /// <param name="requesterId">PCI requester ID (bus &lt;&lt; 8 | devfn) the message comes from.</param>
    void SendMsi(ulong address, uint data, ushort requesterId);
}

/// <summary>Drives several interrupt inputs from one source (an ISA IRQ goes to both the PIC and the IOAPIC).</summary>
public sealed class IrqFanOut(params IIrqLine[] outputs) : IIrqLine
{
    public void SetLevel(bool asserted)
    {
        foreach (var o in outputs)
        {
            o.SetLevel(asserted);
        }
    }
}
