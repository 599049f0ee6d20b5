using System.Runtime.InteropServices;
using SharpVisor.Core;

namespace SharpVisor.Devices.Iommu;

/// <summary>
/// Cache invalidation (VT-d spec 6.5): register-based through CCMD (11.4.6) and IVA/IOTLB
/// (11.4.8), and queued through the invalidation queue (6.5.2, registers 11.4.10).
/// </summary>
public sealed partial class IntelIommu
{
    // The queue's geometry as latched from IQA when queued invalidation was last enabled
    // (6.5.2: software programs IQA before setting GCMD.QIE; QEMU latches it at that point too).
    ulong _queueBase;
    ulong _queueBytes = 4096;
    bool _queueWide;

    ulong Iqh
    {
        get => _regs.Read64(VtdReg.Iqh);
        set => _regs.Set64(VtdReg.Iqh, value);
    }

    ulong Iqt => _regs.Read64(VtdReg.Iqt);

    void LatchQueue()
    {
        ulong iqa = _regs.Read64(VtdReg.Iqa);
        _queueBase = iqa & _hawPageMask;
        _queueBytes = 4096UL << (int)(iqa & 7);         // QS: 2^QS 4 KiB pages
        _queueWide = (iqa & 0x800) != 0;                // DW: 256-bit descriptors (implemented only with ECAP.SMTS)
    }

    // ---- shared invalidation actions ----

    void InvalidateContextCache(int granularity, ushort domainId, ushort sourceId, int functionMask)
    {
        // Scalable mode (6.5.2.1): PASID-cache entries hang off the context entries they were
        // found through, so they go with them (a superset of what the spec requires is safe).
        // 6.5.2.1 makes software follow a context-cache invalidation with an IOTLB invalidation,
        // which flushes the paging-structure caches too. They are flushed here already, whatever
        // the granularity: context invalidations are rare (device attach/detach), a device-
        // selective one names no domain, and invalidating more than asked is always allowed.
        DropPagingStructureCaches();
        switch (granularity)
        {
            case VtdGranularity.Global:
                Counters.ContextInvGlobal.Increment();
                _contextCache.InvalidateAll();
                _pasidCache.InvalidateAll();
                break;
            case VtdGranularity.Domain:
                Counters.ContextInvDomain.Increment();
                _contextCache.InvalidateDomain(domainId);
                _pasidCache.Invalidate(domainId, null);
                break;
            case VtdGranularity.DeviceOrPage:
                Counters.ContextInvDevice.Increment();
                _contextCache.InvalidateDevice(sourceId, functionMask);
                _pasidCache.InvalidateDevice(sourceId, functionMask);
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
        // 6.5.2.3 / 11.4.8.1: global and domain-selective IOTLB invalidations also flush the
        // paging-structure caches (of every PASID of the domain in scalable mode).
        switch (granularity)
        {
            case VtdGranularity.Global:
                Counters.IotlbInvGlobal.Increment();
                _iotlb.InvalidateAll();
                DropPagingStructureCaches();
                break;
            case VtdGranularity.Domain:
                Counters.IotlbInvDomain.Increment();
                _iotlb.InvalidateDomain(domainId);
                DropPagingStructureCaches(domainId, null);
                break;
            case VtdGranularity.DeviceOrPage:
                Counters.IotlbInvPage.Increment();
                _iotlb.InvalidatePages(domainId, address, addressMask);
                InvalidatePagingStructureCachesForPages(domainId, null, address, addressMask, leafHint);
                break;
        }
        return granularity;
    }

    /// <summary>
    /// The paging-structure-cache side of a page-selective invalidation (11.4.8.2 IVA.IH, 6.5.2.3,
    /// 6.5.2.4). IH=0: software may have changed or freed non-leaf entries mapping the range, so
    /// every cached entry whose region overlaps it goes. IH=1: software promises only leaves
    /// changed, and the cached non-leaf entries are kept — so a guest that did change a non-leaf
    /// entry and still set IH=1 keeps seeing the old table until a later invalidation, which is
    /// what the spec permits. (Linux sets IH=1 only when its unmap freed no page-table page:
    /// intel_iommu_tlb_sync passes list_empty(&amp;gather-&gt;freelist).)
    /// </summary>
    void InvalidatePagingStructureCachesForPages(ushort domainId, uint? pasid, ulong address, int addressMask, bool leafHint)
    {
        if (leafHint)
        {
            Counters.IotlbInvPageHint.Increment();
            if (_psc is not null)
            {
                Counters.PscKeptByHint.Increment();
            }
            return;
        }
        if (_psc is not null)
        {
            Counters.PscEntriesInvalidated.Add(_psc.InvalidatePages(domainId, pasid, address, addressMask));
        }
    }

    /// <summary>Drops the paging-structure-cache entries of one domain (every PASID, or one), or all of them when <paramref name="domainId"/> is null.</summary>
    void DropPagingStructureCaches(ushort? domainId = null, uint? pasid = null)
    {
        if (_psc is null)
        {
            return;
        }
        int dropped = domainId is ushort did ? _psc.Invalidate(did, pasid) : _psc.InvalidateAll();
        Counters.PscEntriesInvalidated.Add(dropped);
    }

    // ---- register-based invalidation ----

    /// <summary>CCMD with ICC=1 (11.4.6): CIRG 62:61, FM 33:32, SID 31:16, DID 15:0.</summary>
    void ExecuteContextCommand()
    {
        ulong ccmd = _regs.Read64(VtdReg.Ccmd);
        int requested = (int)(ccmd >> 61) & 3;
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
            InvalidateContextCache(requested, (ushort)ccmd, (ushort)(ccmd >> 16), (int)(ccmd >> 32) & 3);
        }
        // ICC clears on completion; CAIG (60:59) reports the granularity performed (0: rejected).
        _regs.Set64(VtdReg.Ccmd, (ccmd & ~((1UL << 63) | (3UL << 59))) | ((ulong)actual << 59));
    }

