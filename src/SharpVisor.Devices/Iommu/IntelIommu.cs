using SharpVisor.Core;

namespace SharpVisor.Devices.Iommu;

/// <summary>
/// One Intel VT-d remapping hardware unit (Intel Virtualization Technology for Directed I/O
/// Architecture Specification, rev 4.x): the register file (chapter 11), legacy-mode DMA
/// remapping (chapter 3, structures in 9.1/9.3/9.8), fault recording and reporting (7.2, 7.3),
/// the context cache, IOTLB and paging-structure caches with register-based and queued
/// invalidation (6.2, 6.5), and interrupt remapping (chapter 5, IRTE in 9.10).
/// </summary>
/// <remarks>
/// Wiring: map it with <c>PhysicalMemoryMap.AddMmio(options.BaseAddress, options.RegionSize, unit)</c>;
/// give each PCI device <see cref="DmaSpaceFor"/>(its requester id) as its DMA space, and route
/// every MSI (devices and IOAPIC) through <see cref="InterruptRemapper"/>. The unit's own fault
/// and invalidation-completion events go to the event sink given here, which must be the
/// platform's direct (non-remapped) MSI path (spec 5.1.6: these are not subject to remapping).
/// All state is guarded by one lock; messages are sent after it is released. The registers are a
/// data table (VtdRegisterFile.cs); the guest-visible state is saved and restored as a
/// <see cref="VtdState"/> (IntelIommu.State.cs).
/// <para>
/// Scalable mode (ECAP.SMTS; IntelIommu.Scalable.cs): RTADDR.TTM=01b selects scalable-mode root
/// and context entries, PASID directory/table lookups through the PASID cache, and first-level
/// (IA-32e), second-level or pass-through translation per PASID entry; the queue then takes
/// 256-bit descriptors (IQA.DW) including the PASID-based types 6-8. ATS (ECAP.DT;
/// IntelIommu.Ats.cs, DeviceIotlb.cs): <see cref="AtsTranslate"/>, translated requests,
/// <see cref="AttachAtsEndpoint"/> and <see cref="CompleteDeviceTlbInvalidation"/>; give the
/// constructor the machine's <see cref="TimerQueue"/> so a silent device times out in virtual time.
/// Nested translation (ECAP.NEST), page requests (PRS) and posted interrupts are not implemented.
/// </para>
/// </remarks>
public sealed partial class IntelIommu : IMmioDevice
{
    /// <summary>The log of the VM this unit belongs to.</summary>
    readonly Log Log;

    const ulong PageMask4K = ~0xFFFUL;

    readonly VtdOptions _options;
    readonly GuestMemory _ram;
    readonly IMsiSink _eventSink;
    readonly IApicBus _apicBus;
    readonly Lock _lock = new();
    readonly ulong _cap;
    readonly ulong _ecap;
    /// <summary>Bits 51:HAW: address bits beyond the host address width, reserved in every table pointer.</summary>
    readonly ulong _beyondHaw;
    /// <summary>Bits HAW-1:12: the address field of table pointers and paging entries.</summary>
    readonly ulong _hawPageMask;

    readonly VtdContextCache _contextCache;
    readonly VtdIotlb _iotlb;
    readonly Dictionary<ushort, VtdDmaSpace> _dmaSpaces = [];
    readonly VtdPasidCache _pasidCache;
    /// <summary>Null when <see cref="VtdOptions.PagingStructureCaches"/> is off.</summary>
    readonly VtdPagingStructureCache? _psc;

    // ---- registers (chapter 11) ----
    /// <summary>Every register as the guest reads it, with the layout's masks (VtdRegisterFile.cs).</summary>
    readonly VtdRegisterFile _regs;
    readonly int _regionBytes;

    // ---- latched fields: what the unit acts on, copied from registers at a command ----
    ulong _activeRootTable;     // RTADDR.RTA latched by GCMD.SRTP (11.4.4.1)
    int _activeTableMode;       // RTADDR.TTM latched by GCMD.SRTP: 0 legacy, 1 scalable

