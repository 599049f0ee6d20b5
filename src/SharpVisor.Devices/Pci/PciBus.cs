using SharpVisor.Core;

namespace SharpVisor.Devices.Pci;

/// <summary>
/// One PCI bus: up to 32 devices of 8 functions, configuration access by bus/device/function, and
/// the mapping of decoded BARs into the guest's MMIO and port spaces.
/// </summary>
/// <remarks>
/// BAR mappings follow the registers: whenever a function's command register or BARs change, every
/// BAR of the bus is re-evaluated (<see cref="UpdateDecode"/>). A BAR the guest places over RAM,
/// over another region or over claimed ports is not mapped (counted and logged once) and is retried
/// at the next re-evaluation, so it appears when the conflict goes away — a guest-made overlap
/// never throws.
/// </remarks>
public sealed class PciBus
{
    /// <summary>The log of the VM this bus belongs to; functions on it log there (<see cref="PciFunction.Log"/>).</summary>
    internal readonly Log Log;

    readonly PciFunction?[] _functions = new PciFunction?[256];
    readonly Lock _mapLock = new();
    readonly PhysicalMemoryMap _memory;
    readonly PortBus _ports;
    readonly IMsiSink? _msiSink;
    readonly IDmaSpaceProvider _dma;

    /// <summary>BAR placements refused because they overlapped RAM, another region or claimed ports.</summary>
    public readonly Counter BarConflicts = new("pci.bar_conflicts");

    public PciBus(PhysicalMemoryMap memory, PortBus ports, IMsiSink? msiSink, IDmaSpaceProvider dma, byte busNumber = 0, Log? log = null)
    {
        Log = log ?? new Log();
        _memory = memory;
        _ports = ports;
        _msiSink = msiSink;
        _dma = dma;
        BusNumber = busNumber;
    }

    public byte BusNumber { get; }

    /// <summary>
    /// Highest guest-physical address (exclusive) a 64-bit BAR may decode at; BARs above it are
    /// left unmapped. Matches a 40-bit physical address width by default.
    /// </summary>
    public ulong MaxBarAddress { get; init; } = 1UL << 40;

    public PhysicalMemoryMap Memory => _memory;
    public PortBus Ports => _ports;

    /// <summary>Functions in device/function order.</summary>
    public IEnumerable<PciFunction> Functions => _functions.OfType<PciFunction>();

    public PciFunction? Find(int device, int function) =>
        (uint)device < 32 && (uint)function < 8 ? _functions[device << 3 | function] : null;

