using System.Runtime.InteropServices;
using SharpVisor.Core;

namespace SharpVisor.Devices.Iommu;

/// <summary>
/// Cache invalidation (VT-d spec 6.5): register-based through CCMD (11.4.6) and IVA/IOTLB
/// (11.4.8), and queued through the invalidation queue (6.5.2, registers 11.4.10).
/// </summary>
public sealed partial class IntelIommu
{
    ulong _iqh, _iqt, _iqa;
    uint _ics;
    uint _iectl = VtdEventCtl.Im;   // 11.4.10.5: IM resets to 1
    uint _iedata, _ieaddr, _ieuaddr;

    // ---- shared invalidation actions ----

    void InvalidateContextCache(int granularity, ushort domainId, ushort sourceId, int functionMask)
    {
        switch (granularity)
        {
            case VtdGranularity.Global:
                Counters.ContextInvGlobal.Increment();
                _contextCache.InvalidateAll();
                break;
            case VtdGranularity.Domain:
                Counters.ContextInvDomain.Increment();
                _contextCache.InvalidateDomain(domainId);
                break;
            case VtdGranularity.DeviceOrPage:
                Counters.ContextInvDevice.Increment();
                _contextCache.InvalidateDevice(sourceId, functionMask);
                break;
        }
    }

    /// <summary>Performs an IOTLB invalidation and returns the granularity actually used.</summary>
    int InvalidateIotlb(int granularity, ushort domainId, ulong address, int addressMask, bool leafHint)
    {
        if (granularity == VtdGranularity.DeviceOrPage && (!_options.PageSelectiveInvalidation || addressMask > _options.MaxAddressMaskValue))
        {
            // 11.4.8.1: without PSI support (or with AM beyond MAMV) the unit may invalidate at a
            // coarser granularity and reports what it did in IAIG.
            granularity = VtdGranularity.Domain;
        }
        switch (granularity)
        {
            case VtdGranularity.Global:
                Counters.IotlbInvGlobal.Increment();
                _iotlb.InvalidateAll();
                break;
            case VtdGranularity.Domain:
                Counters.IotlbInvDomain.Increment();
                _iotlb.InvalidateDomain(domainId);
                break;
            case VtdGranularity.DeviceOrPage:
                Counters.IotlbInvPage.Increment();
                if (leafHint)
                {
                    // IH=1: only leaf entries changed, so paging-structure caches may be kept. This
                    // model has no paging-structure caches, so the hint changes nothing but is counted.
                    Counters.IotlbInvPageHint.Increment();
                }
                _iotlb.InvalidatePages(domainId, address, addressMask);
                break;
        }
        return granularity;
    }

    // ---- register-based invalidation ----

    /// <summary>CCMD with ICC=1 (11.4.6): CIRG 62:61, FM 33:32, SID 31:16, DID 15:0.</summary>
    void ExecuteContextCommand()
    {
        int requested = (int)(_ccmd >> 61) & 3;
        int actual = requested;
        if (QueuedInvalidationEnabled)
        {
            // 6.5.2: register-based invalidation must not be used while queued invalidation is on.
            Counters.GuestRegisterErrors.Increment();
            Log.Once($"{Name}.ccmd_qi", Name, "CCMD written while queued invalidation is enabled; ignored");
            actual = VtdGranularity.Reserved;
        }
        else if (requested == VtdGranularity.Reserved)
        {
            Counters.GuestRegisterErrors.Increment();
        }
        else
        {
            InvalidateContextCache(requested, (ushort)_ccmd, (ushort)(_ccmd >> 16), (int)(_ccmd >> 32) & 3);
        }
        // ICC clears on completion; CAIG (60:59) reports the granularity performed (0: rejected).
        _ccmd = (_ccmd & ~((1UL << 63) | (3UL << 59))) | ((ulong)actual << 59);
    }