    // Fault recording (7.2.1): where the next fault goes, and the last one recorded while it is
    // still pending (for compressing repeats).
    int _nextFaultIndex;
    int _lastFaultIndex = -1;

    /// <param name="timers">
    /// The machine's timer queue: bounds (in virtual time) how long an invalidation wait waits for
    /// device-TLB invalidation completions. Without it, devices must answer from inside
    /// <see cref="IAtsEndpoint.InvalidateDeviceTlb"/>, or the wait times out at once.
    /// </param>
    public IntelIommu(VtdOptions options, GuestMemory ram, IMsiSink eventSink, IApicBus apicBus, CounterRegistry? registry = null, string name = "dmar0",
        TimerQueue? timers = null, Log? log = null)
    {
        Log = log ?? new Log();
        options.Validate();
        _options = options;
        _ram = ram;
        _eventSink = eventSink;
        _apicBus = apicBus;
        Name = name;
        Counters = new VtdCounters(name, registry);
        _cap = options.CapabilityRegister();
        _ecap = options.ExtendedCapabilityRegister();
        _beyondHaw = ((1UL << 52) - 1) & ~((1UL << options.HostAddressWidth) - 1);
        _hawPageMask = ((1UL << options.HostAddressWidth) - 1) & PageMask4K;
        _contextCache = new VtdContextCache(options.ContextCacheSets, options.ContextCacheWays);
        _iotlb = new VtdIotlb(options.IotlbSets, options.IotlbWays);
        _pasidCache = new VtdPasidCache(options.PasidCacheSets, options.PasidCacheWays);
        _psc = options.PagingStructureCaches ? new VtdPagingStructureCache(options.PagingStructureCacheSets, options.PagingStructureCacheWays) : null;
        _regionBytes = (int)options.RegionSize;
        _regs = new VtdRegisterFile(VtdRegisterSpec.Layout(options, _cap, _ecap), _regionBytes);
        _timers = timers;
        _iec = new VtdIrte[options.InterruptEntryCacheEntries];
        _iecIndex = new int[options.InterruptEntryCacheEntries];
        Array.Fill(_iecIndex, -1);
        InterruptRemapper = new VtdInterruptRemapper(this);
        _invalidationTimer = timers?.Create($"{name}.devtlb_inv_timeout", OnInvalidationTimeout);
    }

    public string Name { get; }
    public VtdOptions Options => _options;
    public VtdCounters Counters { get; }
    public ulong Capability => _cap;
    public ulong ExtendedCapability => _ecap;

    /// <summary>The MSI path every device and IOAPIC message must take: remaps (or passes/blocks) then delivers.</summary>
    public IMsiSink InterruptRemapper { get; }

    /// <summary>Entries currently held by the IOTLB and context cache (for tests and statistics).</summary>
    public int IotlbCount { get { lock (_lock) return _iotlb.Count; } }
    public int ContextCacheCount { get { lock (_lock) return _contextCache.Count; } }

    /// <summary>The DMA view of one requester (bus &lt;&lt; 8 | devfn), translated by this unit.</summary>
    public IDmaSpace DmaSpaceFor(ushort requesterId)
    {
        lock (_lock)
        {
            if (!_dmaSpaces.TryGetValue(requesterId, out var space))
            {
                space = new VtdDmaSpace(this, VtdRequest.WithoutPasid(requesterId));
                _dmaSpaces.Add(requesterId, space);
            }
            return space;
        }
    }

    /// <summary>
    /// The DMA view of one requester's requests-with-PASID (scalable mode, 3.4.3): each access
    /// carries <paramref name="pasid"/> and, when <paramref name="privileged"/>, the supervisor
    /// attribute (honoured only when the PASID entry's SRE is set); with <paramref name="execute"/>
    /// the PASID prefix's Execute-Requested bit (needs the PASID entry's ERE, and a first-level
    /// page without XD).
    /// </summary>
    public IDmaSpace DmaSpaceFor(ushort requesterId, uint pasid, bool privileged = false, bool execute = false)
    {
        var request = new VtdRequest { SourceId = requesterId, HasPasid = true, Pasid = pasid & 0xF_FFFF, Privileged = privileged, Execute = execute };
        return new VtdDmaSpace(this, request);
    }

