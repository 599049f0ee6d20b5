using SharpVisor.Core;

namespace SharpVisor.Devices.Iommu;

/// <summary>Primary fault logging (VT-d spec 7.2.1) and the fault event interrupt (7.3, 11.4.9).</summary>
public sealed partial class IntelIommu
{
    const ulong FaultF = 1UL << 63;            // fault record bit 127: F (Fault)
    const ulong FaultTypeRead = 1UL << 62;     // bit 126: T1, 1 = read request (Linux: dma_frcd_type)

    /// <summary>
    /// Qualified faults (7.1.3 table, "Qualified" column) are the ones detected after the context
    /// entry (or IRTE) is found; its FPD bit suppresses recording and reporting of exactly these.
    /// </summary>
    static bool IsQualified(VtdFaultReason reason) => reason switch
    {
        VtdFaultReason.ContextEntryNotPresent or VtdFaultReason.ContextEntryInvalid or VtdFaultReason.AddressBeyondAgaw
            or VtdFaultReason.WriteNotPermitted or VtdFaultReason.ReadNotPermitted or VtdFaultReason.PagingEntryAccessError
            or VtdFaultReason.PagingEntryReserved or VtdFaultReason.TranslationTypeBlocked => true,
        VtdFaultReason.IrteNotPresent or VtdFaultReason.IrteReserved or VtdFaultReason.IrSourceIdMismatch => true,
        // Scalable mode: every fault found at or after the context entry (SCT.2 onwards).
        >= VtdFaultReason.SmContextEntryNotPresent => true,
        _ => false,
    };

    /// <summary>
    /// Records a fault (under the lock). <paramref name="faultInfo"/> is the page address for DMA
    /// faults, or the interrupt index in bits 63:48 for interrupt-remapping faults (11.4.9.7 FI).
    /// </summary>
    /// <remarks><paramref name="pasid"/>: the PASID of a request-with-PASID (PP=1 and PV in bits 95 and 123:104), else NoPasid.</remarks>
    void RecordFault(ushort sourceId, ulong faultInfo, VtdFaultReason reason, bool isRead, bool faultProcessingDisabled, uint pasid = VtdIotlbEntry.NoPasid)
    {
        Counters.FaultsByReason(reason).Increment();
        if (faultProcessingDisabled && IsQualified(reason))
        {
            Counters.FaultsSuppressedByFpd.Increment();
            return;
        }
        if (_regs.Test32(VtdReg.Fsts, VtdFsts.Pfo))
        {
            // 7.2.1: while PFO is set, new faults are neither recorded nor reported.
            Counters.FaultsOverflowed.Increment();
            return;
        }
        ulong low = faultInfo & PageMask4K;
        ulong high = sourceId | ((ulong)reason << 32) | (isRead ? FaultTypeRead : 0) | FaultF;
        if (pasid != VtdIotlbEntry.NoPasid)
        {
            high |= (1UL << 31) | ((ulong)(pasid & 0xF_FFFF) << 40);   // PP (bit 95), PV (bits 123:104)
        }
        // 7.2.1 allows compressing a fault identical to the one last recorded and still pending
        // (same source, reason, type and address): a device retrying a bad DMA fills one record.
        if (_lastFaultIndex >= 0 && FaultHigh(_lastFaultIndex) == high && FaultLow(_lastFaultIndex) == low)
        {
            Counters.FaultsCompressed.Increment();
            return;
        }
        bool hadCondition = EventConditionPending();
        int index = _nextFaultIndex;
        if ((FaultHigh(index) & FaultF) != 0)
        {
            // Every record is still held by software: overflow.
            _regs.SetBits32(VtdReg.Fsts, VtdFsts.Pfo, true);
            Counters.FaultsOverflowed.Increment();
        }
        else
        {
            uint fsts = _regs.Read32(VtdReg.Fsts);
            if ((fsts & VtdFsts.Ppf) == 0)
            {
                // FRI: the record holding the first pending fault (11.4.9.2).
                fsts = (fsts & ~(0xFFu << VtdFsts.FriShift)) | ((uint)index << VtdFsts.FriShift);
            }
            _regs.Set32(VtdReg.Fsts, fsts | VtdFsts.Ppf);
            _regs.Set64(FaultRecordOffset(index), low);
            _regs.Set64(FaultRecordOffset(index) + 8, high);
            _lastFaultIndex = index;
            _nextFaultIndex = (index + 1) % _options.FaultRecordingRegisters;
            Counters.FaultsRecorded.Increment();
        }
        // 11.4.9.3: setting a status field when another one is already set is not a new event.
        if (!hadCondition)
        {
            RaiseEvent(VtdReg.Fectl, FaultEventMessage(), Counters.FaultEvents);
        }
    }

    int FaultRecordOffset(int index) => _options.FaultRecordingOffset + 16 * index;
    ulong FaultLow(int index) => _regs.Read64(FaultRecordOffset(index));
    ulong FaultHigh(int index) => _regs.Read64(FaultRecordOffset(index) + 8);

    bool PrimaryPendingFault()
    {
        for (int i = 0; i < _options.FaultRecordingRegisters; i++)
        {
            if ((FaultHigh(i) & FaultF) != 0)
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>FSTS.PPF is set while any fault record holds F (11.4.9.2), so it counts as a status condition too.</summary>
    bool EventConditionPending() => _regs.Test32(VtdReg.Fsts, VtdFsts.EventConditions);

    /// <summary>Software wrote 1 to a record's F (RW1C, already cleared by the register file).</summary>
    void FaultRecordReleased(int index)
    {
        if (_lastFaultIndex == index)
        {
            _lastFaultIndex = -1;
        }
        _regs.SetBits32(VtdReg.Fsts, VtdFsts.Ppf, PrimaryPendingFault());
        ClearEventPendingIfServiced();
    }

    /// <summary>FSTS written: PFO, IQE, ICE, ITE are RW1C and already cleared by the register file (11.4.9.2).</summary>
    void FaultStatusWritten(uint previous)
    {
        bool queueWasStopped = (previous & (VtdFsts.Iqe | VtdFsts.Ite)) != 0;
        ClearEventPendingIfServiced();
        if (queueWasStopped && !_regs.Test32(VtdReg.Fsts, VtdFsts.Iqe | VtdFsts.Ite))
        {
            // 6.5.2.10: once software clears IQE, fetching resumes at IQH (Linux's qi_check_fault
            // overwrites the bad descriptor with its wait descriptor before clearing IQE).
            ProcessQueue();
        }
    }

    /// <summary>11.4.9.3: IP clears when software has serviced every status condition.</summary>
    void ClearEventPendingIfServiced()
    {
        if (!EventConditionPending())
        {
            _regs.SetBits32(VtdReg.Fectl, VtdEventCtl.Ip, false);
        }
    }

    /// <summary>Queue errors (6.5.2.10): IQE/ICE/ITE are fault-event conditions too.</summary>
    void RaiseQueueError(uint statusBit)
    {
        bool hadCondition = EventConditionPending();
        _regs.SetBits32(VtdReg.Fsts, statusBit, true);
        if (!hadCondition)
        {
            RaiseEvent(VtdReg.Fectl, FaultEventMessage(), Counters.FaultEvents);
        }
    }
}