    /// <summary>IOTLB with IVT=1 (11.4.8.1): IIRG 61:60, DID 47:32; the page range is in IVA (11.4.8.2).</summary>
    void ExecuteIotlbCommand()
    {
        int iotlbOffset = _options.IotlbRegisterOffset + 8;
        ulong iotlb = _regs.Read64(iotlbOffset);
        ulong iva = _regs.Read64(_options.IotlbRegisterOffset);
        int requested = (int)(iotlb >> 60) & 3;
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
            actual = InvalidateIotlb(requested, (ushort)(iotlb >> 32), iva & PageMask4K, (int)(iva & 0x3F), (iva & (1 << 6)) != 0);
        }
        // IVT clears on completion; IAIG (58:57) reports the granularity performed (0: rejected).
        _regs.Set64(iotlbOffset, (iotlb & ~((1UL << 63) | (3UL << 57))) | ((ulong)actual << 57));
    }

    // ---- queued invalidation (6.5.2) ----

    /// <summary>ICS written (11.4.10.4): IWC is RW1C (already cleared); writing it 1 services the invalidation event.</summary>
    void CompletionStatusWritten(uint value)
    {
        if ((value & 1) != 0)
        {
            _regs.SetBits32(VtdReg.Iectl, VtdEventCtl.Ip, false);
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
        // Stopped by a queue error or a device-TLB time-out until software clears it (6.5.2.10),
        // or stalled waiting for device-TLB invalidation completions.
        if (!QueuedInvalidationEnabled || _regs.Test32(VtdReg.Fsts, VtdFsts.Iqe | VtdFsts.Ite) || _queueStalled)
        {
            return;
        }
        // The descriptors about to run may invalidate anything: the lock-free snapshots go first,
        // before any wait descriptor can report completion.
        InvalidateSnapshots();
        ulong size = _queueBytes;
        ulong tail = Iqt;
        if (tail >= size)
        {
            // A tail beyond the queue cannot be reached: treat as a queue error at the current head.
            Counters.QueueErrors.Increment();
            Log.Once($"{Name}.iqt_range", Name, $"IQT 0x{tail:x} beyond the {size}-byte invalidation queue");
            RaiseQueueError(VtdFsts.Iqe);
            return;
        }
        bool wide = _queueWide;
        int descriptorBytes = wide ? 32 : 16;
        ulong head = Iqh;
        if (wide && ((tail | head) & 0x10) != 0)
        {
            // 11.4.10.2: with 256-bit descriptors QT bit 4 is reserved (QT counts 32-byte units).
            Counters.QueueErrors.Increment();
            Log.Once($"{Name}.iqt_dw", Name, $"IQT 0x{tail:x} is not 32-byte aligned with 256-bit descriptors");
            RaiseQueueError(VtdFsts.Iqe);
            return;
        }
        ulong queueBase = _queueBase;
        Span<ulong> d = stackalloc ulong[4];
        while (head != tail)
        {
            d.Clear();
            if (!_ram.TryRead(queueBase + head, MemoryMarshal.AsBytes(d[..(descriptorBytes / 8)])))
            {
                Counters.QueueErrors.Increment();
                Log.Once($"{Name}.iq_fetch", Name, $"invalidation queue at 0x{queueBase:x} is not guest RAM");
                RaiseQueueError(VtdFsts.Iqe);
                return;
            }
            var outcome = ExecuteDescriptor(d, wide);
            if (outcome == DescriptorOutcome.Stall)
            {
                // IQH stays on this descriptor; processing resumes when devices answer or time out.
                Counters.QueueStalls.Increment();
                return;
            }
            Counters.QueueDescriptors.Increment();
            if (outcome == DescriptorOutcome.Invalid)
            {
                Counters.QueueErrors.Increment();
                RaiseQueueError(VtdFsts.Iqe);
                return;
            }
            head = (head + (ulong)descriptorBytes) % size;
            Iqh = head;
        }
    }

    enum DescriptorOutcome : byte { Done, Invalid, Stall }

    /// <summary>
    /// Executes one descriptor: 128-bit, or 256-bit when IQA.DW=1 (6.5.2: the upper 128 bits are
    /// reserved for every type this unit implements, so they must be zero).
    /// </summary>
    DescriptorOutcome ExecuteDescriptor(ReadOnlySpan<ulong> d, bool wide)
    {
        if (wide && (d[2] != 0 || d[3] != 0))
        {
            return DescriptorOutcome.Invalid;
        }
        ulong lo = d[0], hi = d[1];
        int type = (int)(lo & 0xF) | (int)((lo >> 9) & 7) << 4;
        switch (type)
        {
            case 3 when _options.DeviceTlb:
                return ExecuteDeviceTlbInvalidation(lo, hi);
            case 5:
                return ExecuteWait(lo, hi);
            case 6 when _options.ScalableMode:
                return ExecutePasidIotlbInvalidation(lo, hi) ? DescriptorOutcome.Done : DescriptorOutcome.Invalid;
            case 7 when _options.ScalableMode:
                return ExecutePasidCacheInvalidation(lo, hi) ? DescriptorOutcome.Done : DescriptorOutcome.Invalid;
            case 8 when _options.ScalableMode && _options.DeviceTlb:
                return ExecutePasidDeviceTlbInvalidation(lo, hi);
            default:
                return ExecuteLegacyDescriptor(lo, hi) ? DescriptorOutcome.Done : DescriptorOutcome.Invalid;
        }
    }

    /// <summary>6.5.2.4 PASID-based-IOTLB invalidate (p_iotlb_inv): G 5:4, DID 31:16, PASID 51:32; ADDR 127:76, IH 70, AM 69:64.</summary>
    bool ExecutePasidIotlbInvalidation(ulong lo, ulong hi)
    {
        if ((lo & 0xFFF0_0000_0000_F1C0UL) != 0 || (hi & 0xF80UL) != 0)
        {
            return false;
        }
        int g = (int)(lo >> 4) & 3;
        ushort did = (ushort)(lo >> 16);
        uint pasid = (uint)(lo >> 32) & 0xF_FFFF;
        int am = (int)(hi & 0x3F);
        if (g == 3 && am <= _options.MaxAddressMaskValue)
        {
            // Page-selective-within-PASID: first-level entries of (DID, PASID) in the 2^AM pages at
            // ADDR, and with IH (bit 70) clear the paging-structure-cache entries covering them.
            Counters.PasidIotlbInvPage.Increment();
            _iotlb.InvalidatePages(did, pasid, hi & PageMask4K, am);
            InvalidatePagingStructureCachesForPages(did, pasid, hi & PageMask4K, am, (hi & (1 << 6)) != 0);
            return true;
        }
        if (g is 2 or 3)
        {
            // Non-globals-within-PASID (G=10b; also what an AM beyond MAMV degrades to): the
            // PASID's IOTLB and paging-structure-cache entries.
            Counters.PasidIotlbInvPasid.Increment();
            _iotlb.InvalidatePasid(did, pasid);
            DropPagingStructureCaches(did, pasid);
            return true;
        }
        return false; // G=00b/01b are reserved
    }

    /// <summary>6.5.2.2 PASID-cache invalidate (pc_inv_dsc): G 5:4 (00 domain, 01 PASID, 11 global), DID 31:16, PASID 51:32.</summary>
    bool ExecutePasidCacheInvalidation(ulong lo, ulong hi)
    {
        if ((lo & 0xFFF0_0000_0000_F1C0UL) != 0 || hi != 0)
        {
            return false;
        }
        ushort did = (ushort)(lo >> 16);
        uint pasid = (uint)(lo >> 32) & 0xF_FFFF;
        // 6.5.2.2 makes software follow a PASID-cache invalidation with a PASID-based IOTLB
        // invalidation; the paging-structure-cache entries reached through the dropped PASID
        // entries go at once as well (a superset, always allowed). Second-level entries carry no
        // PASID, so a PASID-selective one drops those of the domain too.
        switch ((lo >> 4) & 3)
        {
            case 0:
                Counters.PasidCacheInvDomain.Increment();
                _pasidCache.Invalidate(did, null);
                DropPagingStructureCaches(did, null);
                return true;
            case 1:
                Counters.PasidCacheInvPasid.Increment();
                _pasidCache.Invalidate(did, pasid);
                DropPagingStructureCaches(did, pasid);
                DropPagingStructureCaches(did, VtdIotlbEntry.NoPasid);
                return true;
            case 3:
                Counters.PasidCacheInvGlobal.Increment();
                _pasidCache.InvalidateAll();
                DropPagingStructureCaches();
                return true;
            default:
                return false;
        }
    }

    /// <summary>
    /// 6.5.2.5 Device-TLB invalidate: SID 47:32, QDEP 20:16, PFSID 15:12 and 63:52; ADDR 127:76,
    /// S 64. Forwarded to the device's ATS endpoint with an invalidation tag.
    /// </summary>
    DescriptorOutcome ExecuteDeviceTlbInvalidation(ulong lo, ulong hi)
    {
        if ((lo & 0x0000_0000_FFE0_01F0UL) != 0 || (hi & 0xFFEUL) != 0)
        {
            return DescriptorOutcome.Invalid;
        }
        Counters.DeviceTlbInv.Increment();
        DecodeInvalidationRange(hi & PageMask4K, (hi & 1) != 0, out ulong address, out ulong size);
        return ForwardDeviceTlbInvalidation((ushort)(lo >> 32), address, size, null);
    }

    /// <summary>
    /// 6.5.2.6 PASID-based device-TLB invalidate: QDEP 8:4, SID 31:16, PASID 51:32, PFSID 15:12 and
    /// 63:52; ADDR 127:76, S 75, G 64.
    /// </summary>
    DescriptorOutcome ExecutePasidDeviceTlbInvalidation(ulong lo, ulong hi)
    {
        if ((hi & 0x7FEUL) != 0)
        {
            return DescriptorOutcome.Invalid;
        }
        Counters.DeviceTlbInvPasid.Increment();
        DecodeInvalidationRange(hi & PageMask4K, (hi & (1UL << 11)) != 0, out ulong address, out ulong size);
        return ForwardDeviceTlbInvalidation((ushort)(lo >> 16), address, size, (uint)(lo >> 32) & 0xF_FFFF);
    }

    /// <summary>
    /// The PCIe ATS range encoding the descriptors use (6.5.2.5): with S=0 one 4 KiB page; with S=1
    /// the lowest clear address bit at or above bit 12, at position n, makes the range 2^(n+1)
    /// bytes (Linux qi_flush_dev_iotlb sets bits 12..12+mask-2 for a 2^mask-page range).
    /// </summary>
    static void DecodeInvalidationRange(ulong addressField, bool sizeBit, out ulong address, out ulong size)
    {
        if (!sizeBit)
        {
            address = addressField;
            size = 4096;
            return;
        }
        ulong ones = ~addressField >> 12;
        if (ones == 0 || System.Numerics.BitOperations.TrailingZeroCount(ones) + 13 >= 64)
        {
            address = 0;
            size = ulong.MaxValue; // every bit set: the whole address space
            return;
        }
        int n = System.Numerics.BitOperations.TrailingZeroCount(ones) + 12;
        size = 1UL << (n + 1);
        address = addressField & ~(size - 1);
    }

    /// <summary>Executes one 128-bit descriptor of types 1-4; false for an invalid type or reserved bits set (IQE).</summary>
    bool ExecuteLegacyDescriptor(ulong lo, ulong hi)
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
                // 6.5.2.5 Device-TLB invalidate while ECAP.DT=0: no device-TLB can exist, so there is
                // nothing to invalidate; acknowledged as complete.
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
            default:
                // 6/7/8 are PASID-based (scalable mode) descriptors: invalid without ECAP.SMTS.
                Log.Once($"{Name}.qi_type{type}", Name, $"invalidation descriptor type {type} not supported; IQE");
                return false;
        }
    }

    /// <summary>6.5.2.8 Invalidation wait: IF 4, SW 5, FN 6, PD 7, status data 63:32, status address 127:66.</summary>
    DescriptorOutcome ExecuteWait(ulong lo, ulong hi)
    {
        if ((lo & 0xFFFF_FF00UL) != 0 || (hi & 3) != 0)
        {
            return DescriptorOutcome.Invalid;
        }
        if (_outstandingDeviceInvalidations > 0)
        {
            // 6.5.2.8: the wait completes only after every earlier invalidation did, including the
            // device-TLB invalidations still waiting for their devices' completions.
            StallQueue(onWait: true);
            return DescriptorOutcome.Stall;
        }
        Counters.InvalidationWaits.Increment();
        // Every earlier IOMMU-side invalidation has completed (processing is synchronous), which
        // is all the fence (FN) and page-drain (PD) flags ask for.
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
            if (!_regs.Test32(VtdReg.Ics, 1))
            {
                _regs.SetBits32(VtdReg.Ics, 1, true);
                RaiseEvent(VtdReg.Iectl, InvalidationEventMessage(), Counters.InvalidationEvents);
            }
        }
        return DescriptorOutcome.Done;
    }
}