    /// <summary>Entries currently held by the PASID cache.</summary>
    public int PasidCacheCount { get { lock (_lock) return _pasidCache.Count; } }

    /// <summary>Entries currently held by the paging-structure caches (0 when they are off).</summary>
    public int PagingStructureCacheCount { get { lock (_lock) return _psc?.Count ?? 0; } }

    // ================= MMIO =================

    public ulong MmioRead(ulong offset, int size)
    {
        ulong value;
        lock (_lock)
        {
            if (offset >= _options.RegionSize || (offset & 3) != 0 && size >= 4)
            {
                Counters.GuestRegisterErrors.Increment();
                Log.Once($"{Name}.misaligned_read", Name, $"misaligned or out-of-range {size}-byte read at 0x{offset:x}; returning 0");
                return 0;
            }
            switch (size)
            {
                case 8:
                    value = ReadDword((int)offset) | ((ulong)ReadDword((int)offset + 4) << 32);
                    break;
                case 4:
                    value = ReadDword((int)offset);
                    break;
                default:
                    // The spec allows only 32/64-bit accesses (11.2); give the bytes without side effects.
                    Counters.GuestRegisterErrors.Increment();
                    Log.Once($"{Name}.narrow_read", Name, $"{size}-byte register read at 0x{offset:x} (only 4/8 are architectural)");
                    value = (ReadDword((int)offset & ~3) >> (int)((offset & 3) * 8)) & (size == 1 ? 0xFFUL : 0xFFFFUL);
                    break;
            }
        }
        return value;
    }

    public void MmioWrite(ulong offset, int size, ulong value)
    {
        lock (_lock)
        {
            if (offset >= _options.RegionSize || (offset & 3) != 0 || size < 4)
            {
                Counters.GuestRegisterErrors.Increment();
                Log.Once($"{Name}.bad_write", Name, $"{size}-byte register write at 0x{offset:x} ignored (only aligned 4/8-byte writes are architectural)");
                return;
            }
            InvalidateSnapshots();  // before any effect of the write can be observed
            // A 64-bit write is the low dword then the high dword: the registers whose action is
            // triggered by a high bit (CCMD.ICC, IOTLB.IVT) then see the whole new value.
            WriteDword((int)offset, (uint)value);
            if (size == 8)
            {
                WriteDword((int)offset + 4, (uint)(value >> 32));
            }
        }
        DrainOutbox();
    }

    /// <summary>Reserved offsets read as zero (11.2): the register file holds zeros there.</summary>
    uint ReadDword(int offset) => offset < _regionBytes ? _regs.Read32(offset) : 0;

    /// <summary>
    /// One dword of a software write: the register file stores the RW bits and clears the RW1C
    /// bits written as 1 (VtdRegisterFile.Write); a register whose write starts an action then
    /// runs its handler. Writes to read-only fields change nothing; writes to reserved offsets are
    /// ignored (11.2) and counted.
    /// </summary>
    void WriteDword(int offset, uint value)
    {
        if (offset >= _regionBytes || !_regs.IsImplemented(offset))
        {
            Counters.GuestRegisterErrors.Increment();
            Log.Once($"{Name}.reserved_write", Name, $"write to reserved register offset 0x{offset:x} ignored");
            return;
        }
        switch (_regs.Write(offset, value, out uint previous))
        {
            case VtdRegisterEffect.None:
                break;
            case VtdRegisterEffect.GlobalCommand:
                WriteGlobalCommand(value);
                break;
            case VtdRegisterEffect.ContextCommand:
                if (_regs.Test32(VtdReg.Ccmd + 4, 1u << 31))
                {
                    ExecuteContextCommand();
                }
                break;
            case VtdRegisterEffect.IotlbCommand:
                if (_regs.Test32(offset, 1u << 31))
                {
                    ExecuteIotlbCommand();
                }
                break;
            case VtdRegisterEffect.FaultStatus:
                FaultStatusWritten(previous);
                break;
            case VtdRegisterEffect.FaultRecord:
                if ((value & (1u << 31)) != 0)
                {
                    FaultRecordReleased((offset - _options.FaultRecordingOffset) / 16);
                }
                break;
            case VtdRegisterEffect.FaultEventControl:
                EventControlWritten(VtdReg.Fectl, FaultEventMessage(), Counters.FaultEvents);
                break;
            case VtdRegisterEffect.InvalidationEventControl:
                EventControlWritten(VtdReg.Iectl, InvalidationEventMessage(), Counters.InvalidationEvents);
                break;
            case VtdRegisterEffect.CompletionStatus:
                CompletionStatusWritten(value);
                break;
            case VtdRegisterEffect.QueueTail:
                ProcessQueue();
                break;
            case VtdRegisterEffect.ProtectedMemoryEnable:
                // 11.4.12.1: PRS (0) reports the EPM (31) just written at once.
                _regs.SetBits32(VtdReg.Pmen, 1, _regs.Test32(VtdReg.Pmen, 1u << 31));
                break;
        }
    }

