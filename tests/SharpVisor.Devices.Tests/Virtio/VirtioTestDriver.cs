using System.Buffers.Binary;
using SharpVisor.Core;
using SharpVisor.Devices.Pci;
using SharpVisor.Devices.Tests.Pci;
using SharpVisor.Devices.Virtio;

namespace SharpVisor.Devices.Tests.Virtio;

/// <summary>
/// A guest-side virtio driver doing what Linux 6.1's virtio_pci_modern does: capability walk
/// (vp_modern_probe / virtio_pci_find_capability), reset, ACKNOWLEDGE, DRIVER, feature
/// negotiation in 32-bit windows, FEATURES_OK re-read, MSI-X vectors (config + one per queue),
/// queue setup (setup_vq), DRIVER_OK. Everything goes through configuration space and MMIO of a
/// <see cref="PciTestRig"/>, rings and buffers live in its guest RAM.
/// </summary>
sealed class VirtioTestDriver : IDisposable
{
    public const int Slot = 3;
    public readonly PciTestRig Rig;
    public readonly VirtioDevice Device;
    public readonly VirtioPciTransport Transport;
    public readonly RecordingIrqLine Intx = new();
    public readonly Dictionary<byte, (int Bar, uint Offset, uint Length, int CapOffset)> Caps = [];
    public uint NotifyMultiplier;
    public ulong BarBase;
    public DriverQueue[] Queues = [];
    ulong _nextFree = 0x10_0000;

    /// <param name="dma">The requester's DMA space, bound to guest RAM once the rig exists (default: identity).</param>
    /// <summary>
    /// A second machine continuing from <paramref name="state"/>: a copy of this rig's RAM, a fresh
    /// transport around <paramref name="freshDevice"/> at the same slot restored from the state, and
    /// the driver's own bookkeeping (queues, allocator) as it was here.
    /// </summary>
    public VirtioTestDriver RestoredCopy(VirtioDevice freshDevice, VirtioPciState state)
    {
        var copy = new VirtioTestDriver(freshDevice, this);
        copy.Transport.RestoreState(state);
        return copy;
    }

    VirtioTestDriver(VirtioDevice device, VirtioTestDriver original)
    {
        Rig = new PciTestRig();
        var chunk = new byte[1 << 20];
        for (ulong a = 0; a < original.Rig.Ram.Size; a += (ulong)chunk.Length)
        {
            Assert.True(original.Rig.Ram.TryRead(a, chunk));
            Assert.True(Rig.Ram.TryWrite(a, chunk));
        }
        Device = device;
        Transport = new VirtioPciTransport(device);
        Rig.Bus.Add(Transport, Slot, 0, Intx);
        foreach (var (type, cap) in original.Caps)
        {
            Caps[type] = cap;
        }
        NotifyMultiplier = original.NotifyMultiplier;
        BarBase = original.BarBase;
        _nextFree = original._nextFree;
        Queues = [.. original.Queues.Select(q => q.CopyFor(this))];
    }

    public VirtioTestDriver(VirtioDevice device, CheckingDmaProvider? dma = null)
    {
        Rig = new PciTestRig(dma: dma);
        dma?.Bind(new IdentityDmaSpace(Rig.Ram));
        Device = device;
        Transport = new VirtioPciTransport(device);
        Rig.Bus.Add(Transport, Slot, 0, Intx);
        PciFirmware.AssignResources(Rig.Bus);
        // pci_enable_device + pci_set_master.
        uint command = Cfg(PciConfig.Command, 2);
        CfgWrite(PciConfig.Command, 2, command | (uint)(PciCommand.MemorySpace | PciCommand.BusMaster));
        WalkCapabilities();
    }

    public uint Cfg(int offset, int size) => Rig.EcamRead(0, Slot, 0, offset, size);
    public void CfgWrite(int offset, int size, uint value) => Rig.EcamWrite(0, Slot, 0, offset, size, value);

    void WalkCapabilities()
    {
        int cap = (int)Cfg(PciConfig.CapabilitiesPointer, 1);
        for (int guard = 0; cap != 0 && guard < 48; guard++)
        {
            if (Cfg(cap, 1) == PciCapabilityId.VendorSpecific)
            {
                byte type = (byte)Cfg(cap + 3, 1);
                // Linux keeps the first capability of each type (virtio_pci_find_capability).
                Caps.TryAdd(type, ((int)Cfg(cap + 4, 1), Cfg(cap + 8, 4), Cfg(cap + 12, 4), cap));
                if (type == VirtioPci.CapNotifyCfg)
                {
                    NotifyMultiplier = Cfg(cap + 16, 4);
                }
            }
            cap = (int)Cfg(cap + 1, 1);
        }
        int bar = Caps[VirtioPci.CapCommonCfg].Bar;
        ulong low = Cfg(PciConfig.Bar0 + 4 * bar, 4);
        ulong high = Cfg(PciConfig.Bar0 + 4 * bar + 4, 4);
        BarBase = (high << 32) | (low & ~0xFUL);
    }

