using System.Buffers.Binary;
using SharpVisor.Core;

namespace SharpVisor.Devices.Virtio;

/// <summary>Why a virtqueue stopped: the driver broke a rule of virtio 1.2, 2.7 (split virtqueues).</summary>
public enum VirtqueueError
{
    None,
    /// <summary>Queue size zero, not a power of two, or above the maximum (2.7: "Queue Size ... power of 2").</summary>
    BadSize,
    /// <summary>Descriptor table not 16-aligned, driver area not 2-aligned or device area not 4-aligned (2.7, table "Virtqueue Part Alignment").</summary>
    RingUnaligned,
    /// <summary>A ring or the descriptor table is not (wholly) reachable through the DMA space.</summary>
    RingNotMapped,
    /// <summary>avail.idx moved more than the queue size past the last entry the device consumed.</summary>
    AvailIndexJump,
    HeadOutOfRange,
    NextOutOfRange,
    /// <summary>More descriptors than the queue (or indirect table) holds: a loop (2.7.5.3.1).</summary>
    ChainTooLong,
    /// <summary>An indirect table whose length is zero or not a multiple of 16 (2.7.5.3).</summary>
    IndirectLength,
    /// <summary>VIRTQ_DESC_F_INDIRECT inside an indirect table (2.7.5.3.1).</summary>
    NestedIndirect,
    /// <summary>VIRTQ_DESC_F_INDIRECT together with VIRTQ_DESC_F_NEXT (2.7.5.3.1).</summary>
    IndirectWithNext,
    /// <summary>VIRTQ_DESC_F_INDIRECT without VIRTIO_F_INDIRECT_DESC negotiated.</summary>
    IndirectNotNegotiated,
    ZeroLength,
    /// <summary>A device-readable descriptor after a device-writable one (2.7.4.2).</summary>
    ReadableAfterWritable,
    /// <summary>Buffer lengths that overflow 32 bits in sum, or an address range that wraps.</summary>
    LengthOverflow,
    /// <summary>A data buffer the device had to access is not reachable through the DMA space.</summary>
    BufferNotMapped,
    /// <summary>The device found a request it cannot parse (too short a header, no status byte).</summary>
    MalformedRequest,
}

/// <summary>One buffer of a descriptor chain: a guest bus address range, device-readable or -writable.</summary>
public readonly record struct VirtqSegment(ulong Address, uint Length, bool Writable);

/// <summary>
/// One request popped from a virtqueue. Instances are reused (one per queue): the segments live in
/// an array sized for the longest legal chain, so processing a request allocates nothing.
/// Readable segments come first (the walker enforces it), so byte offsets into "the readable part"
/// and "the writable part" are simple running sums.
/// </summary>
public sealed class DescriptorChain
{
    readonly VirtqSegment[] _segments;
    int _count;
    int _firstWritable;
    uint _written;

    internal DescriptorChain(int capacity) => _segments = new VirtqSegment[capacity];

    /// <summary>Head descriptor index: the id reported in the used ring.</summary>
    public ushort Head { get; private set; }
    public uint ReadableLength { get; private set; }
    public uint WritableLength { get; private set; }
    /// <summary>Bytes written into the writable part so far, at most its length (what goes to used.len).</summary>
    public uint BytesWritten => _written;
    /// <summary>True once a buffer access failed: the queue is then broken by the caller.</summary>
    public bool Faulted { get; private set; }
    public int SegmentCount => _count;
    public ReadOnlySpan<VirtqSegment> Segments => _segments.AsSpan(0, _count);

    internal IDmaSpace Dma { get; set; } = null!;
    internal int Capacity => _segments.Length;

    internal void Reset(ushort head)
    {
        Head = head;
        _count = 0;
        _firstWritable = 0;
        ReadableLength = 0;
        WritableLength = 0;
        _written = 0;
        Faulted = false;
    }

    internal void Add(ulong address, uint length, bool writable)
    {
        _segments[_count++] = new VirtqSegment(address, length, writable);
        if (writable)
        {
            WritableLength += length;
        }
        else
        {
            _firstWritable = _count;
            ReadableLength += length;
        }
    }