    // ================= Global command (11.4.4) =================

    void WriteGlobalCommand(uint value)
    {
        // Software writes the persistent enables as it last set them plus at most one change
        // (11.4.4.1: one command per write); one-shot commands (SRTP, WBF, SIRTP) act when written
        // as 1 and leave only status.
        if ((value & VtdGcmd.Srtp) != 0)
        {
            ulong rtaddr = _regs.Read64(VtdReg.Rtaddr);
            _activeRootTable = rtaddr & PageMask4K;
            _activeTableMode = (int)(rtaddr >> 10) & 3;
            SetStatus(VtdGcmd.Srtp, true);
            // 11.4.4 SRTP: software must globally invalidate the caches after a new root table;
            // the paging-structure caches are dropped at once (a superset, always allowed).
            DropPagingStructureCaches();
        }
        if ((value & VtdGcmd.Wbf) != 0)
        {
            // Writes are never buffered here, so the flush completes at once and WBFS reads 0.
            Counters.WriteBufferFlushes.Increment();
        }
        if (((value & VtdGcmd.Te) != 0) != TranslationEnabled)
        {
            // Turning translation on or off: nothing cached under the old state may be used
            // under the new one (11.4.4 TE); dropping the paging-structure caches is a superset.
            DropPagingStructureCaches();
        }
        SetStatus(VtdGcmd.Te, (value & VtdGcmd.Te) != 0);
        if (_options.QueuedInvalidation)
        {
            bool enable = (value & VtdGcmd.Qie) != 0;
            if (enable && !QueuedInvalidationEnabled)
            {
                LatchQueue();
            }
            if (!enable && QueuedInvalidationEnabled)
            {
                Iqh = 0; // 11.4.10.1: IQH resets to 0 when queued invalidation is disabled.
            }
            SetStatus(VtdGcmd.Qie, enable);
        }
        if (_options.InterruptRemapping)
        {
            if ((value & VtdGcmd.Sirtp) != 0)
            {
                _activeIrta = _regs.Read64(VtdReg.Irta);
                SetStatus(VtdGcmd.Sirtp, true);
            }
            SetStatus(VtdGcmd.Ire, (value & VtdGcmd.Ire) != 0);
            SetStatus(VtdGcmd.Cfi, (value & VtdGcmd.Cfi) != 0);
        }
        if ((value & (VtdGcmd.Sfl | VtdGcmd.Eafl)) != 0)
        {
            // Advanced fault logging is not advertised (CAP.AFL=0): these commands are ignored.
            Counters.GuestRegisterErrors.Increment();
            Log.Once($"{Name}.afl", Name, "GCMD.SFL/EAFL written although CAP.AFL=0; ignored");
        }
    }

    void SetStatus(uint bit, bool on) => _regs.SetBits32(VtdReg.Gsts, bit, on);