    ulong Address(byte capType, uint offset) => BarBase + Caps[capType].Offset + offset;

    public ulong Common(int offset, int size) => Rig.Memory.Read(Address(VirtioPci.CapCommonCfg, (uint)offset), size);
    public void CommonWrite(int offset, int size, ulong value) => Rig.Memory.Write(Address(VirtioPci.CapCommonCfg, (uint)offset), size, value);
    public ulong DeviceCfg(int offset, int size) => Rig.Memory.Read(Address(VirtioPci.CapDeviceCfg, (uint)offset), size);
    public void DeviceCfgWrite(int offset, int size, ulong value) => Rig.Memory.Write(Address(VirtioPci.CapDeviceCfg, (uint)offset), size, value);
    public byte ReadIsr() => (byte)Rig.Memory.Read(Address(VirtioPci.CapIsrCfg, 0), 1);
    public byte Status => (byte)Common(VirtioPci.DeviceStatus, 1);

    public void AddStatus(byte bits) => CommonWrite(VirtioPci.DeviceStatus, 1, Status | (ulong)bits);

    public ulong ReadDeviceFeatures()
    {
        CommonWrite(VirtioPci.DeviceFeatureSelect, 4, 0);
        ulong low = Common(VirtioPci.DeviceFeature, 4);
        CommonWrite(VirtioPci.DeviceFeatureSelect, 4, 1);
        return low | Common(VirtioPci.DeviceFeature, 4) << 32;
    }

    public void WriteDriverFeatures(ulong features)
    {
        CommonWrite(VirtioPci.DriverFeatureSelect, 4, 0);
        CommonWrite(VirtioPci.DriverFeature, 4, (uint)features);
        CommonWrite(VirtioPci.DriverFeatureSelect, 4, 1);
        CommonWrite(VirtioPci.DriverFeature, 4, features >> 32);
    }

    /// <summary>Reset, ACKNOWLEDGE, DRIVER, features; returns whether FEATURES_OK stuck.</summary>
    public bool Negotiate(ulong features)
    {
        CommonWrite(VirtioPci.DeviceStatus, 1, 0);
        Assert.Equal(0, Status); // vp_reset waits until status reads 0
        AddStatus(VirtioPci.StatusAcknowledge);
        AddStatus(VirtioPci.StatusDriver);
        WriteDriverFeatures(features);
        AddStatus(VirtioPci.StatusFeaturesOk);
        return (Status & VirtioPci.StatusFeaturesOk) != 0;
    }

    /// <summary>The whole probe with every offered feature accepted (as Linux does for the ones it knows).</summary>
    public void Start(ulong? features = null, bool msix = true, ushort queueSize = 0, bool driverOk = true)
    {
        Assert.True(Negotiate(features ?? ReadDeviceFeatures()));
        if (msix)
        {
            EnableMsiX();
            CommonWrite(VirtioPci.ConfigMsixVector, 2, 0);
            Assert.Equal(0UL, Common(VirtioPci.ConfigMsixVector, 2));
        }
        int count = (int)Common(VirtioPci.NumQueues, 2);
        Queues = new DriverQueue[count];
        for (int i = 0; i < count; i++)
        {
            CommonWrite(VirtioPci.QueueSelect, 2, (ulong)i);
            ushort max = (ushort)Common(VirtioPci.QueueSize, 2);
            ushort size = queueSize != 0 ? queueSize : max;
            var q = new DriverQueue(this, i, size, Allocate(16UL * size, 16), Allocate(6 + 2UL * size, 2), Allocate(6 + 8UL * size, 4));
            Queues[i] = q;
            CommonWrite(VirtioPci.QueueSize, 2, size);
            // vp_iowrite64_twopart: two 32-bit writes each.
            WriteTwoPart(VirtioPci.QueueDesc, q.Desc);
            WriteTwoPart(VirtioPci.QueueDriver, q.Avail);
            WriteTwoPart(VirtioPci.QueueDevice, q.Used);
            if (msix)
            {
                CommonWrite(VirtioPci.QueueMsixVector, 2, (ulong)(i + 1));
                Assert.Equal((ulong)(i + 1), Common(VirtioPci.QueueMsixVector, 2));
            }
            ulong notifyOff = Common(VirtioPci.QueueNotifyOff, 2);
            q.NotifyAddress = Address(VirtioPci.CapNotifyCfg, (uint)(notifyOff * NotifyMultiplier));
            Assert.True(notifyOff * NotifyMultiplier + 2 <= Caps[VirtioPci.CapNotifyCfg].Length);
            CommonWrite(VirtioPci.QueueEnable, 2, 1);
            Assert.Equal(1UL, Common(VirtioPci.QueueEnable, 2));
        }
        if (driverOk)
        {
            AddStatus(VirtioPci.StatusDriverOk);
        }
    }

