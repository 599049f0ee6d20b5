using SharpVisor.Core;
using SharpVisor.Devices.Pci;
using static SharpVisor.Devices.Virtio.VirtioPci;

namespace SharpVisor.Devices.Virtio;

/// <summary>
/// The modern virtio PCI transport (virtio 1.2, 4.1) carrying one <see cref="VirtioDevice"/>:
/// vendor 0x1AF4, device 0x1040 + type, revision 1, the vendor capabilities (common, notify, ISR,
/// device, PCI config access) pointing into 64-bit memory BAR 4, MSI-X with one config vector plus
/// one per queue and the INTx/ISR fallback. It owns feature negotiation, device status, the queues'
/// registers and rings, and interrupts; the device supplies its type, features, configuration bytes
/// and what it does with each request.
/// </summary>
/// <remarks>
/// <para>Queues are processed synchronously when the driver writes the notify register (on the vCPU
/// thread), under the device lock; a reset (device_status = 0) takes the same lock and so waits
/// for in-flight requests. Interrupts are sent after the lock is released.</para>
/// <para>Re-entrancy: all DMA goes through the function's <see cref="IDmaSpace"/>, which reaches RAM
/// only (never MMIO), so a request aimed at the device's own BAR fails as "not RAM". As a second
/// line of defence a register access arriving on a thread that is inside this device is refused
/// (<see cref="ReentrantAccesses"/>), as QEMU's guard added after CVE-2023-0330.</para>
/// <para>Any driver error in a virtqueue sets DEVICE_NEEDS_RESET and sends a configuration change
/// interrupt (2.1.2, 4.1.4.5); the device then ignores notifications until reset.</para>
/// </remarks>
public sealed partial class VirtioPciTransport : PciFunction, IVirtioTransport
{
    const int MaxQueues = VirtioDevice.MaxQueues;

    readonly VirtioDevice _device;
    readonly Virtqueue[] _queues;
    readonly ulong _offeredFeatures;
    readonly int _pciCfgCapability;
    uint _deviceFeatureSelect;
    uint _driverFeatureSelect;
    ulong _driverFeatures;
    ushort _configVector = NoVector;
    byte _status;
    byte _isr;
    ushort _queueSelect;
    ulong _pendingQueueInterrupts;
    bool _pendingConfigInterrupt;
    byte _configGeneration;
    volatile int _activeThread;

    /// <summary>The device lock (the device's): guards registers, queues and device state.</summary>
    readonly Lock Gate;

    public readonly Counter QueueErrors;
    public readonly Counter ReentrantAccesses;
    public readonly Counter FeatureNegotiationFailures;
    public readonly Counter Notifications;
    public readonly Counter RequestsCompleted;