    /// <summary>
    /// Puts <paramref name="function"/> at <paramref name="device"/>.<paramref name="functionNumber"/>.
    /// Machine construction only (not thread-safe against guest accesses).
    /// </summary>
    /// <param name="intx">The interrupt input its INTx pin is routed to (null: not connected).</param>
    public void Add(PciFunction function, int device, int functionNumber, IIrqLine? intx = null)
    {
        if ((uint)device >= 32 || (uint)functionNumber >= 8)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(device), $"PCI {device}.{functionNumber} does not exist");
        }
        int devfn = device << 3 | functionNumber;
        if (_functions[devfn] is { } other)
        {
            ThrowHelper.InvalidOperation($"PCI {BusNumber:x2}:{device:x2}.{functionNumber} is taken by {other.Name}");
        }
        ushort requesterId = (ushort)(BusNumber << 8 | devfn);
        function.Attach(this, BusNumber, (byte)devfn, _msiSink, _dma.ForRequester(requesterId), _dma as IAtsDmaSpaceProvider, intx);
        _functions[devfn] = function;

        // PCI 3.0, 6.2.1: function 0 of a multi-function device sets header type bit 7; software
        // probes functions 1-7 only when it is set (Linux pci_scan_slot).
        bool multi = false;
        for (int f = 1; f < 8; f++)
        {
            multi |= _functions[device << 3 | f] is not null;
        }
        _functions[device << 3]?.SetMultiFunction(multi);
    }

    /// <summary>
    /// Configuration read as the host bridge forwards it. Absent functions and other bus numbers read
    /// all ones (the master abort software probes for, PCI 3.0, 6.1).
    /// </summary>
    public uint ConfigRead(int bus, int devfn, int offset, int size)
    {
        if (bus != BusNumber || (uint)devfn > 255 || _functions[devfn] is not { } f)
        {
            return PciFunction.AllOnes(size);
        }
        return f.ConfigRead(offset, size);
    }

    /// <summary>Configuration write; to an absent function it is dropped.</summary>
    public void ConfigWrite(int bus, int devfn, int offset, int size, uint value)
    {
        if (bus == BusNumber && (uint)devfn <= 255 && _functions[devfn] is { } f)
        {
            f.ConfigWrite(offset, size, value);
        }
    }

    /// <summary>Re-evaluates every BAR of the bus against its registers and maps or unmaps it.</summary>
    internal void UpdateDecode()
    {
        lock (_mapLock)
        {
            // First drop what moved or lost decode, so a BAR moving into a place another BAR just
            // left is not refused; then map what should decode and is not mapped yet.
            foreach (var f in _functions)
            {
                if (f is null)
                {
                    continue;
                }
                for (int i = 0; i < PciConfig.BarCount; i++)
                {
                    var bar = f.GetBar(i);
                    if (!bar.Mapped)
                    {
                        continue;
                    }
                    bool want = f.TryGetDecodedAddress(i, MaxBarAddress, out ulong address);
                    if (!want || address != bar.MappedBase)
                    {
                        Unmap(bar);
                    }
                }
            }
            foreach (var f in _functions)
            {
                if (f is null)
                {
                    continue;
                }
                for (int i = 0; i < PciConfig.BarCount; i++)
                {
                    var bar = f.GetBar(i);
                    if (bar.Mapped)
                    {
                        continue;
                    }
                    if (!f.TryGetDecodedAddress(i, MaxBarAddress, out ulong address))
                    {
                        bar.RefusedBase = ulong.MaxValue;
                        continue;
                    }
                    TryMap(f, bar, address);
                }
            }
        }
    }

    void Unmap(PciFunction.Bar bar)
    {
        if (bar.Kind == PciBarKind.Io)
        {
            _ports.Unregister((ushort)bar.MappedBase, (int)bar.Size);
        }
        else
        {
            _memory.RemoveMmio(bar.Mmio!, bar.MappedBase);
        }
        bar.Mapped = false;
    }

    void TryMap(PciFunction f, PciFunction.Bar bar, ulong address)
    {
        string? conflict = bar.Kind == PciBarKind.Io ? PortConflict(address, bar.Size) : MemoryConflict(address, bar.Size);
        if (conflict is null)
        {
            if (bar.Kind == PciBarKind.Io)
            {
                _ports.Register((ushort)address, (int)bar.Size, bar.Ports!);
            }
            else
            {
                try
                {
                    _memory.AddMmio(address, bar.Size, bar.Mmio!);
                }
                catch (InvalidOperationException)
                {
                    // A non-PCI region was added concurrently between the check and the add.
                    conflict = "a region added meanwhile";
                }
            }
        }
        if (conflict is null)
        {
            bar.Mapped = true;
            bar.MappedBase = address;
            bar.RefusedBase = ulong.MaxValue;
            return;
        }
        if (bar.RefusedBase != address)
        {
            bar.RefusedBase = address;
            BarConflicts.Increment();
            Log.Once($"pci.bar_conflict.{f.Location}.{bar.Index}", "pci",
                $"{f.Location} {f.Name} BAR{bar.Index} at 0x{address:x} (+0x{bar.Size:x}) overlaps {conflict}; not decoded until moved");
        }
    }

    string? MemoryConflict(ulong address, ulong size)
    {
        ulong end = address + size;
        var ram = _memory.Ram;
        if (address < ram.LowRamEnd || (ram.HighRamSize > 0 && end > GuestMemory.FourGiB && address < ram.HighRamEnd))
        {
            return "guest RAM";
        }
        foreach (var r in _memory.Regions)
        {
            if (address < r.End && r.Base < end)
            {
                return r.Device.Name;
            }
        }
        return null;
    }

    string? PortConflict(ulong address, ulong size)
    {
        for (ulong p = address; p < address + size; p++)
        {
            if (_ports.DeviceAt((ushort)p) is { } d)
            {
                return d.Name;
            }
        }
        return null;
    }
}
