using SharpVisor.Core;

namespace SharpVisor.Devices.Pci;

/// <summary>
/// Hands each PCI requester its DMA address space. Without an IOMMU every requester sees guest RAM
/// one to one (<see cref="IdentityDmaSpaceProvider"/>); the VT-d model implements this interface to
/// give each bus/device/function its own translated view.
/// </summary>
public interface IDmaSpaceProvider
{
    /// <param name="requesterId">PCI requester ID: bus &lt;&lt; 8 | device &lt;&lt; 3 | function.</param>
    IDmaSpace ForRequester(ushort requesterId);
}

/// <summary>No IOMMU: every requester DMAs straight into guest RAM (never into MMIO).</summary>
public sealed class IdentityDmaSpaceProvider(GuestMemory ram) : IDmaSpaceProvider
{
    readonly IdentityDmaSpace _space = new(ram);

    public IDmaSpace ForRequester(ushort requesterId) => _space;
}

/// <summary>
/// The DMA space a function uses: its requester's space, gated by the Bus Master Enable bit. A
/// function whose Bus Master bit is clear may not initiate memory requests (PCI 3.0, 6.2.2, command
/// bit 2); such a request is refused with <see cref="DmaStatus.Blocked"/> and counted, and nothing
/// is read or written.
/// </summary>
sealed class BusMasterGatedDmaSpace(PciFunction function, IDmaSpace inner) : IDmaSpace
{
    public DmaStatus Read(ulong address, Span<byte> destination)
    {
        if (!function.BusMasterEnabled)
        {
            function.NoteDmaRefused(address);
            return DmaStatus.Blocked;
        }
        return inner.Read(address, destination);
    }

    public DmaStatus Write(ulong address, ReadOnlySpan<byte> source)
    {
        if (!function.BusMasterEnabled)
        {
            function.NoteDmaRefused(address);
            return DmaStatus.Blocked;
        }
        return inner.Write(address, source);
    }
}

/// <summary>The DMA space of a function not yet on a bus: every request is refused.</summary>
sealed class DetachedDmaSpace : IDmaSpace
{
    public static readonly DetachedDmaSpace Instance = new();
    public DmaStatus Read(ulong address, Span<byte> destination) => DmaStatus.Blocked;
    public DmaStatus Write(ulong address, ReadOnlySpan<byte> source) => DmaStatus.Blocked;
}

/// <summary>
/// Wired-OR of several level-triggered INTx sources onto one interrupt input, as PCI INTx lines are
/// shared (PCI 3.0, 2.2.6: INTx# are open-drain). The output is asserted while any source is.
/// </summary>
public sealed class WiredOrIrqLine(IIrqLine output)
{
    readonly Lock _gate = new();
    int _assertedMask;
    int _sources;

    /// <summary>A new input of the wired-OR (at most 32 per line).</summary>
    public IIrqLine CreateInput()
    {
        lock (_gate)
        {
            if (_sources == 32)
            {
                ThrowHelper.InvalidOperation("a wired-OR INTx line takes at most 32 sources");
            }
            return new Input(this, _sources++);
        }
    }

    void Set(int index, bool asserted)
    {
        // The output is driven under the lock so two inputs cannot reorder their edges; an
        // interrupt controller input never calls back into a PCI function.
        lock (_gate)
        {
            bool before = _assertedMask != 0;
            _assertedMask = asserted ? _assertedMask | (1 << index) : _assertedMask & ~(1 << index);
            bool after = _assertedMask != 0;
            if (before != after)
            {
                output.SetLevel(after);
            }
        }
    }

    sealed class Input(WiredOrIrqLine owner, int index) : IIrqLine
    {
        public void SetLevel(bool asserted) => owner.Set(index, asserted);
    }
}