    /// <summary>
    /// Puts <paramref name="device"/> on the PCI transport. The transport offers the device's
    /// feature bits plus VERSION_1, ACCESS_PLATFORM, RING_INDIRECT_DESC and RING_EVENT_IDX.
    /// </summary>
    public VirtioPciTransport(VirtioDevice device)
        : base(device.Name, VirtioVendorId, (ushort)(ModernDeviceIdBase + (ushort)device.DeviceType), device.PciClassCode,
            revision: 1, subsystemVendorId: VirtioVendorId, subsystemId: 0x1100)
    {
        string name = device.Name;
        int queueCount = device.QueueCount;
        int deviceConfigSize = device.DeviceConfigSize;
        _device = device;
        Gate = device.Gate;
        _queues = new Virtqueue[queueCount];
        for (int i = 0; i < queueCount; i++)
        {
            _queues[i] = new Virtqueue(i, device.MaxQueueSize);
        }
        _offeredFeatures = device.DeviceFeatures | 1UL << FeatureVersion1 | 1UL << FeatureAccessPlatform
            | 1UL << FeatureRingIndirectDesc | 1UL << FeatureRingEventIdx;
        QueueErrors = new Counter($"virtio.{name}.queue_errors");
        ReentrantAccesses = new Counter($"virtio.{name}.reentrant_accesses");
        FeatureNegotiationFailures = new Counter($"virtio.{name}.feature_negotiation_failures");
        Notifications = new Counter($"virtio.{name}.notifications");
        RequestsCompleted = new Counter($"virtio.{name}.requests");

        InterruptPin = 1;
        DefineBar(BarIndex, PciBarKind.Memory64, BarSize, prefetchable: true);
        AddMsiXCapability(queueCount + 1, BarIndex, MsixTableOffset, BarIndex, MsixPbaOffset);
        AddVendorCapability(CapCommonCfg, CommonCfgOffset, CommonCfgLength, 16);
        AddVendorCapability(CapIsrCfg, IsrOffset, 1, 16);
        if (deviceConfigSize > 0)
        {
            AddVendorCapability(CapDeviceCfg, DeviceCfgOffset, (uint)deviceConfigSize, 16);
        }
        int notify = AddVendorCapability(CapNotifyCfg, NotifyOffset, (uint)queueCount * NotifyOffMultiplier, 20);
        InitConfig(notify + 16, 4, NotifyOffMultiplier);
        // 4.1.4.9 PCI configuration access: bar (byte 4), offset, length and pci_cfg_data are
        // driver-writable; a data access reaches the BAR (handled in OnConfigRead/OnConfigWritten).
        _pciCfgCapability = AddVendorCapability(CapPciCfg, 0, 0, 20);
        InitConfig(_pciCfgCapability + 4, 1, 0, 0xFF);
        InitConfig(_pciCfgCapability + 8, 4, 0, 0xFFFF_FFFF);
        InitConfig(_pciCfgCapability + 12, 4, 0, 0xFFFF_FFFF);
        InitConfig(_pciCfgCapability + 16, 4, 0, 0xFFFF_FFFF);
        device.Bind(this);
    }

    /// <summary>The device this transport carries.</summary>
    public VirtioDevice Device => _device;
    public VirtioDeviceType DeviceType => _device.DeviceType;
    public ulong OfferedFeatures => _offeredFeatures;

    public override IEnumerable<Counter> Counters =>
        [.. base.Counters, QueueErrors, ReentrantAccesses, FeatureNegotiationFailures, Notifications, RequestsCompleted, .. _device.Counters];

    public byte Status
    {
        get { lock (Gate) { return _status; } }
    }

    /// <summary>Features the driver accepted (valid once FEATURES_OK is set).</summary>
    public ulong NegotiatedFeatures
    {
        get { lock (Gate) { return _driverFeatures; } }
    }

    bool DriverOk => (_status & (StatusDriverOk | StatusNeedsReset)) == StatusDriverOk;
    bool IsNegotiated(int feature) => (_driverFeatures & 1UL << feature) != 0;

    bool IVirtioTransport.DriverOkLocked => DriverOk;
    ulong IVirtioTransport.DriverFeaturesLocked => _driverFeatures;

    int AddVendorCapability(byte cfgType, uint offset, uint length, int capLength)
    {
        // 4.1.4 struct virtio_pci_cap: vndr, next, len, cfg_type, bar, id, padding[2], offset, length.
        int cap = AddCapability(PciCapabilityId.VendorSpecific, capLength);
        InitConfig(cap + 2, 1, (uint)capLength);
        InitConfig(cap + 3, 1, cfgType);
        InitConfig(cap + 4, 1, BarIndex);
        InitConfig(cap + 8, 4, offset);
        InitConfig(cap + 12, 4, length);
        return cap;
    }

