namespace SharpVisor.Core;

/// <summary>
/// A device register block in the port I/O space. Devices see offsets from their base, never
/// absolute ports (cloud-hypervisor's BusDevice shape), so one device type can sit anywhere.
/// </summary>
public interface IPortDevice
{
    string Name { get; }
    /// <summary>Reads 1, 2 or 4 bytes at <paramref name="offset"/> from the device's base port.</summary>
    uint PortRead(ushort offset, int size);
    void PortWrite(ushort offset, int size, uint value);
}

/// <summary>A device register block in the guest-physical (MMIO) address space.</summary>
public interface IMmioDevice
{
    string Name { get; }
    /// <summary>Reads 1, 2, 4 or 8 bytes at <paramref name="offset"/> from the region's base.</summary>
    ulong MmioRead(ulong offset, int size);
    void MmioWrite(ulong offset, int size, ulong value);
}

/// <summary>
/// The 64 Ki-port I/O space. Unclaimed ports read as all ones and ignore writes, like an ISA bus
/// with nothing driving it; each such access is counted.
/// </summary>
public sealed class PortBus
{
    readonly IPortDevice?[] _device = new IPortDevice?[65536];
    readonly ushort[] _base = new ushort[65536];
    public readonly Counter UnclaimedReads = new("ports.unclaimed_reads");
    public readonly Counter UnclaimedWrites = new("ports.unclaimed_writes");
    public IEnumerable<Counter> Counters => [UnclaimedReads, UnclaimedWrites];

    public void Register(ushort basePort, int count, IPortDevice device)
    {
        if (count <= 0 || basePort + count > 65536)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(count), $"port range 0x{basePort:x}+{count} is invalid");
        }
        for (int p = basePort; p < basePort + count; p++)
        {
            if (_device[p] is { } other)
            {
                ThrowHelper.InvalidOperation($"port 0x{p:x} claimed by both {other.Name} and {device.Name}");
            }
            _device[p] = device;
            _base[p] = basePort;
        }
    }

    public void Unregister(ushort basePort, int count)
    {
        for (int p = basePort; p < basePort + count && p < 65536; p++)
        {
            _device[p] = null;
        }
    }

    public IPortDevice? DeviceAt(ushort port) => _device[port];

    public uint Read(ushort port, int size)
    {
        if (_device[port] is { } d)
        {
            return d.PortRead((ushort)(port - _base[port]), size);
        }
        UnclaimedReads.Increment();
        return size switch { 1 => 0xFF, 2 => 0xFFFF, _ => 0xFFFF_FFFF };
    }

    public void Write(ushort port, int size, uint value)
    {
        if (_device[port] is { } d)
        {
            d.PortWrite((ushort)(port - _base[port]), size, value);
            return;
        }
        UnclaimedWrites.Increment();
    }
}

/// <summary>
/// The guest-physical address space as the CPU and DMA see it: RAM from <see cref="GuestMemory"/>
/// plus MMIO regions. Regions may be added and removed at run time (PCI BAR programming); lookups
/// read an immutable snapshot array so vCPU threads need no lock.
/// </summary>
public sealed class PhysicalMemoryMap(GuestMemory ram)
{
    public readonly record struct Region(ulong Base, ulong Size, IMmioDevice Device)
    {
        public ulong End => Base + Size;
    }

    Region[] _regions = [];
    readonly Lock _gate = new();
    public readonly Counter UnassignedReads = new("mmio.unassigned_reads");
    public readonly Counter UnassignedWrites = new("mmio.unassigned_writes");
    public IEnumerable<Counter> Counters => [UnassignedReads, UnassignedWrites];

    public GuestMemory Ram { get; } = ram;

    public IReadOnlyList<Region> Regions => _regions;

    public void AddMmio(ulong baseAddress, ulong size, IMmioDevice device)
    {
        if (size == 0 || baseAddress + size < baseAddress)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(size), $"MMIO region 0x{baseAddress:x}+0x{size:x} is invalid");
        }
        lock (_gate)
        {
            foreach (var r in _regions)
            {
                if (baseAddress < r.End && r.Base < baseAddress + size)
                {
                    ThrowHelper.InvalidOperation($"MMIO region of {device.Name} at 0x{baseAddress:x} overlaps {r.Device.Name}");
                }
            }
            var next = new Region[_regions.Length + 1];
            _regions.CopyTo(next, 0);
            next[^1] = new Region(baseAddress, size, device);
            Array.Sort(next, (a, b) => a.Base.CompareTo(b.Base));
            Volatile.Write(ref _regions, next);
        }
    }

    public void RemoveMmio(IMmioDevice device, ulong baseAddress)
    {
        lock (_gate)
        {
            Volatile.Write(ref _regions, _regions.Where(r => !(r.Device == device && r.Base == baseAddress)).ToArray());
        }
    }

    /// <summary>Finds the MMIO region holding <paramref name="gpa"/>.</summary>
    public bool TryFindMmio(ulong gpa, out Region region)
    {
        var regions = Volatile.Read(ref _regions);
        foreach (var r in regions)
        {
            if (gpa >= r.Base && gpa < r.End)
            {
                region = r;
                return true;
            }
        }
        region = default;
        return false;
    }

    /// <summary>Reads 1/2/4/8 bytes (little-endian) at a guest-physical address: RAM, MMIO, or all ones.</summary>
    public unsafe ulong Read(ulong gpa, int size)
    {
        long off = Ram.HostOffset(gpa);
        if (off >= 0 && Ram.IsRamRange(gpa, (ulong)size))
        {
            byte* p = Ram.HostBase + off;
            return size switch { 1 => *p, 2 => *(ushort*)p, 4 => *(uint*)p, _ => *(ulong*)p };
        }
        if (TryFindMmio(gpa, out var r) && gpa + (ulong)size <= r.End)
        {
            return r.Device.MmioRead(gpa - r.Base, size);
        }
        UnassignedReads.Increment();
        return size == 8 ? ulong.MaxValue : (1UL << (size * 8)) - 1;
    }

    public unsafe void Write(ulong gpa, int size, ulong value)
    {
        long off = Ram.HostOffset(gpa);
        if (off >= 0 && Ram.IsRamRange(gpa, (ulong)size))
        {
            Ram.NoteWrite((ulong)off, (ulong)size);
            byte* p = Ram.HostBase + off;
            switch (size)
            {
                case 1: *p = (byte)value; break;
                case 2: *(ushort*)p = (ushort)value; break;
                case 4: *(uint*)p = (uint)value; break;
                default: *(ulong*)p = value; break;
            }
            return;
        }
        if (TryFindMmio(gpa, out var r) && gpa + (ulong)size <= r.End)
        {
            r.Device.MmioWrite(gpa - r.Base, size, value);
            return;
        }
        UnassignedWrites.Increment();
    }
}