    void WriteTwoPart(int offset, ulong value)
    {
        CommonWrite(offset, 4, (uint)value);
        CommonWrite(offset + 4, 4, value >> 32);
    }

    public void EnableMsiX()
    {
        int cap = Transport.MsiXCapabilityOffset;
        uint control = Cfg(cap + 2, 2);
        int vectors = (int)(control & 0x7FF) + 1;
        ulong table = BarBase + VirtioPci.MsixTableOffset;
        for (int v = 0; v < vectors; v++)
        {
            Rig.Memory.Write(table + 16UL * (uint)v, 4, 0xFEE0_0000);
            Rig.Memory.Write(table + 16UL * (uint)v + 4, 4, 0);
            Rig.Memory.Write(table + 16UL * (uint)v + 8, 4, 0x40 + (uint)v); // data = vector number + 0x40
            Rig.Memory.Write(table + 16UL * (uint)v + 12, 4, 0);             // unmask
        }
        CfgWrite(cap + 2, 2, control | 0x8000);
    }

    /// <summary>MSI-X messages received for device vector <paramref name="vector"/>.</summary>
    public int MsiCount(int vector)
    {
        lock (Rig.Msi.Messages)
        {
            return Rig.Msi.Messages.Count(m => m.Data == 0x40 + (uint)vector);
        }
    }

    public ulong Allocate(ulong length, ulong align = 16)
    {
        _nextFree = (_nextFree + align - 1) & ~(align - 1);
        ulong a = _nextFree;
        _nextFree += length;
        return a;
    }

    public ulong AllocateData(ReadOnlySpan<byte> bytes)
    {
        ulong a = Allocate((ulong)Math.Max(1, bytes.Length));
        Assert.True(Rig.Ram.TryWrite(a, bytes));
        return a;
    }

    public byte[] ReadRam(ulong address, int length)
    {
        var b = new byte[length];
        Assert.True(Rig.Ram.TryRead(address, b));
        return b;
    }

    public void Dispose()
    {
        (Device as IDisposable)?.Dispose();
        Rig.Dispose();
    }
}

/// <summary>The driver's side of one split virtqueue in guest RAM.</summary>
sealed class DriverQueue(VirtioTestDriver driver, int index, ushort size, ulong desc, ulong avail, ulong used)
{
    public readonly int Index = index;
    public readonly ushort Size = size;
    public readonly ulong Desc = desc, Avail = avail, Used = used;
    public ulong NotifyAddress;
    ushort _availIndex;
    ushort _nextDesc;
    ushort _lastUsed;

    GuestMemory Ram => driver.Rig.Ram;

    /// <summary>This queue's driver-side bookkeeping, for the same queue on a restored copy of the machine.</summary>
    public DriverQueue CopyFor(VirtioTestDriver other) =>
        new(other, Index, Size, Desc, Avail, Used) { NotifyAddress = NotifyAddress, _availIndex = _availIndex, _nextDesc = _nextDesc, _lastUsed = _lastUsed };

    public void WriteDescriptor(ulong table, int i, ulong address, uint length, ushort flags, ushort next)
    {
        Span<byte> d = stackalloc byte[16];
        BinaryPrimitives.WriteUInt64LittleEndian(d, address);
        BinaryPrimitives.WriteUInt32LittleEndian(d[8..], length);
        BinaryPrimitives.WriteUInt16LittleEndian(d[12..], flags);
        BinaryPrimitives.WriteUInt16LittleEndian(d[14..], next);
        Assert.True(Ram.TryWrite(table + 16UL * (uint)i, d));
    }