    /// <summary>
    /// Processes the available buffers of <paramref name="queue"/> (under <see cref="Gate"/>) and
    /// records whether it must interrupt; call <see cref="FlushInterrupts"/> after releasing the lock.
    /// </summary>
    void ProcessQueueLocked(int queue)
    {
        if (!DriverOk)
        {
            return;
        }
        var q = _queues[queue];
        ushort start = q.UsedIndex;
        // Bounded work per call: a driver on another vCPU cannot keep this thread here forever.
        int budget = 64 * q.MaxSize;
        var device = _device;
        while (budget-- > 0 && device.WantsBuffers(queue) && q.TryPop(out var chain))
        {
            bool ok = device.HandleRequest(queue, chain);
            if (chain.Faulted)
            {
                q.Fail(VirtqueueError.BufferNotMapped);
                break;
            }
            if (!ok)
            {
                q.Fail(VirtqueueError.MalformedRequest);
                break;
            }
            q.Complete(chain);
            RequestsCompleted.Increment();
        }
        if (q.Error != VirtqueueError.None)
        {
            EnterNeedsResetLocked(q.Error, queue);
        }
        if (q.NeedsInterrupt(start))
        {
            _pendingQueueInterrupts |= 1UL << queue;
        }
    }

    /// <summary>Runs <see cref="ProcessQueueLocked"/> from a non-register path (e.g. console input arrived).</summary>
    public void Kick(int queue)
    {
        lock (Gate)
        {
            // May nest inside a request (a console sink that feeds input back): keep the outer mark.
            int outer = _activeThread;
            _activeThread = Environment.CurrentManagedThreadId;
            try
            {
                ProcessQueueLocked(queue);
            }
            finally
            {
                _activeThread = outer;
            }
        }
        FlushInterrupts();
    }

    /// <summary>
    /// The device changed its configuration (a link went down): config_generation changes (4.1.4.3)
    /// and, once the driver is running, a configuration change interrupt is recorded (4.1.4.5).
    /// Call under <see cref="Gate"/>, then <see cref="FlushInterrupts"/> after releasing it.
    /// </summary>
    public void DeviceConfigChangedLocked()
    {
        _configGeneration++;
        if (DriverOk)
        {
            _pendingConfigInterrupt = true;
        }
    }

    void EnterNeedsResetLocked(VirtqueueError error, int queue)
    {
        if ((_status & StatusNeedsReset) != 0)
        {
            return;
        }
        QueueErrors.Increment();
        Log.Once($"virtio.{Location}.{error}", "virtio", $"{Location} {Name}: queue {queue}: {error}; device needs reset");
        _status |= StatusNeedsReset;
        if ((_status & StatusDriverOk) != 0)
        {
            _pendingConfigInterrupt = true;
        }
    }

    /// <summary>Sends the interrupts recorded under the lock. Call without holding <see cref="Gate"/>.</summary>
    public void FlushInterrupts()
    {
        Span<ushort> vectors = stackalloc ushort[MaxQueues + 1];
        int count = 0;
        bool msix = MsiXEnabled;
        bool intx = false;
        lock (Gate)
        {
            if (_pendingConfigInterrupt)
            {
                // 4.1.4.5: the config bit is set in ISR before any config notification.
                _isr |= IsrConfig;
                if (msix)
                {
                    vectors[count++] = _configVector;
                }
                intx = !msix;
            }
            for (ulong pending = _pendingQueueInterrupts; pending != 0; pending &= pending - 1)
            {
                int q = System.Numerics.BitOperations.TrailingZeroCount(pending);
                if (msix)
                {
                    vectors[count++] = _queues[q].MsixVector;
                }
                else
                {
                    _isr |= IsrQueue;
                    intx = true;
                }
            }
            _pendingQueueInterrupts = 0;
            _pendingConfigInterrupt = false;
        }
        for (int i = 0; i < count; i++)
        {
            if (vectors[i] != NoVector)
            {
                RaiseInterrupt(vectors[i]);
            }
        }
        if (intx)
        {
            RaiseInterrupt(0);
        }
    }

    // ---- BAR registers ----

