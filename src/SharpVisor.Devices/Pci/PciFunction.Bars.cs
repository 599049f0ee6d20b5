using SharpVisor.Core;

namespace SharpVisor.Devices.Pci;

public abstract partial class PciFunction
{
    /// <summary>One Base Address Register and where the bus currently maps it.</summary>
    internal sealed class Bar(int index)
    {
        public int Index { get; } = index;
        public PciBarKind Kind { get; set; }
        public ulong Size { get; set; }
        public bool Prefetchable { get; set; }
        /// <summary>True for the register holding the upper half of a 64-bit BAR.</summary>
        public bool IsUpperHalf { get; set; }
        public IMmioDevice? Mmio { get; set; }
        public IPortDevice? Ports { get; set; }
        // Mapping state, owned by the bus (under its map lock).
        public bool Mapped { get; set; }
        public ulong MappedBase { get; set; }
        public ulong RefusedBase { get; set; } = ulong.MaxValue;
    }

    internal Bar GetBar(int index) => _bars[index];

    /// <summary>
    /// Declares BAR <paramref name="index"/> (a 64-bit BAR also takes index + 1). Size is a power of
    /// two: at least 4 bytes and at most 256 for I/O (PCI 3.0, 6.2.5.1), at least 16 bytes for memory.
    /// The register's address bits below the size are hardwired to 0, which is what makes the
    /// "write all ones, read back" sizing protocol work.
    /// </summary>
    protected void DefineBar(int index, PciBarKind kind, ulong size, bool prefetchable = false)
    {
        EnsureNotAttached();
        if ((uint)index >= PciConfig.BarCount || (kind == PciBarKind.Memory64 && index == PciConfig.BarCount - 1))
        {
            ThrowHelper.ArgumentOutOfRange(nameof(index), $"{Name}: BAR{index} cannot hold a {kind} BAR");
        }
        if (_bars[index].Kind != PciBarKind.None || _bars[index].IsUpperHalf
            || (kind == PciBarKind.Memory64 && (_bars[index + 1].Kind != PciBarKind.None || _bars[index + 1].IsUpperHalf)))
        {
            ThrowHelper.InvalidOperation($"{Name}: BAR{index} is already defined");
        }
        bool sizeOk = kind switch
        {
            PciBarKind.Io => size is >= 4 and <= 256,
            PciBarKind.Memory32 => size is >= 16 and <= 0x8000_0000,
            PciBarKind.Memory64 => size >= 16 && size <= 1UL << 62,
            _ => false,
        };
        if (!sizeOk || !ulong.IsPow2(size) || (kind == PciBarKind.Io && prefetchable))
        {
            ThrowHelper.ArgumentOutOfRange(nameof(size), $"{Name}: a {kind} BAR of 0x{size:x} bytes is invalid");
        }

        var bar = _bars[index];
        bar.Kind = kind;
        bar.Size = size;
        bar.Prefetchable = prefetchable;
        int offset = PciConfig.Bar0 + 4 * index;
        ulong addressMask = ~(size - 1);
        switch (kind)
        {
            case PciBarKind.Io:
                // Bit 0 = 1 marks I/O space. x86 has 64 Ki ports, so the upper 16 bits are
                // hardwired to 0, as PCI 3.0, 6.2.5.1 allows for devices decoding 64 KiB only.
                InitConfig(offset, 4, 0x1, (uint)addressMask & 0xFFFC);
                break;
            case PciBarKind.Memory32:
                InitConfig(offset, 4, prefetchable ? 0x8u : 0u, (uint)addressMask & 0xFFFF_FFF0);
                break;
            case PciBarKind.Memory64:
                // Type 10b in bits 2:1 = 64-bit decoder; the next register holds bits 63:32.
                InitConfig(offset, 4, 0x4u | (prefetchable ? 0x8u : 0u), (uint)addressMask & 0xFFFF_FFF0);
                InitConfig(offset + 4, 4, 0, (uint)(addressMask >> 32));
                _bars[index + 1].IsUpperHalf = true;
                break;
        }
    }