    /// <summary>IVA (offset 0, 11.4.8.2) and IOTLB (offset 8, 11.4.8.1) registers.</summary>
    void WriteIotlbRegisters(int offset, uint value)
    {
        switch (offset)
        {
            case 0:
                // IVA: ADDR 63:12, IH 6, AM 5:0; bits 11:7 reserved.
                _iva = (_iva & 0xFFFF_FFFF_0000_0000UL) | (value & 0xFFFF_F07Fu);
                break;
            case 4:
                _iva = (_iva & 0xFFFF_FFFFUL) | ((ulong)value << 32);
                break;
            case 8:
                break; // IOTLB bits 31:0 are reserved
            case 12:
                // IVT 63, IIRG 61:60, IAIG 58:57 (RO), DR 49, DW 48, DID 47:32.
                _iotlbReg = ((ulong)(value & 0xB003_FFFFu) << 32);
                if ((value & (1u << 31)) != 0)
                {
                    ExecuteIotlbCommand();
                }
                break;
        }
    }

    void ExecuteIotlbCommand()
    {
        int requested = (int)(_iotlbReg >> 60) & 3;
        int actual;
        if (QueuedInvalidationEnabled)
        {
            Counters.GuestRegisterErrors.Increment();
            Log.Once($"{Name}.iotlb_qi", Name, "IOTLB register written while queued invalidation is enabled; ignored");
            actual = VtdGranularity.Reserved;
        }
        else if (requested == VtdGranularity.Reserved)
        {
            Counters.GuestRegisterErrors.Increment();
            actual = VtdGranularity.Reserved;
        }
        else
        {
            actual = InvalidateIotlb(requested, (ushort)(_iotlbReg >> 32), _iva & PageMask4K, (int)(_iva & 0x3F), (_iva & (1 << 6)) != 0);
        }
        _iotlbReg = (_iotlbReg & ~((1UL << 63) | (3UL << 57))) | ((ulong)actual << 57);
    }

    // ---- queued invalidation (6.5.2) ----

    void WriteQueueAddressLow(uint value)
    {
        // IQA (11.4.10.3): IQA 63:12, DW 11 (256-bit descriptors, only with ECAP.SMTS: reserved here), QS 2:0.
        _iqa = (_iqa & 0xFFFF_FFFF_0000_0000UL) | (value & 0xFFFF_F007u);
    }

    ulong QueueBytes => 4096UL << (int)(_iqa & 7);

    void WriteQueueTail(uint value)
    {
        // IQT (11.4.10.2): QT 18:4 for 128-bit descriptors; the rest is reserved.
        _iqt = value & 0x7_FFF0u;
        ProcessQueue();
    }

    void WriteInvalidationCompletionStatus(uint value)
    {
        // ICS (11.4.10.4): IWC (bit 0) is RW1C; clearing it services a pending invalidation event.
        if ((value & 1) != 0)
        {
            _ics &= ~1u;
            _invalidationEventPending = false;
            _iectl &= ~VtdEventCtl.Ip;
        }
    }

    /// <summary>
    /// Fetches and executes descriptors from IQH up to IQT. Processing stops at an invalid
    /// descriptor with IQH left pointing at it and FSTS.IQE set (6.5.2.10); nothing is fetched
    /// again until software clears IQE and writes IQT. The queue is bounded by its size, so a
    /// malicious IQT cannot loop forever.
    /// </summary>
    void ProcessQueue()
    {
        if (!QueuedInvalidationEnabled || (_fsts & VtdFsts.Iqe) != 0)
        {
            return;
        }
        ulong size = QueueBytes;
        if (_iqt >= size)
        {
            // A tail beyond the queue cannot be reached: treat as a queue error at the current head.
            Counters.QueueErrors.Increment();
            Log.Once($"{Name}.iqt_range", Name, $"IQT 0x{_iqt:x} beyond the {size}-byte invalidation queue");
            RaiseQueueError(VtdFsts.Iqe);
            return;
        }
        ulong queueBase = _iqa & _hawPageMask;
        Span<ulong> d = stackalloc ulong[2];
        while (_iqh != _iqt)
        {
            if (!_ram.TryRead(queueBase + _iqh, MemoryMarshal.AsBytes(d)))
            {
                Counters.QueueErrors.Increment();
                Log.Once($"{Name}.iq_fetch", Name, $"invalidation queue at 0x{queueBase:x} is not guest RAM");
                RaiseQueueError(VtdFsts.Iqe);
                return;
            }
            Counters.QueueDescriptors.Increment();
            if (!ExecuteDescriptor(d[0], d[1]))
            {
                Counters.QueueErrors.Increment();
                RaiseQueueError(VtdFsts.Iqe);
                return;
            }
            _iqh = (_iqh + 16) % size;
        }
    }