    protected override ulong BarRead(int bar, ulong offset, int size)
    {
        if (bar != BarIndex || _activeThread == Environment.CurrentManagedThreadId)
        {
            return RefuseAccess(bar, size);
        }
        bool lowerIntx = false;
        ulong value;
        lock (Gate)
        {
            if (offset < CommonCfgOffset + CommonCfgLength)
            {
                value = ReadCommonLocked((int)offset, size);
            }
            else if (offset == IsrOffset && size == 1)
            {
                // 4.1.4.5.1: reading ISR clears it and deasserts INTx.
                value = _isr;
                _isr = 0;
                lowerIntx = true;
            }
            else if (offset >= DeviceCfgOffset && offset + (uint)size <= DeviceCfgOffset + (ulong)_device.DeviceConfigSize)
            {
                value = _device.ReadConfig((int)(offset - DeviceCfgOffset), size);
            }
            else
            {
                BadAccesses.Increment();
                value = 0;
            }
        }
        if (lowerIntx)
        {
            LowerInterrupt();
        }
        return value;
    }

    protected override void BarWrite(int bar, ulong offset, int size, ulong value)
    {
        if (bar != BarIndex || _activeThread == Environment.CurrentManagedThreadId)
        {
            RefuseAccess(bar, size);
            return;
        }
        bool reset;
        lock (Gate)
        {
            _activeThread = Environment.CurrentManagedThreadId;
            try
            {
                reset = WriteLocked(offset, size, value);
            }
            finally
            {
                _activeThread = 0;
            }
        }
        if (reset)
        {
            LowerInterrupt();
        }
        FlushInterrupts();
    }

    ulong RefuseAccess(int bar, int size)
    {
        if (bar == BarIndex)
        {
            ReentrantAccesses.Increment();
            Log.Once($"virtio.{Location}.reentry", "virtio", $"{Location} {Name}: register access from inside the device's own request processing refused");
        }
        else
        {
            BadAccesses.Increment();
        }
        return size == 8 ? ulong.MaxValue : (1UL << (size * 8)) - 1;
    }

    bool WriteLocked(ulong offset, int size, ulong value)
    {
        if (offset < CommonCfgOffset + CommonCfgLength)
        {
            return WriteCommonLocked((int)offset, size, value);
        }
        if (offset >= NotifyOffset && offset < NotifyOffset + (ulong)_queues.Length * NotifyOffMultiplier)
        {
            // 4.1.4.4: queue i's notify address is cap.offset + queue_notify_off * multiplier;
            // queue_notify_off is i here. The value written (the queue index) adds nothing.
            Notifications.Increment();
            ProcessQueueLocked((int)((offset - NotifyOffset) / NotifyOffMultiplier));
            return false;
        }
        if (offset >= DeviceCfgOffset && offset + (uint)size <= DeviceCfgOffset + (ulong)_device.DeviceConfigSize)
        {
            if (!_device.WriteConfig((int)(offset - DeviceCfgOffset), size, value))
            {
                BadAccesses.Increment(); // read-only configuration
            }
            return false;
        }
        BadAccesses.Increment(); // ISR is read-only; holes ignore writes
        return false;
    }

    Virtqueue? SelectedQueue => _queueSelect < _queues.Length ? _queues[_queueSelect] : null;

    ulong ReadCommonLocked(int offset, int size)
    {
        var q = SelectedQueue;
        if (offset >= QueueDesc)
        {
            // 64-bit address registers: one 8-byte or two 4-byte accesses (Linux's vp_iowrite64_twopart).
            int field = (offset - QueueDesc) / 8;
            ulong whole = q is null ? 0 : field switch { 0 => q.DescriptorTable, 1 => q.DriverArea, _ => q.DeviceArea };
            return (offset & 7, size) switch
            {
                (0, 8) => whole,
                (0, 4) => (uint)whole,
                (4, 4) => whole >> 32,
                _ => BadCommonAccess(),
            };
        }
        return (offset, size) switch
        {
            (DeviceFeatureSelect, 4) => _deviceFeatureSelect,
            (DeviceFeature, 4) => _deviceFeatureSelect < 2 ? (uint)(_offeredFeatures >> (int)(32 * _deviceFeatureSelect)) : 0,
            (DriverFeatureSelect, 4) => _driverFeatureSelect,
            (DriverFeature, 4) => _driverFeatureSelect < 2 ? (uint)(_driverFeatures >> (int)(32 * _driverFeatureSelect)) : 0,
            (ConfigMsixVector, 2) => _configVector,
            (NumQueues, 2) => (ulong)_queues.Length,
            (DeviceStatus, 1) => _status,
            (ConfigGeneration, 1) => _configGeneration, // changed by DeviceConfigChangedLocked
            (QueueSelect, 2) => _queueSelect,
            // 4.1.4.3.2: a queue that does not exist reads size 0.
            (QueueSize, 2) => q?.Size ?? 0UL,
            (QueueMsixVector, 2) => q?.MsixVector ?? (ulong)NoVector,
            (QueueEnable, 2) => q is { Enabled: true } ? 1UL : 0,
            (QueueNotifyOff, 2) => q is null ? 0UL : _queueSelect,
            _ => BadCommonAccess(),
        };
    }