    /// <summary>
    /// Where BAR <paramref name="index"/> should be decoded now, or false when it should not be:
    /// not implemented, decode disabled in the command register, the function in D3hot, address 0, or an address that
    /// cannot be a real assignment (a 32-bit BAR touching the top of 4 GiB, the pattern software
    /// leaves while sizing; I/O beyond 64 KiB; memory beyond <paramref name="maxAddress"/>).
    /// </summary>
    internal bool TryGetDecodedAddress(int index, ulong maxAddress, out ulong address)
    {
        address = 0;
        var bar = _bars[index];
        if (bar.Kind == PciBarKind.None || bar.IsUpperHalf)
        {
            return false;
        }
        int offset = PciConfig.Bar0 + 4 * index;
        lock (_configLock)
        {
            if (InD3HotLocked)
            {
                return false;
            }
            uint command = ReadRaw(PciConfig.Command, 2);
            uint low = ReadRaw(offset, 4);
            switch (bar.Kind)
            {
                case PciBarKind.Io:
                    if ((command & (uint)PciCommand.IoSpace) == 0)
                    {
                        return false;
                    }
                    address = low & 0xFFFF_FFFC;
                    return address != 0 && address + bar.Size <= 0x1_0000;
                case PciBarKind.Memory32:
                    if ((command & (uint)PciCommand.MemorySpace) == 0)
                    {
                        return false;
                    }
                    address = low & 0xFFFF_FFF0;
                    return address != 0 && address + bar.Size < GuestMemory.FourGiB;
                default:
                    if ((command & (uint)PciCommand.MemorySpace) == 0)
                    {
                        return false;
                    }
                    address = ((ulong)ReadRaw(offset + 4, 4) << 32) | (low & 0xFFFF_FFF0);
                    return address != 0 && address + bar.Size > address && address + bar.Size <= maxAddress;
            }
        }
    }

    /// <summary>Reads <paramref name="size"/> bytes at <paramref name="offset"/> within BAR <paramref name="bar"/>.</summary>
    /// <remarks>The default reads all ones and counts a bad access (a BAR with no registers there).</remarks>
    protected virtual ulong BarRead(int bar, ulong offset, int size)
    {
        BadAccesses.Increment();
        return size == 8 ? ulong.MaxValue : (1UL << (size * 8)) - 1;
    }

    /// <summary>Writes within BAR <paramref name="bar"/>; the default ignores and counts the write.</summary>
    protected virtual void BarWrite(int bar, ulong offset, int size, ulong value) => BadAccesses.Increment();

    ulong DispatchBarRead(int bar, ulong offset, int size)
    {
        if (_msixCapability != 0 && TryMsiXRead(bar, offset, size, out ulong value))
        {
            return value;
        }
        return BarRead(bar, offset, size);
    }

    void DispatchBarWrite(int bar, ulong offset, int size, ulong value)
    {
        if (_msixCapability != 0 && TryMsiXWrite(bar, offset, size, value))
        {
            return;
        }
        BarWrite(bar, offset, size, value);
    }

    sealed class BarMmio(PciFunction function, int bar, string name) : IMmioDevice
    {
        public string Name { get; } = name;
        public ulong MmioRead(ulong offset, int size) => function.DispatchBarRead(bar, offset, size);
        public void MmioWrite(ulong offset, int size, ulong value) => function.DispatchBarWrite(bar, offset, size, value);
    }

    sealed class BarPorts(PciFunction function, int bar, string name) : IPortDevice
    {
        public string Name { get; } = name;
        public uint PortRead(ushort offset, int size) => (uint)function.DispatchBarRead(bar, offset, size);
        public void PortWrite(ushort offset, int size, uint value) => function.DispatchBarWrite(bar, offset, size, value);
    }
}