    /// <summary>Copies readable bytes starting at <paramref name="offset"/> into <paramref name="destination"/>.</summary>
    /// <returns>False (and <see cref="Faulted"/> set) if the range exceeds the readable part or DMA failed.</returns>
    public bool Read(uint offset, Span<byte> destination)
    {
        if ((ulong)offset + (uint)destination.Length > ReadableLength)
        {
            return false;
        }
        for (int i = 0; i < _firstWritable && !destination.IsEmpty; i++)
        {
            var s = _segments[i];
            if (offset >= s.Length)
            {
                offset -= s.Length;
                continue;
            }
            int n = (int)Math.Min(s.Length - offset, (uint)destination.Length);
            if (Dma.Read(s.Address + offset, destination[..n]) != DmaStatus.Ok)
            {
                Faulted = true;
                return false;
            }
            destination = destination[n..];
            offset = 0;
        }
        return true;
    }

    /// <summary>Copies <paramref name="source"/> into the writable part at <paramref name="offset"/>.</summary>
    /// <returns>False (and <see cref="Faulted"/> set) if the range exceeds the writable part or DMA failed.</returns>
    public bool Write(uint offset, ReadOnlySpan<byte> source)
    {
        if ((ulong)offset + (uint)source.Length > WritableLength)
        {
            return false;
        }
        uint total = (uint)source.Length;
        for (int i = _firstWritable; i < _count && !source.IsEmpty; i++)
        {
            var s = _segments[i];
            if (offset >= s.Length)
            {
                offset -= s.Length;
                continue;
            }
            int n = (int)Math.Min(s.Length - offset, (uint)source.Length);
            if (Dma.Write(s.Address + offset, source[..n]) != DmaStatus.Ok)
            {
                Faulted = true;
                return false;
            }
            source = source[n..];
            offset = 0;
        }
        _written = (uint)Math.Min((ulong)_written + total, WritableLength);
        return true;
    }
}

/// <summary>
/// A split virtqueue (virtio 1.2, 2.7) seen from the device: descriptor table, available (driver)
/// ring and used (device) ring, all accessed through the owning function's <see cref="IDmaSpace"/>
/// only, so an IOMMU translates every access. Every rule a hostile driver could break is checked
/// (docs: shared/design/reliability.md); a violation stops the queue with a
/// <see cref="VirtqueueError"/> and never throws. Not thread-safe: the transport serializes access
/// under its device lock.
/// </summary>
public sealed class Virtqueue : IPersistent<VirtqueueState>
{
    // 2.7.5 descriptor flags.
    public const ushort DescFlagNext = 1;
    public const ushort DescFlagWrite = 2;
    public const ushort DescFlagIndirect = 4;
    // 2.7.6 / 2.7.8 ring flags.
    public const ushort AvailFlagNoInterrupt = 1;
    const int DescriptorSize = 16;

    readonly DescriptorChain _chain;
    IDmaSpace _dma = Pci.DetachedDmaSpace.Instance;
    ushort _lastAvail;
    ushort _usedIndex;
    bool _eventIndex;
    bool _indirect;