    ulong BadCommonAccess()
    {
        BadAccesses.Increment();
        return 0;
    }

    /// <returns>True when the write reset the device.</returns>
    bool WriteCommonLocked(int offset, int size, ulong value)
    {
        var q = SelectedQueue;
        if (offset >= QueueDesc)
        {
            if (q is null || q.Enabled || (offset & 3) != 0 || size is not (4 or 8) || (size == 8 && (offset & 7) != 0))
            {
                // 4.1.4.3.2: the driver must not change a live queue's addresses.
                BadAccesses.Increment();
                return false;
            }
            int field = (offset - QueueDesc) / 8;
            ulong old = field switch { 0 => q.DescriptorTable, 1 => q.DriverArea, _ => q.DeviceArea };
            ulong updated = size == 8 ? value
                : (offset & 7) == 0 ? (old & 0xFFFF_FFFF_0000_0000) | (uint)value
                : (old & 0xFFFF_FFFF) | value << 32;
            switch (field)
            {
                case 0: q.DescriptorTable = updated; break;
                case 1: q.DriverArea = updated; break;
                default: q.DeviceArea = updated; break;
            }
            return false;
        }
        switch (offset, size)
        {
            case (DeviceFeatureSelect, 4):
                _deviceFeatureSelect = (uint)value;
                break;
            case (DriverFeatureSelect, 4):
                _driverFeatureSelect = (uint)value;
                break;
            case (DriverFeature, 4):
                // Features are frozen once FEATURES_OK is set (3.1.1); windows above 1 are empty.
                if ((_status & StatusFeaturesOk) != 0 || _driverFeatureSelect >= 2)
                {
                    BadAccesses.Increment();
                    break;
                }
                int shift = (int)(32 * _driverFeatureSelect);
                _driverFeatures = (_driverFeatures & ~(0xFFFF_FFFFUL << shift)) | (value & 0xFFFF_FFFF) << shift;
                break;
            case (ConfigMsixVector, 2):
                // An unusable vector reads back as NO_VECTOR, which Linux's vp_modern_config_vector checks.
                _configVector = value < (ulong)_queues.Length + 1 ? (ushort)value : NoVector;
                break;
            case (DeviceStatus, 1):
                return WriteStatusLocked((byte)value);
            case (QueueSelect, 2):
                _queueSelect = (ushort)value;
                break;
            case (QueueSize, 2):
                if (q is null || q.Enabled)
                {
                    BadAccesses.Increment();
                    break;
                }
                q.Size = (ushort)value; // checked when the queue is enabled
                break;
            case (QueueMsixVector, 2):
                if (q is null)
                {
                    BadAccesses.Increment();
                    break;
                }
                q.MsixVector = value < (ulong)_queues.Length + 1 ? (ushort)value : NoVector;
                break;
            case (QueueEnable, 2):
                if (q is null || q.Enabled || value != 1)
                {
                    // Writing 0 is not allowed (4.1.4.3.2: only queue_reset disables a queue).
                    BadAccesses.Increment();
                    break;
                }
                var error = q.Enable(Dma, IsNegotiated(FeatureRingEventIdx), IsNegotiated(FeatureRingIndirectDesc));
                if (error != VirtqueueError.None)
                {
                    EnterNeedsResetLocked(error, q.Index);
                }
                break;
            default:
                // Read-only registers (device_feature, num_queues, config_generation, queue_notify_off).
                BadAccesses.Increment();
                break;
        }
        return false;
    }

