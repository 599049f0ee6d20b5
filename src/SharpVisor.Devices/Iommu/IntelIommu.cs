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
/// All state is guarded by one lock; messages are sent after it is released.
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

    // ---- register state (11.4) ----
    uint _gsts;
    ulong _rtaddr;              // 11.4.5, as last written
    ulong _activeRootTable;     // latched by GCMD.SRTP
    int _activeTableMode;       // RTADDR.TTM latched by GCMD.SRTP: 0 legacy, 1 scalable
    ulong _ccmd;
    uint _fsts;                 // PFO, IQE, ICE, ITE and FRI; PPF is derived from the F bits
    uint _fectl = VtdEventCtl.Im;   // 11.4.9.3: IM resets to 1
    uint _fedata, _feaddr, _feuaddr;
    uint _pmen;
    uint _plmbase, _plmlimit;
    ulong _phmbase, _phmlimit;
    ulong _iva, _iotlbReg;

    // Fault recording registers (11.4.9.7): two quadwords each.
    readonly ulong[] _faultLow;
    readonly ulong[] _faultHigh;
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
        _faultLow = new ulong[options.FaultRecordingRegisters];
        _faultHigh = new ulong[options.FaultRecordingRegisters];
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

    uint ReadDword(int offset)
    {
        int iro = _options.IotlbRegisterOffset;
        int fro = _options.FaultRecordingOffset;
        if (offset >= iro && offset < iro + 16)
        {
            return (offset - iro) switch
            {
                0 => (uint)_iva,
                4 => (uint)(_iva >> 32),
                8 => (uint)_iotlbReg,
                _ => (uint)(_iotlbReg >> 32),
            };
        }
        if (offset >= fro && offset < fro + 16 * _faultLow.Length)
        {
            int i = (offset - fro) / 16;
            return ((offset - fro) & 15) switch
            {
                0 => (uint)_faultLow[i],
                4 => (uint)(_faultLow[i] >> 32),
                8 => (uint)_faultHigh[i],
                _ => (uint)(_faultHigh[i] >> 32),
            };
        }
        bool pmr = _options.ProtectedMemoryRegions, qi = _options.QueuedInvalidation, ir = _options.InterruptRemapping;
        return offset switch
        {
            VtdReg.Ver => _options.Version,
            VtdReg.Cap => (uint)_cap,
            VtdReg.Cap + 4 => (uint)(_cap >> 32),
            VtdReg.Ecap => (uint)_ecap,
            VtdReg.Ecap + 4 => (uint)(_ecap >> 32),
            VtdReg.Gcmd => 0, // write only (11.4.4.1)
            VtdReg.Gsts => _gsts,
            VtdReg.Rtaddr => (uint)_rtaddr,
            VtdReg.Rtaddr + 4 => (uint)(_rtaddr >> 32),
            VtdReg.Ccmd => (uint)_ccmd,
            VtdReg.Ccmd + 4 => (uint)(_ccmd >> 32),
            VtdReg.Fsts => FaultStatus(),
            VtdReg.Fectl => _fectl,
            VtdReg.Fedata => _fedata,
            VtdReg.Feaddr => _feaddr,
            VtdReg.Feuaddr => _feuaddr,
            VtdReg.Pmen when pmr => _pmen,
            VtdReg.Plmbase when pmr => _plmbase,
            VtdReg.Plmlimit when pmr => _plmlimit,
            VtdReg.Phmbase when pmr => (uint)_phmbase,
            VtdReg.Phmbase + 4 when pmr => (uint)(_phmbase >> 32),
            VtdReg.Phmlimit when pmr => (uint)_phmlimit,
            VtdReg.Phmlimit + 4 when pmr => (uint)(_phmlimit >> 32),
            VtdReg.Iqh when qi => (uint)_iqh,
            VtdReg.Iqh + 4 when qi => 0,
            VtdReg.Iqt when qi => (uint)_iqt,
            VtdReg.Iqt + 4 when qi => 0,
            VtdReg.Iqa when qi => (uint)_iqa,
            VtdReg.Iqa + 4 when qi => (uint)(_iqa >> 32),
            VtdReg.Ics when qi => _ics,
            VtdReg.Iectl when qi => _iectl,
            VtdReg.Iedata when qi => _iedata,
            VtdReg.Ieaddr when qi => _ieaddr,
            VtdReg.Ieuaddr when qi => _ieuaddr,
            // IQERCD (11.4.10.9) reads 0: IQEI=0 means "no error information" (allowed by the spec).
            VtdReg.Irta when ir => (uint)_irta,
            VtdReg.Irta + 4 when ir => (uint)(_irta >> 32),
            _ => 0, // reserved: reads as zero (11.2)
        };
    }

    void WriteDword(int offset, uint value)
    {
        int iro = _options.IotlbRegisterOffset;
        int fro = _options.FaultRecordingOffset;
        if (offset >= iro && offset < iro + 16)
        {
            WriteIotlbRegisters(offset - iro, value);
            return;
        }
        if (offset >= fro && offset < fro + 16 * _faultLow.Length)
        {
            // Only F (bit 127) is writable, RW1C (11.4.9.7): it lives in the last dword.
            if (((offset - fro) & 15) == 12 && (value & (1u << 31)) != 0)
            {
                ClearFaultRecord((offset - fro) / 16);
            }
            return;
        }
        bool pmr = _options.ProtectedMemoryRegions, qi = _options.QueuedInvalidation, ir = _options.InterruptRemapping;
        switch (offset)
        {
            case VtdReg.Gcmd:
                WriteGlobalCommand(value);
                break;
            case VtdReg.Rtaddr:
                // 11.4.5: RTA is bits 63:12; TTM (11:10) selects legacy (00) or scalable (01) mode.
                // Without ECAP.SMTS, TTM is reserved and reads 0.
                _rtaddr = (_rtaddr & 0xFFFF_FFFF_0000_0000UL) | (value & (0xFFFF_F000u | (_options.ScalableMode ? 0xC00u : 0)));
                break;
            case VtdReg.Rtaddr + 4:
                _rtaddr = (_rtaddr & 0xFFFF_FFFFUL) | ((ulong)value << 32);
                _rtaddr &= (1UL << _options.HostAddressWidth) - 1; // bits above HAW are not implemented
                break;
            case VtdReg.Ccmd:
                _ccmd = (_ccmd & 0xFFFF_FFFF_0000_0000UL) | value;
                break;
            case VtdReg.Ccmd + 4:
                // ICC (63), CIRG (62:61) and FM (33:32) are writable; CAIG (60:59) is RO; the rest reserved.
                _ccmd = (_ccmd & (0xFFFF_FFFFUL | (3UL << 59))) | ((ulong)(value & 0xE000_0003u) << 32);
                if ((_ccmd & (1UL << 63)) != 0)
                {
                    ExecuteContextCommand();
                }
                break;
            case VtdReg.Fsts:
                WriteFaultStatus(value);
                break;
            case VtdReg.Fectl:
                _fectl = WriteEventControl(_fectl, value, ref _faultEventPending, FaultEventMessage(), Counters.FaultEvents);
                break;
            case VtdReg.Fedata:
                // 11.4.9.4: bits 15:0 IMD; EIMD (31:16) only with 32-bit message data, not implemented.
                _fedata = value & 0xFFFF;
                break;
            case VtdReg.Feaddr:
                _feaddr = value & ~3u;
                break;
            case VtdReg.Feuaddr:
                // 11.4.9.6: implemented only when ECAP.EIM=1 (x2APIC destinations above 255).
                _feuaddr = _options.ExtendedInterruptMode ? value : 0;
                break;
            case VtdReg.Pmen when pmr:
                // 11.4.12.1: EPM (31) RW, PRS (0) RO status that follows EPM at once.
                _pmen = (value & (1u << 31)) != 0 ? (1u << 31) | 1u : 0;
                break;
            case VtdReg.Plmbase when pmr:
                _plmbase = value & ProtectedRegionMask32;
                break;
            case VtdReg.Plmlimit when pmr:
                _plmlimit = value & ProtectedRegionMask32;
                break;
            case VtdReg.Phmbase when pmr:
                _phmbase = ((_phmbase & 0xFFFF_FFFF_0000_0000UL) | value) & ProtectedHighMask;
                break;
            case VtdReg.Phmbase + 4 when pmr:
                _phmbase = ((_phmbase & 0xFFFF_FFFFUL) | ((ulong)value << 32)) & ProtectedHighMask;
                break;
            case VtdReg.Phmlimit when pmr:
                _phmlimit = ((_phmlimit & 0xFFFF_FFFF_0000_0000UL) | value) & ProtectedHighMask;
                break;
            case VtdReg.Phmlimit + 4 when pmr:
                _phmlimit = ((_phmlimit & 0xFFFF_FFFFUL) | ((ulong)value << 32)) & ProtectedHighMask;
                break;
            case VtdReg.Iqt when qi:
                WriteQueueTail(value);
                break;
            case VtdReg.Iqa when qi:
                WriteQueueAddressLow(value);
                break;
            case VtdReg.Iqa + 4 when qi:
                _iqa = ((_iqa & 0xFFFF_FFFFUL) | ((ulong)value << 32)) & ((1UL << _options.HostAddressWidth) - 1);
                break;
            case VtdReg.Ics when qi:
                WriteInvalidationCompletionStatus(value);
                break;
            case VtdReg.Iectl when qi:
                _iectl = WriteEventControl(_iectl, value, ref _invalidationEventPending, InvalidationEventMessage(), Counters.InvalidationEvents);
                break;
            case VtdReg.Iedata when qi:
                _iedata = value & 0xFFFF;
                break;
            case VtdReg.Ieaddr when qi:
                _ieaddr = value & ~3u;
                break;
            case VtdReg.Ieuaddr when qi:
                _ieuaddr = _options.ExtendedInterruptMode ? value : 0;
                break;
            case VtdReg.Irta when ir:
                // 11.4.11.1: IRTA 63:12, EIME (11) only with ECAP.EIM, S (3:0); bits 10:4 reserved.
                uint low = value & (0xFFFF_F000u | 0xFu | (_options.ExtendedInterruptMode ? 1u << 11 : 0));
                _irta = (_irta & 0xFFFF_FFFF_0000_0000UL) | low;
                break;
            case VtdReg.Irta + 4 when ir:
                _irta = ((_irta & 0xFFFF_FFFFUL) | ((ulong)value << 32)) & (((1UL << _options.HostAddressWidth) - 1) | 0xFFF);
                break;
            default:
                // Read-only and reserved registers ignore writes (11.2).
                break;
        }
    }

    // ================= Global command (11.4.4) =================

    void WriteGlobalCommand(uint value)
    {
        // Software writes the persistent enables as it last set them plus at most one change;
        // one-shot commands (SRTP, WBF, SIRTP) act when written as 1 and leave only status.
        if ((value & VtdGcmd.Srtp) != 0)
        {
            _activeRootTable = _rtaddr & PageMask4K;
            _activeTableMode = (int)(_rtaddr >> 10) & 3;
            _gsts |= VtdGcmd.Srtp;
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
            if (!enable && (_gsts & VtdGcmd.Qie) != 0)
            {
                _iqh = 0; // 11.4.10.1: IQH resets to 0 when queued invalidation is disabled.
            }
            SetStatus(VtdGcmd.Qie, enable);
        }
        if (_options.InterruptRemapping)
        {
            if ((value & VtdGcmd.Sirtp) != 0)
            {
                _activeIrta = _irta;
                _gsts |= VtdGcmd.Sirtp;
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

    void SetStatus(uint bit, bool on) => _gsts = on ? _gsts | bit : _gsts & ~bit;

    bool TranslationEnabled => (_gsts & VtdGcmd.Te) != 0;
    bool QueuedInvalidationEnabled => (_gsts & VtdGcmd.Qie) != 0;

    // ================= Protected memory regions (11.4.12, 3.15) =================

    // 2 MiB granularity: bits 20:0 of the base/limit registers are RO zero.
    const uint ProtectedRegionMask32 = 0xFFE0_0000;
    ulong ProtectedHighMask => ((1UL << _options.HostAddressWidth) - 1) & ~0x1F_FFFFUL;

    /// <summary>True when [address, address+length) touches an enabled protected region.</summary>
    bool HitsProtectedRegion(ulong address, ulong length)
    {
        if ((_pmen & (1u << 31)) == 0)
        {
            return false;
        }
        ulong last = address + length - 1;
        if (_plmbase <= _plmlimit && address <= (_plmlimit | 0x1F_FFFFUL) && _plmbase <= last)
        {
            return true;
        }
        return _phmbase <= _phmlimit && address <= (_phmlimit | 0x1F_FFFFUL) && _phmbase <= last;
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

    PendingMessage FaultEventMessage() => new(((ulong)_feuaddr << 32) | _feaddr, _fedata);
    PendingMessage InvalidationEventMessage() => new(((ulong)_ieuaddr << 32) | _ieaddr, _iedata);

    bool _faultEventPending;
    bool _invalidationEventPending;

    /// <summary>
    /// An interrupt condition of FECTL/IECTL (11.4.9.3, 11.4.10.5): IP is set; with IM clear the
    /// message is sent at once and IP clears; with IM set it stays pending until IM is cleared.
    /// </summary>
    void RaiseEvent(ref uint control, ref bool pending, PendingMessage message, Counter counter)
    {
        if ((control & VtdEventCtl.Im) == 0)
        {
            control &= ~VtdEventCtl.Ip;
            pending = false;
            counter.Increment();
            QueueMessage(message);
        }
        else
        {
            control |= VtdEventCtl.Ip;
            pending = true;
        }
    }

    uint WriteEventControl(uint control, uint value, ref bool pending, PendingMessage message, Counter counter)
    {
        control = (control & ~VtdEventCtl.Im) | (value & VtdEventCtl.Im);
        if ((control & VtdEventCtl.Im) == 0 && pending)
        {
            pending = false;
            control &= ~VtdEventCtl.Ip;
            counter.Increment();
            QueueMessage(message);
        }
        return control;
    }
}