    public Virtqueue(int index, ushort maxSize)
    {
        if (maxSize == 0 || (maxSize & (maxSize - 1)) != 0 || maxSize > 32768)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(maxSize), "a split virtqueue's maximum size is a power of two up to 32768");
        }
        Index = index;
        MaxSize = maxSize;
        _chain = new DescriptorChain(maxSize) { Dma = _dma };
        Reset();
    }

    public int Index { get; }
    public ushort MaxSize { get; }

    // Driver-programmed registers (virtio 1.2, 4.1.4.3 common configuration).
    public ushort Size { get; set; }
    public ulong DescriptorTable { get; set; }
    public ulong DriverArea { get; set; }
    public ulong DeviceArea { get; set; }
    public ushort MsixVector { get; set; }
    public bool Enabled { get; private set; }

    /// <summary>Why the queue stopped, or <see cref="VirtqueueError.None"/>.</summary>
    public VirtqueueError Error { get; private set; }
    public ushort UsedIndex => _usedIndex;
    public ushort LastAvailIndex => _lastAvail;

    /// <summary>Back to the reset state of 4.1.4.3: maximum size, addresses 0, disabled, no vector.</summary>
    public void Reset()
    {
        Size = MaxSize;
        DescriptorTable = DriverArea = DeviceArea = 0;
        MsixVector = VirtioPci.NoVector;
        Enabled = false;
        Error = VirtqueueError.None;
        _lastAvail = _usedIndex = 0;
    }

    /// <summary>Where rings and buffers are reached: the function's DMA space (set by <see cref="Enable"/> or the transport on restore).</summary>
    public IDmaSpace Dma
    {
        get => _dma;
        set
        {
            _dma = value;
            _chain.Dma = value;
        }
    }

    /// <summary>
    /// The driver wrote 1 to queue_enable: checks size and ring placement and starts the queue.
    /// Returns the error that prevented it (the queue then stays disabled).
    /// </summary>
    public VirtqueueError Enable(IDmaSpace dma, bool eventIndex, bool indirect)
    {
        Dma = dma;
        _eventIndex = eventIndex;
        _indirect = indirect;
        ushort size = Size;
        if (size == 0 || (size & (size - 1)) != 0 || size > MaxSize)
        {
            return Error = VirtqueueError.BadSize;
        }
        if ((DescriptorTable & 15) != 0 || (DriverArea & 1) != 0 || (DeviceArea & 3) != 0)
        {
            return Error = VirtqueueError.RingUnaligned;
        }
        // 2.7: descriptor table 16*size, available ring 6+2*size, used ring 6+8*size bytes.
        if (!Probe(DescriptorTable, (ulong)DescriptorSize * size) || !Probe(DriverArea, 6 + 2UL * size)
            || !Probe(DeviceArea, 6 + 8UL * size))
        {
            return Error = VirtqueueError.RingNotMapped;
        }
        _lastAvail = _usedIndex = 0;
        Error = VirtqueueError.None;
        Enabled = true;
        return VirtqueueError.None;
    }

    /// <summary>Stops the queue for good (until reset) with <paramref name="error"/>.</summary>
    public void Fail(VirtqueueError error)
    {
        if (Error == VirtqueueError.None)
        {
            Error = error;
        }
    }

    bool Probe(ulong address, ulong length)
    {
        // Touch the first and last byte of each page-sized piece: every byte of the area must be
        // reachable (an IOMMU maps pages, so one page can be present and the next not).
        Span<byte> b = stackalloc byte[1];
        if (address + length < address)
        {
            return false;
        }
        for (ulong p = address; p < address + length; p = (p | 0xFFF) + 1)
        {
            if (_dma.Read(p, b) != DmaStatus.Ok)
            {
                return false;
            }
        }
        return _dma.Read(address + length - 1, b) == DmaStatus.Ok;
    }

    /// <summary>
    /// Takes the next available descriptor chain. Returns false when the ring is empty, the queue is
    /// not running, or the driver broke a rule (then <see cref="Error"/> says which; the chain is not
    /// consumed). The returned chain is valid until the next call.
    /// </summary>
    public bool TryPop(out DescriptorChain chain)
    {
        chain = _chain;
        if (!Enabled || Error != VirtqueueError.None)
        {
            return false;
        }
        if (!TryReadU16(DriverArea + 2, out ushort availIndex))
        {
            Fail(VirtqueueError.RingNotMapped);
            return false;
        }
        int pending = (ushort)(availIndex - _lastAvail);
        if (pending == 0 && _eventIndex)
        {
            // 2.7.10: publish where we stand, then look again so a buffer added meanwhile (whose
            // notification the driver may have suppressed on the old avail_event) is not missed.
            if (!TryWriteU16(AvailEventAddress, _lastAvail))
            {
                Fail(VirtqueueError.RingNotMapped);
                return false;
            }
            Interlocked.MemoryBarrier();
            if (!TryReadU16(DriverArea + 2, out availIndex))
            {
                Fail(VirtqueueError.RingNotMapped);
                return false;
            }
            pending = (ushort)(availIndex - _lastAvail);
        }
        if (pending == 0)
        {
            return false;
        }
        if (pending > Size)
        {
            Fail(VirtqueueError.AvailIndexJump);
            return false;
        }
        // Read ring entries only after seeing the index (the driver wrote them before it).
        Interlocked.MemoryBarrier();
        if (!TryReadU16(DriverArea + 4 + 2UL * (uint)(_lastAvail & (Size - 1)), out ushort head))
        {
            Fail(VirtqueueError.RingNotMapped);
            return false;
        }
        var error = Walk(head);
        if (error != VirtqueueError.None)
        {
            Fail(error);
            return false;
        }
        _lastAvail++;
        if (_eventIndex && !TryWriteU16(AvailEventAddress, _lastAvail))
        {
            Fail(VirtqueueError.RingNotMapped);
            return false;
        }
        return true;
    }

    VirtqueueError Walk(ushort head)
    {
        if (head >= Size)
        {
            return VirtqueueError.HeadOutOfRange;
        }
        var chain = _chain;
        chain.Reset(head);
        Span<byte> raw = stackalloc byte[DescriptorSize];
        ulong table = DescriptorTable;
        uint tableSize = Size;
        uint index = head;
        uint visited = 0;
        bool inIndirect = false;
        ulong readable = 0, writable = 0;
        while (true)
        {
            if (++visited > tableSize)
            {
                return VirtqueueError.ChainTooLong;
            }
            if (_dma.Read(table + index * (ulong)DescriptorSize, raw) != DmaStatus.Ok)
            {
                return inIndirect ? VirtqueueError.BufferNotMapped : VirtqueueError.RingNotMapped;
            }
            // 2.7.5: le64 addr, le32 len, le16 flags, le16 next.
            ulong address = BinaryPrimitives.ReadUInt64LittleEndian(raw);
            uint length = BinaryPrimitives.ReadUInt32LittleEndian(raw[8..]);
            ushort flags = BinaryPrimitives.ReadUInt16LittleEndian(raw[12..]);
            ushort next = BinaryPrimitives.ReadUInt16LittleEndian(raw[14..]);
            if ((flags & DescFlagIndirect) != 0)
            {
                if (inIndirect)
                {
                    return VirtqueueError.NestedIndirect;
                }
                if (!_indirect)
                {
                    return VirtqueueError.IndirectNotNegotiated;
                }
                if ((flags & DescFlagNext) != 0)
                {
                    return VirtqueueError.IndirectWithNext;
                }
                if (length == 0 || length % DescriptorSize != 0)
                {
                    return VirtqueueError.IndirectLength;
                }
                if (address + length < address)
                {
                    return VirtqueueError.LengthOverflow;
                }
                // The whole chain may not exceed the queue size (2.7.5.3.1), so a bigger table is
                // malformed; this also bounds the walk and the segment array.
                if (length / DescriptorSize + (uint)chain.SegmentCount > (uint)chain.Capacity)
                {
                    return VirtqueueError.ChainTooLong;
                }
                table = address;
                tableSize = length / DescriptorSize;
                index = 0;
                visited = 0;
                inIndirect = true;
                continue;
            }
            if (length == 0)
            {
                return VirtqueueError.ZeroLength;
            }
            if (address + length < address)
            {
                return VirtqueueError.LengthOverflow;
            }
            bool isWritable = (flags & DescFlagWrite) != 0;
            if (!isWritable && writable != 0)
            {
                return VirtqueueError.ReadableAfterWritable;
            }
            if (chain.SegmentCount == chain.Capacity)
            {
                return VirtqueueError.ChainTooLong;
            }
            if (isWritable)
            {
                writable += length;
            }
            else
            {
                readable += length;
            }
            if (readable > uint.MaxValue || writable > uint.MaxValue)
            {
                return VirtqueueError.LengthOverflow;
            }
            chain.Add(address, length, isWritable);
            if ((flags & DescFlagNext) == 0)
            {
                return VirtqueueError.None;
            }
            if (next >= tableSize)
            {
                return VirtqueueError.NextOutOfRange;
            }
            index = next;
        }
    }

    /// <summary>
    /// Returns <paramref name="chain"/> to the driver through the used ring with used.len = the bytes
    /// the device wrote (never more: 2.7.8.1 "device MUST NOT set len larger than written").
    /// </summary>
    public bool Complete(DescriptorChain chain)
    {
        if (!Enabled || Error != VirtqueueError.None)
        {
            return false;
        }
        Span<byte> element = stackalloc byte[8];
        BinaryPrimitives.WriteUInt32LittleEndian(element, chain.Head);
        BinaryPrimitives.WriteUInt32LittleEndian(element[4..], chain.BytesWritten);
        ulong slot = DeviceArea + 4 + 8UL * (uint)(_usedIndex & (Size - 1));
        if (_dma.Write(slot, element) != DmaStatus.Ok)
        {
            Fail(VirtqueueError.RingNotMapped);
            return false;
        }
        // The element must be visible before the index that publishes it (2.7.8.2).
        Interlocked.MemoryBarrier();
        _usedIndex++;
        if (!TryWriteU16(DeviceArea + 2, _usedIndex))
        {
            Fail(VirtqueueError.RingNotMapped);
            return false;
        }
        return true;
    }

    /// <summary>
    /// Whether the driver wants an interrupt for the completions since used.idx was
    /// <paramref name="previousUsedIndex"/>: with VIRTIO_F_EVENT_IDX when used_event lies in
    /// (previous, now] (2.7.10, vring_need_event), otherwise unless avail.flags has
    /// VIRTQ_AVAIL_F_NO_INTERRUPT (2.7.7).
    /// </summary>
    public bool NeedsInterrupt(ushort previousUsedIndex)
    {
        if (!Enabled || _usedIndex == previousUsedIndex)
        {
            return false;
        }
        Interlocked.MemoryBarrier();
        if (_eventIndex)
        {
            if (!TryReadU16(DriverArea + 4 + 2UL * Size, out ushort usedEvent))
            {
                return true;
            }
            return (ushort)(_usedIndex - usedEvent - 1) < (ushort)(_usedIndex - previousUsedIndex);
        }
        return !TryReadU16(DriverArea, out ushort availFlags) || (availFlags & AvailFlagNoInterrupt) == 0;
    }

    // ---- state ----

    public VirtqueueState SaveState() => new()
    {
        Size = Size,
        Ready = Enabled,
        DescriptorTable = DescriptorTable,
        DriverArea = DriverArea,
        DeviceArea = DeviceArea,
        NextAvail = _lastAvail,
        NextUsed = _usedIndex,
        EventIndex = _eventIndex,
        IndirectDescriptors = _indirect,
        MsixVector = MsixVector,
        Error = Error,
    };

    /// <summary>Restores a state (the vector is not checked here: the transport knows its MSI-X table size).</summary>
    public void RestoreState(VirtqueueState state)
    {
        Check(state, $"virtqueue {Index}");
        Apply(state);
    }

    /// <summary>
    /// Refuses a state this queue could not be in. A ready queue passed <see cref="Enable"/>: size a
    /// power of two up to the maximum, rings aligned as 2.7 requires (descriptor table 16, driver
    /// area 2, device area 4) and not wrapping the address space, and the device has taken at most
    /// a queue's worth of chains it has not yet returned. A queue not ready holds whatever the driver
    /// wrote (checked when it is enabled) and has consumed nothing.
    /// </summary>
    internal void Check(VirtqueueState state, string component)
    {
        InvalidStateException.CheckVersion(state.Version, VirtqueueState.CurrentVersion, component);
        InvalidStateException.Check(Enum.IsDefined(state.Error), component, $"unknown error {(int)state.Error}");
        if (!state.Ready)
        {
            InvalidStateException.Check(state.NextAvail == 0 && state.NextUsed == 0, component,
                "a queue that is not ready has consumed nothing (next_avail and next_used must be 0)");
            return;
        }
        ushort size = state.Size;
        InvalidStateException.Check(size != 0 && (size & (size - 1)) == 0 && size <= MaxSize, component,
            $"size {size} is not a power of two up to {MaxSize}");
        InvalidStateException.Check((state.DescriptorTable & 15) == 0, component, $"descriptor table 0x{state.DescriptorTable:x} is not 16-byte aligned");
        InvalidStateException.Check((state.DriverArea & 1) == 0, component, $"driver area 0x{state.DriverArea:x} is not 2-byte aligned");
        InvalidStateException.Check((state.DeviceArea & 3) == 0, component, $"device area 0x{state.DeviceArea:x} is not 4-byte aligned");
        InvalidStateException.Check(state.DescriptorTable <= ulong.MaxValue - (ulong)DescriptorSize * size
            && state.DriverArea <= ulong.MaxValue - (6 + 2UL * size) && state.DeviceArea <= ulong.MaxValue - (6 + 8UL * size),
            component, "a ring wraps around the address space");
        InvalidStateException.Check((ushort)(state.NextAvail - state.NextUsed) <= size, component,
            $"next_avail {state.NextAvail} is more than the queue size past next_used {state.NextUsed}");
    }

    internal void Apply(VirtqueueState state)
    {
        Size = state.Size;
        Enabled = state.Ready;
        DescriptorTable = state.DescriptorTable;
        DriverArea = state.DriverArea;
        DeviceArea = state.DeviceArea;
        _lastAvail = state.NextAvail;
        _usedIndex = state.NextUsed;
        _eventIndex = state.EventIndex;
        _indirect = state.IndirectDescriptors;
        MsixVector = state.MsixVector;
        Error = state.Error;
    }

    ulong AvailEventAddress => DeviceArea + 4 + 8UL * Size;

    bool TryReadU16(ulong address, out ushort value)
    {
        Span<byte> b = stackalloc byte[2];
        bool ok = _dma.Read(address, b) == DmaStatus.Ok;
        value = BinaryPrimitives.ReadUInt16LittleEndian(b);
        return ok;
    }

    bool TryWriteU16(ulong address, ushort value)
    {
        Span<byte> b = stackalloc byte[2];
        BinaryPrimitives.WriteUInt16LittleEndian(b, value);
        return _dma.Write(address, b) == DmaStatus.Ok;
    }
}