    bool WriteStatusLocked(byte value)
    {
        if (value == 0)
        {
            ResetLocked();
            return true;
        }
        byte old = _status;
        if ((value & StatusFeaturesOk) != 0 && (old & StatusFeaturesOk) == 0 && !FeaturesAcceptableLocked())
        {
            // 3.1.1 step 6: the driver re-reads status; FEATURES_OK still clear means "not supported".
            FeatureNegotiationFailures.Increment();
            Log.Once($"virtio.{Location}.features", "virtio", $"{Location} {Name}: driver features 0x{_driverFeatures:x} refused (offered 0x{_offeredFeatures:x})");
            value &= unchecked((byte)~StatusFeaturesOk);
        }
        // DEVICE_NEEDS_RESET belongs to the device; the driver cannot set or clear it.
        _status = (byte)((value & ~StatusNeedsReset) | (old & StatusNeedsReset));
        if ((_status & StatusDriverOk) != 0 && (old & StatusDriverOk) == 0)
        {
            _device.Activate();
            // Buffers the driver made available (and notified) before DRIVER_OK were not consumed
            // then (3.1.1: the device must not); take them now.
            for (int i = 0; i < _queues.Length; i++)
            {
                ProcessQueueLocked(i);
            }
        }
        return false;
    }

    bool FeaturesAcceptableLocked() =>
        (_driverFeatures & ~_offeredFeatures) == 0 && IsNegotiated(FeatureVersion1) && _device.AcceptFeatures(_driverFeatures);

    void ResetLocked()
    {
        // 4.1.4.3.2 / 2.4: writing 0 resets the device. Holding the lock means no request is in flight.
        _status = 0;
        _driverFeatures = 0;
        _deviceFeatureSelect = _driverFeatureSelect = 0;
        _configVector = NoVector;
        _queueSelect = 0;
        _isr = 0;
        _pendingQueueInterrupts = 0;
        _pendingConfigInterrupt = false;
        foreach (var q in _queues)
        {
            q.Reset();
        }
        _device.Reset();
    }

    // ---- 4.1.4.9 PCI configuration access capability ----

    protected override uint OnConfigRead(int offset, int size, uint value)
    {
        if (t_readingStoredData || offset < _pciCfgCapability + 16 || offset >= _pciCfgCapability + 20)
        {
            return value;
        }
        return TryGetPciCfgWindow(out uint barOffset, out int length) ? (uint)BarRead(BarIndex, barOffset, length) : 0;
    }

    protected override void OnConfigWritten(int offset, int size)
    {
        if (offset + size <= _pciCfgCapability + 16 || offset >= _pciCfgCapability + 20
            || !TryGetPciCfgWindow(out uint barOffset, out int length))
        {
            return;
        }
        uint data;
        t_readingStoredData = true; // the stored pci_cfg_data, not a window read
        try
        {
            data = ConfigRead(_pciCfgCapability + 16, 4);
        }
        finally
        {
            t_readingStoredData = false;
        }
        BarWrite(BarIndex, barOffset, length, data & (uint)((1UL << (8 * length)) - 1));
    }

    [ThreadStatic]
    static bool t_readingStoredData;

    bool TryGetPciCfgWindow(out uint offset, out int length)
    {
        int bar = (byte)ConfigRead(_pciCfgCapability + 4, 1);
        offset = ConfigRead(_pciCfgCapability + 8, 4);
        length = (int)ConfigRead(_pciCfgCapability + 12, 4);
        // 4.1.4.9.1: length 1, 2 or 4, offset aligned to it. MSI-X table accesses are not
        // forwarded (the base class owns the table); they read 0.
        if (bar != BarIndex || length is not (1 or 2 or 4) || offset % (uint)length != 0 || offset >= MsixTableOffset)
        {
            BadAccesses.Increment();
            return false;
        }
        return true;
    }
}