    /// <summary>Builds a chain of direct descriptors and publishes it (no notify). Returns the head.</summary>
    public ushort Post(params (ulong Address, uint Length, bool Writable)[] buffers)
    {
        ushort head = _nextDesc;
        for (int i = 0; i < buffers.Length; i++)
        {
            int d = (head + i) % Size;
            bool last = i == buffers.Length - 1;
            ushort flags = (ushort)((buffers[i].Writable ? Virtqueue.DescFlagWrite : 0) | (last ? 0 : Virtqueue.DescFlagNext));
            WriteDescriptor(Desc, d, buffers[i].Address, buffers[i].Length, flags, (ushort)((d + 1) % Size));
        }
        _nextDesc = (ushort)((head + buffers.Length) % Size);
        PublishHead(head);
        return head;
    }

    /// <summary>Publishes a chain through one indirect descriptor.</summary>
    public ushort PostIndirect(params (ulong Address, uint Length, bool Writable)[] buffers)
    {
        ulong table = driver.Allocate(16UL * (uint)buffers.Length, 16);
        for (int i = 0; i < buffers.Length; i++)
        {
            bool last = i == buffers.Length - 1;
            ushort flags = (ushort)((buffers[i].Writable ? Virtqueue.DescFlagWrite : 0) | (last ? 0 : Virtqueue.DescFlagNext));
            WriteDescriptor(table, i, buffers[i].Address, buffers[i].Length, flags, (ushort)(i + 1));
        }
        ushort head = _nextDesc;
        WriteDescriptor(Desc, head, table, 16u * (uint)buffers.Length, Virtqueue.DescFlagIndirect, 0);
        _nextDesc = (ushort)((head + 1) % Size);
        PublishHead(head);
        return head;
    }

    public void PublishHead(ushort head)
    {
        Span<byte> b = stackalloc byte[2];
        BinaryPrimitives.WriteUInt16LittleEndian(b, head);
        Assert.True(Ram.TryWrite(Avail + 4 + 2UL * (uint)(_availIndex % Size), b));
        _availIndex++;
        SetAvailIndex(_availIndex);
    }

    public void SetAvailIndex(ushort value)
    {
        Span<byte> b = stackalloc byte[2];
        BinaryPrimitives.WriteUInt16LittleEndian(b, value);
        Assert.True(Ram.TryWrite(Avail + 2, b));
    }

    public void SetAvailFlags(ushort value)
    {
        Span<byte> b = stackalloc byte[2];
        BinaryPrimitives.WriteUInt16LittleEndian(b, value);
        Assert.True(Ram.TryWrite(Avail, b));
    }

    public void SetUsedEvent(ushort value)
    {
        Span<byte> b = stackalloc byte[2];
        BinaryPrimitives.WriteUInt16LittleEndian(b, value);
        Assert.True(Ram.TryWrite(Avail + 4 + 2UL * Size, b));
    }

    public ushort AvailEvent => (ushort)(Ram.ReadU32(Used + 4 + 8UL * Size) & 0xFFFF);
    public ushort UsedIndex => (ushort)(Ram.ReadU32(Used) >> 16);

    public void Notify() => driver.Rig.Memory.Write(NotifyAddress, 2, (ulong)Index);

    /// <summary>Next used element, or null when none is new.</summary>
    public (uint Id, uint Length)? TakeUsed()
    {
        if (UsedIndex == _lastUsed)
        {
            return null;
        }
        ulong e = Used + 4 + 8UL * (uint)(_lastUsed % Size);
        _lastUsed++;
        return (Ram.ReadU32(e), Ram.ReadU32(e + 4));
    }
}

/// <summary>
/// Identity DMA that lets a test see and veto every device access (the property tests record
/// every write the device makes and count all accesses to prove the work is bounded).
/// </summary>
sealed class CheckingDmaProvider : IDmaSpaceProvider, IDmaSpace
{
    IDmaSpace? _inner;
    public Action<ulong, int>? OnWrite;
    /// <summary>Addresses an "IOMMU" refuses (the access returns <see cref="DmaStatus.Blocked"/>).</summary>
    public Func<ulong, bool>? Blocked;
    public long Accesses;

    public void Bind(IDmaSpace inner) => _inner = inner;
    public IDmaSpace ForRequester(ushort requesterId) => this;

    public DmaStatus Read(ulong address, Span<byte> destination)
    {
        Accesses++;
        return Blocked?.Invoke(address) == true ? DmaStatus.Blocked : _inner!.Read(address, destination);
    }

    public DmaStatus Write(ulong address, ReadOnlySpan<byte> source)
    {
        Accesses++;
        var status = Blocked?.Invoke(address) == true ? DmaStatus.Blocked : _inner!.Write(address, source);
        if (status == DmaStatus.Ok)
        {
            OnWrite?.Invoke(address, source.Length);
        }
        return status;
    }
}