    bool TranslationEnabled => _regs.Test32(VtdReg.Gsts, VtdGcmd.Te);
    bool QueuedInvalidationEnabled => _regs.Test32(VtdReg.Gsts, VtdGcmd.Qie);

    // ================= Protected memory regions (11.4.12, 3.15) =================

    /// <summary>True when [address, address+length) touches an enabled protected region.</summary>
    bool HitsProtectedRegion(ulong address, ulong length)
    {
        if (!_options.ProtectedMemoryRegions || !_regs.Test32(VtdReg.Pmen, 1u << 31))
        {
            return false;
        }
        ulong last = address + length - 1;
        // 2 MiB granularity: bits 20:0 of the base/limit registers read zero, the limit covers its whole 2 MiB.
        uint lowBase = _regs.Read32(VtdReg.Plmbase), lowLimit = _regs.Read32(VtdReg.Plmlimit);
        if (lowBase <= lowLimit && address <= (lowLimit | 0x1F_FFFFUL) && lowBase <= last)
        {
            return true;
        }
        ulong highBase = _regs.Read64(VtdReg.Phmbase), highLimit = _regs.Read64(VtdReg.Phmlimit);
        return highBase <= highLimit && address <= (highLimit | 0x1F_FFFFUL) && highBase <= last;
    }

    // ================= Outgoing event messages =================

    readonly record struct PendingMessage(ulong Address, uint Data);

    // At most a fault event and an invalidation event per register access or DMA; room to spare.
    readonly PendingMessage[] _outbox = new PendingMessage[4];
    int _outboxCount;

    void QueueMessage(PendingMessage message)
    {
        if (_outboxCount < _outbox.Length)
        {
            _outbox[_outboxCount++] = message;
        }
        else
        {
            Log.Once($"{Name}.outbox", Name, "event message dropped: outbox full (VMM bug)");
        }
    }

    /// <summary>Sends queued event interrupts; called after the lock is released (the sink may call back).</summary>
    void DrainOutbox()
    {
        DispatchDeviceInvalidations();
        while (true)
        {
            PendingMessage m;
            lock (_lock)
            {
                if (_outboxCount == 0)
                {
                    return;
                }
                m = _outbox[0];
                _outboxCount--;
                Array.Copy(_outbox, 1, _outbox, 0, _outboxCount);
            }
            _eventSink.SendMsi(m.Address, m.Data, 0);
        }
    }

    PendingMessage FaultEventMessage() =>
        new(((ulong)_regs.Read32(VtdReg.Feuaddr) << 32) | _regs.Read32(VtdReg.Feaddr), _regs.Read32(VtdReg.Fedata));

    PendingMessage InvalidationEventMessage() =>
        new(((ulong)_regs.Read32(VtdReg.Ieuaddr) << 32) | _regs.Read32(VtdReg.Ieaddr), _regs.Read32(VtdReg.Iedata));

    /// <summary>
    /// An interrupt condition of FECTL/IECTL (11.4.9.3, 11.4.10.5): with IM clear the message is
    /// sent at once and IP stays clear; with IM set, IP is set and the message waits for IM to clear.
    /// </summary>
    void RaiseEvent(int controlOffset, PendingMessage message, Counter counter)
    {
        if (!_regs.Test32(controlOffset, VtdEventCtl.Im))
        {
            _regs.SetBits32(controlOffset, VtdEventCtl.Ip, false);
            counter.Increment();
            QueueMessage(message);
        }
        else
        {
            _regs.SetBits32(controlOffset, VtdEventCtl.Ip, true);
        }
    }

    /// <summary>FECTL/IECTL written (IM is its only RW bit): clearing IM with IP set sends the pending message and clears IP.</summary>
    void EventControlWritten(int controlOffset, PendingMessage message, Counter counter)
    {
        uint control = _regs.Read32(controlOffset);
        if ((control & VtdEventCtl.Im) == 0 && (control & VtdEventCtl.Ip) != 0)
        {
            _regs.Set32(controlOffset, control & ~VtdEventCtl.Ip);
            counter.Increment();
            QueueMessage(message);
        }
    }
}