    /// <summary>Executes one 128-bit descriptor; false for an invalid type or reserved bits set (IQE).</summary>
    bool ExecuteDescriptor(ulong lo, ulong hi)
    {
        // Type: bits 3:0 with bits 11:9 as the high type bits (6.5.2); the latter are 0 for every
        // descriptor this unit accepts.
        int type = (int)(lo & 0xF) | (int)((lo >> 9) & 7) << 4;
        switch (type)
        {
            case 1:
                {
                    // 6.5.2.1 Context-cache invalidate: G 5:4, DID 31:16, SID 47:32, FM 49:48.
                    if ((lo & 0xFFFC_0000_0000_FFC0UL) != 0 || hi != 0)
                    {
                        return false;
                    }
                    int g = (int)(lo >> 4) & 3;
                    if (g == VtdGranularity.Reserved)
                    {
                        return false;
                    }
                    InvalidateContextCache(g, (ushort)(lo >> 16), (ushort)(lo >> 32), (int)(lo >> 48) & 3);
                    return true;
                }
            case 2:
                {
                    // 6.5.2.3 IOTLB invalidate: G 5:4, DW 6, DR 7, DID 31:16; ADDR 127:76, IH 70, AM 69:64.
                    if ((lo & 0xFFFF_FFFF_0000_FF00UL) != 0 || (hi & 0xF80UL) != 0)
                    {
                        return false;
                    }
                    int g = (int)(lo >> 4) & 3;
                    if (g == VtdGranularity.Reserved)
                    {
                        return false;
                    }
                    InvalidateIotlb(g, (ushort)(lo >> 16), hi & PageMask4K, (int)(hi & 0x3F), (hi & (1 << 6)) != 0);
                    return true;
                }
            case 3:
                // 6.5.2.5 Device-TLB invalidate. No device implements ATS yet (ECAP.DT=0), so there is
                // no device-TLB to invalidate: acknowledged as complete.
                Counters.DeviceTlbInv.Increment();
                return true;
            case 4:
                {
                    // 6.5.2.7 Interrupt entry cache invalidate: G 4 (0 global, 1 index), IM 31:27, IIDX 47:32.
                    if ((lo & 0xFFFF_0000_07FF_FFE0UL) != 0 || hi != 0)
                    {
                        return false;
                    }
                    if ((lo & 0x10) == 0)
                    {
                        InvalidateInterruptEntryCache(0, -1);
                    }
                    else
                    {
                        InvalidateInterruptEntryCache((int)(lo >> 32) & 0xFFFF, (int)(lo >> 27) & 0x1F);
                    }
                    return true;
                }
            case 5:
                return ExecuteWait(lo, hi);
            default:
                // 6/7/8... are PASID-based (scalable mode) descriptors: invalid without ECAP.SMTS.
                Log.Once($"{Name}.qi_type{type}", Name, $"invalidation descriptor type {type} not supported; IQE");
                return false;
        }
    }

    /// <summary>6.5.2.8 Invalidation wait: IF 4, SW 5, FN 6, PD 7, status data 63:32, status address 127:66.</summary>
    bool ExecuteWait(ulong lo, ulong hi)
    {
        if ((lo & 0xFFFF_FF00UL) != 0 || (hi & 3) != 0)
        {
            return false;
        }
        Counters.InvalidationWaits.Increment();
        // Every earlier descriptor has completed (processing is synchronous), which is all the
        // fence (FN) and page-drain (PD) flags ask for.
        if ((lo & (1UL << 5)) != 0)
        {
            ulong statusAddress = hi & ~3UL;
            uint data = (uint)(lo >> 32);
            if (!_ram.TryWrite(statusAddress, MemoryMarshal.AsBytes(new ReadOnlySpan<uint>(in data))))
            {
                Counters.GuestRegisterErrors.Increment();
                Log.Once($"{Name}.wait_status", Name, $"invalidation wait status address 0x{statusAddress:x} is not RAM; write dropped");
            }
        }
        if ((lo & (1UL << 4)) != 0)
        {
            // 11.4.10.4: IWC already set means no new interrupt condition.
            if ((_ics & 1) == 0)
            {
                _ics |= 1;
                RaiseEvent(ref _iectl, ref _invalidationEventPending, InvalidationEventMessage(), Counters.InvalidationEvents);
            }
        }
        return true;
    }
}
