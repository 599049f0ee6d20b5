using System.Numerics;
using SharpVisor.Core;

namespace SharpVisor.Devices.Iommu;

/// <summary>How the unit answered an ATS translation request (PCIe ATS Translation Completion status).</summary>
public enum AtsStatus : byte
{
    /// <summary>Successful completion: the permissions say what the device may do (R=W=0: nothing).</summary>
    Success,
    /// <summary>Unsupported Request: the context/PASID entry does not allow translation requests, or it is malformed (a fault is recorded).</summary>
    UnsupportedRequest,
}

/// <summary>Permissions of an ATS translation completion (PCIe ATS R, W, Exe, Priv bits).</summary>
[Flags]
public enum AtsPermissions : byte
{
    None = 0,
    Read = 1,
    Write = 2,
    Execute = 4,
    Privileged = 8,
}

/// <summary>An ATS translation completion: the translated page, its size and what the device may do with it.</summary>
/// <param name="TranslatedAddress">The output (host-physical) address of <c>address</c>; page base + offset.</param>
/// <param name="PageShift">log2 of the translated page size (12, 21 or 30); the device may cache this whole page.</param>
public readonly record struct AtsTranslation(AtsStatus Status, ulong TranslatedAddress, AtsPermissions Permissions, int PageShift);

/// <summary>
/// The ATS side of a PCI function with a device-TLB (PCIe ATS capability 0x000F): the unit
/// forwards device-TLB invalidations here (VT-d spec 4.3, 6.5.2.5/6.5.2.6), and the device answers
/// each with <see cref="IntelIommu.CompleteDeviceTlbInvalidation"/> carrying the tag, possibly
/// several tags in one completion (coalesced, like a PCIe Invalidation Completion's ITag vector).
/// </summary>
public interface IAtsEndpoint
{
    /// <summary>
    /// Invalidate cached translations overlapping [address, address + size) (size is a power of
    /// two ≥ 4 KiB, or ulong.MaxValue for everything) of requests-with-PASID <paramref name="pasid"/>,
    /// or of requests-without-PASID when null. Called without the unit's lock held.
    /// </summary>
    void InvalidateDeviceTlb(ulong address, ulong size, uint? pasid, byte tag);
}

/// <summary>
/// ATS (VT-d spec chapter 4, "Support for Device-TLBs"): translation requests, translated
/// requests and device-TLB invalidation with invalidation tags and a bounded wait.
/// </summary>
public sealed partial class IntelIommu
{
    /// <summary>PCIe ATS ITag: 5 bits, so at most 32 invalidations outstanding per device.</summary>
    const int TagsPerDevice = 32;

    sealed class AtsEndpointState(IAtsEndpoint endpoint)
    {
        public readonly IAtsEndpoint Endpoint = endpoint;
        public uint Outstanding;   // one bit per ITag in flight
    }

    readonly record struct PendingDeviceInvalidation(IAtsEndpoint Endpoint, ulong Address, ulong Size, uint? Pasid, byte Tag);

    readonly Dictionary<ushort, AtsEndpointState> _atsEndpoints = [];
    readonly Queue<PendingDeviceInvalidation> _deviceOutbox = new();
    int _outstandingDeviceInvalidations;
    bool _queueStalled;
    bool _stalledOnWait;        // the stalled descriptor is an invalidation wait (else a device-TLB invalidation short of tags)
    bool _dispatching;
    readonly TimerQueue? _timers;
    readonly TimerQueue.Timer? _invalidationTimer;
    /// <summary>Virtual time at which a stalled queue gives up on the devices (meaningful while the timer is armed).</summary>
    long _invalidationDeadlineNs;

    /// <summary>
    /// Connects the ATS endpoint of <paramref name="requesterId"/> (a PCI function whose ATS
    /// capability is enabled) so that device-TLB invalidations reach it.
    /// </summary>
    public void AttachAtsEndpoint(ushort requesterId, IAtsEndpoint endpoint)
    {
        lock (_lock)
        {
            _atsEndpoints[requesterId] = new AtsEndpointState(endpoint);
        }
    }

    public void DetachAtsEndpoint(ushort requesterId)
    {
        lock (_lock)
        {
            if (_atsEndpoints.Remove(requesterId, out var state))
            {
                // Its tags will never be answered: release them as if answered.
                ReleaseTags(state, state.Outstanding);
            }
        }
        DrainOutbox();
    }

    /// <summary>
    /// An ATS Translation Request (VT-d 4.2.2/4.2.3) from <paramref name="requesterId"/>. Page-level
    /// denials come back as Success with no permissions (no fault is recorded: the device learns
    /// it may not use the page); entries that forbid translation requests (legacy TT≠01b,
    /// scalable DTE=0) or malformed structures give Unsupported Request and a recorded fault.
    /// </summary>
    public AtsTranslation AtsTranslate(ushort requesterId, uint? pasid, ulong address, bool write, bool privileged = false, bool execute = false)
    {
        AtsTranslation answer;
        lock (_lock)
        {
            answer = AtsTranslateLocked(requesterId, pasid, address, write, privileged, execute);
        }
        DrainOutbox();
        return answer;
    }

    AtsTranslation AtsTranslateLocked(ushort sid, uint? pasid, ulong address, bool write, bool privileged, bool execute)
    {
        Counters.AtsTranslationRequests.Increment();
        var request = new VtdRequest
        {
            SourceId = sid,
            HasPasid = pasid.HasValue,
            Pasid = pasid ?? VtdIotlbEntry.NoPasid,
            Write = write,
            Privileged = privileged && pasid.HasValue,
            Execute = execute && pasid.HasValue,
        };
        const AtsPermissions ReadWrite = AtsPermissions.Read | AtsPermissions.Write;
        if (!TranslationEnabled)
        {
            // With remapping off, addresses are untranslated: the identity, with every right.
            return new AtsTranslation(AtsStatus.Success, address, ReadWrite, 12);
        }
        var reason = LookupContext(sid, out var context, out bool fpd);
        if (reason == VtdFaultReason.None && !context.DeviceTlbEnabled)
        {
            reason = context.Scalable ? VtdFaultReason.SmDeviceTlbDisabled : VtdFaultReason.TranslationTypeBlocked;
        }
        ResolvedKind kind = ResolvedKind.Legacy;
        VtdIotlbEntry hit = default;
        bool writeProtect = false;
        if (reason == VtdFaultReason.None)
        {
            reason = ResolveLocked(in request, address, out hit, out kind, out fpd, out writeProtect);
        }
        if (reason != VtdFaultReason.None)
        {
            if (IsPageLevelDenial(reason))
            {
                Counters.AtsTranslationDenied.Increment();
                return new AtsTranslation(AtsStatus.Success, 0, AtsPermissions.None, 12);
            }
            Counters.AtsUnsupportedRequests.Increment();
            RecordFault(sid, address, reason, !write, fpd, ActivePasidForRecord(in request));
            return new AtsTranslation(AtsStatus.UnsupportedRequest, 0, AtsPermissions.None, 12);
        }
        if (kind == ResolvedKind.PassThrough)
        {
            return new AtsTranslation(AtsStatus.Success, address, ReadWrite, 12);
        }
        // The permissions this request's privilege level has on the page.
        var permissions = AtsPermissions.None;
        var probe = request;
        probe.Write = false;
        probe.Execute = false;
        if (CheckAccess(in probe, in hit, kind, writeProtect) == VtdFaultReason.None)
        {
            permissions |= AtsPermissions.Read;
            probe.Write = true;
            // First level: W is granted only once the leaf is dirty (a write translation request sets D),
            // so a device can never write through a translation that left D clear (3.6.2, 4.2.3).
            bool dirtyOk = kind != ResolvedKind.FirstLevel || (hit.Flags & VtdIotlbEntry.FlagDirty) != 0;
            if (dirtyOk && CheckAccess(in probe, in hit, kind, writeProtect) == VtdFaultReason.None)
            {
                permissions |= AtsPermissions.Write;
            }
            probe.Write = false;
            probe.Execute = true;
            if (kind == ResolvedKind.FirstLevel && request.HasPasid && (hit.Flags & VtdIotlbEntry.FlagExecute) != 0 && execute)
            {
                permissions |= AtsPermissions.Execute;
            }
            if (request.Privileged)
            {
                permissions |= AtsPermissions.Privileged;
            }
        }
        if ((permissions & AtsPermissions.Read) == 0)
        {
            Counters.AtsTranslationDenied.Increment();
        }
        ulong offset = address & ((1UL << hit.PageShift) - 1);
        return new AtsTranslation(AtsStatus.Success, hit.OutputBase + offset, permissions, hit.PageShift);
    }

    /// <summary>Faults that a translation completion reports as "no access" rather than as an error (4.2.3).</summary>
    static bool IsPageLevelDenial(VtdFaultReason reason) => reason is VtdFaultReason.ReadNotPermitted or VtdFaultReason.WriteNotPermitted
        or VtdFaultReason.AddressBeyondAgaw or VtdFaultReason.SmReadNotPermitted or VtdFaultReason.SmWriteNotPermitted
        or VtdFaultReason.SmAddressBeyondWidth or VtdFaultReason.FirstLevelNotPresent or VtdFaultReason.SmNonCanonical
        or VtdFaultReason.SmPrivilegeViolation or VtdFaultReason.SmExecuteViolation;

    /// <summary>A translated request (PCIe AT=10b) read: allowed only when the context/PASID setup permits device-TLBs.</summary>
    public DmaStatus TranslatedDmaRead(ushort requesterId, ulong translatedAddress, Span<byte> destination) =>
        TranslatedDmaRead(requesterId, translatedAddress, destination, null);

    /// <summary>A translated request (PCIe AT=10b) write: allowed only when the context/PASID setup permits device-TLBs.</summary>
    public DmaStatus TranslatedDmaWrite(ushort requesterId, ulong translatedAddress, ReadOnlySpan<byte> source) =>
        TranslatedDmaWrite(requesterId, translatedAddress, source, null);

    /// <summary>
    /// With a <paramref name="permit"/> still valid for the current translation generation the
    /// context check is skipped (no lock): the context entry allowed translated requests when the
    /// permit was granted, and any change to it needs an invalidation, which ends the generation.
    /// </summary>
    internal DmaStatus TranslatedDmaRead(ushort requesterId, ulong translatedAddress, Span<byte> destination, TranslatedRequestPermit? permit)
    {
        if (permit is not null && PermitHolds(permit, translatedAddress, destination.Length))
        {
            return _ram.TryRead(translatedAddress, destination) ? DmaStatus.Ok : NotRamOnFastPath();
        }
        var status = CheckTranslatedRequest(requesterId, translatedAddress, (ulong)destination.Length, isWrite: false, permit);
        if (status == DmaStatus.Ok && !_ram.TryRead(translatedAddress, destination))
        {
            status = DmaStatus.NotRam;
        }
        DrainOutbox();
        return status;
    }

    internal DmaStatus TranslatedDmaWrite(ushort requesterId, ulong translatedAddress, ReadOnlySpan<byte> source, TranslatedRequestPermit? permit)
    {
        if (permit is not null && PermitHolds(permit, translatedAddress, source.Length))
        {
            return _ram.TryWrite(translatedAddress, source) ? DmaStatus.Ok : NotRamOnFastPath();
        }
        var status = CheckTranslatedRequest(requesterId, translatedAddress, (ulong)source.Length, isWrite: true, permit);
        if (status == DmaStatus.Ok && !_ram.TryWrite(translatedAddress, source))
        {
            status = DmaStatus.NotRam;
        }
        DrainOutbox();
        return status;
    }

    /// <summary>
    /// 4.2.4: a translated request bypasses the page tables, so it is allowed only from a device
    /// whose context entry enables device-TLBs (legacy TT=01b, scalable DTE=1); it must never
    /// reach the interrupt address range (3.14) and must be RAM.
    /// </summary>
    bool PermitHolds(TranslatedRequestPermit permit, ulong address, int length)
    {
        if (length == 0 || Volatile.Read(ref permit.Generation) != Volatile.Read(ref _translationGeneration)
            || address + (ulong)length - 1 < address || TouchesInterruptRange(address, length))
        {
            return false;
        }
        Counters.TranslatedRequests.Increment();
        return true;
    }

    DmaStatus CheckTranslatedRequest(ushort sid, ulong address, ulong length, bool isWrite, TranslatedRequestPermit? permit = null)
    {
        if (length == 0)
        {
            return DmaStatus.Ok;
        }
        lock (_lock)
        {
            Counters.TranslatedRequests.Increment();
            if (address + length - 1 < address || TouchesInterruptRange(address, (int)Math.Min(length, int.MaxValue)))
            {
                Counters.TranslatedRequestsBlocked.Increment();
                Counters.DmaBlocked.Increment();
                return DmaStatus.Blocked;
            }
            if (TranslationEnabled)
            {
                var reason = LookupContext(sid, out var context, out bool fpd);
                if (reason == VtdFaultReason.None && !context.DeviceTlbEnabled)
                {
                    reason = context.Scalable ? VtdFaultReason.SmDeviceTlbDisabled : VtdFaultReason.TranslationTypeBlocked;
                }
                if (reason != VtdFaultReason.None)
                {
                    Counters.TranslatedRequestsBlocked.Increment();
                    Counters.DmaBlocked.Increment();
                    RecordFault(sid, address, reason, !isWrite, fpd);
                    return DmaStatus.Blocked;
                }
                if (permit is not null)
                {
                    Volatile.Write(ref permit.Generation, _translationGeneration);
                }
            }
            else if (HitsProtectedRegion(address, length))
            {
                Counters.ProtectedRegionBlocked.Increment();
                Counters.DmaBlocked.Increment();
                return DmaStatus.Blocked;
            }
            if (!_ram.IsRamRange(address, length))
            {
                Counters.DmaNotRam.Increment();
                return DmaStatus.NotRam;
            }
            return DmaStatus.Ok;
        }
    }

    // ---- device-TLB invalidation (6.5.2.5, 6.5.2.6) ----

    /// <summary>Hands one invalidation to the device (after the lock is released) under a fresh tag.</summary>
    DescriptorOutcome ForwardDeviceTlbInvalidation(ushort sid, ulong address, ulong size, uint? pasid)
    {
        if (!_atsEndpoints.TryGetValue(sid, out var state))
        {
            // No device with ATS behind this source-id: nothing can hold a translation.
            Counters.DeviceTlbInvNoEndpoint.Increment();
            return DescriptorOutcome.Done;
        }
        if (state.Outstanding == uint.MaxValue)
        {
            // Every tag is in flight: wait for one to be answered (or to time out).
            StallQueue(onWait: false);
            return DescriptorOutcome.Stall;
        }
        byte tag = (byte)BitOperations.TrailingZeroCount(~state.Outstanding);
        state.Outstanding |= 1u << tag;
        _outstandingDeviceInvalidations++;
        Counters.DeviceTlbInvForwarded.Increment();
        _deviceOutbox.Enqueue(new PendingDeviceInvalidation(state.Endpoint, address, size, pasid, tag));
        return DescriptorOutcome.Done;
    }

    /// <summary>
    /// An Invalidation Completion from a device: <paramref name="tagVector"/> has a bit set for
    /// every tag it answers (several invalidations may be answered at once). Completions for tags
    /// not in flight (late, after a time-out, or spoofed) are counted and ignored.
    /// </summary>
    public void CompleteDeviceTlbInvalidation(ushort requesterId, uint tagVector)
    {
        lock (_lock)
        {
            if (!_atsEndpoints.TryGetValue(requesterId, out var state))
            {
                Counters.DeviceTlbLateCompletions.Increment();
                return;
            }
            uint answered = tagVector & state.Outstanding;
            int stray = BitOperations.PopCount(tagVector & ~state.Outstanding);
            if (stray > 0)
            {
                Counters.DeviceTlbLateCompletions.Add(stray);
            }
            Counters.DeviceTlbCompletions.Add(BitOperations.PopCount(answered));
            ReleaseTags(state, answered);
        }
        DrainOutbox();
    }

    void ReleaseTags(AtsEndpointState state, uint tags)
    {
        state.Outstanding &= ~tags;
        _outstandingDeviceInvalidations -= BitOperations.PopCount(tags);
        if (_queueStalled && tags != 0)
        {
            // Something the stalled descriptor waits for has changed: try it again.
            _queueStalled = false;
            _invalidationTimer?.Cancel();
            ProcessQueue();
        }
    }

    /// <summary>Stops queue processing at the current descriptor; a virtual-time timer bounds the wait.</summary>
    void StallQueue(bool onWait)
    {
        _queueStalled = true;
        _stalledOnWait = onWait;
        if (_invalidationTimer is { IsArmed: false })
        {
            _invalidationDeadlineNs = _timers!.Clock.NowNs + _options.DeviceTlbInvalidationTimeoutNs;
            _invalidationTimer.ArmAt(_invalidationDeadlineNs);
        }
    }

    /// <summary>
    /// 6.5.2.10 Invalidation Time-out Error: a device did not answer in time. FSTS.ITE is set (a
    /// fault event), the stalled wait descriptor is aborted (its status is not written) and IQH
    /// moves past it; every outstanding tag is dropped, so late answers are ignored. A device-TLB
    /// invalidation that was waiting for a free tag stays at IQH and is sent again later.
    /// Fetching resumes when software clears ITE (Linux's qi_check_fault then resubmits).
    /// </summary>
    void TimeOutStalledQueue()
    {
        if (!_queueStalled)
        {
            return;
        }
        Counters.DeviceTlbTimeouts.Increment();
        Log.Once($"{Name}.ite", Name, "a device did not answer a device-TLB invalidation in time: Invalidation Time-out Error");
        _queueStalled = false;
        foreach (var state in _atsEndpoints.Values)
        {
            _outstandingDeviceInvalidations -= BitOperations.PopCount(state.Outstanding);
            state.Outstanding = 0;
        }
        if (_stalledOnWait && QueuedInvalidationEnabled)
        {
            // (With queued invalidation disabled meanwhile, IQH stays 0: 11.4.10.1.)
            Iqh = (Iqh + (_queueWide ? 32UL : 16UL)) % _queueBytes;
        }
        RaiseQueueError(VtdFsts.Ite);
    }

    void OnInvalidationTimeout()
    {
        lock (_lock)
        {
            TimeOutStalledQueue();
        }
        DrainOutbox();
    }

    /// <summary>
    /// Calls the devices' endpoints outside the lock. A device may answer from inside the call;
    /// that re-enters the unit, which then only queues work for the loop already running (one
    /// dispatcher at a time, so no recursion and no lock held while a device runs).
    /// </summary>
    void DispatchDeviceInvalidations()
    {
        lock (_lock)
        {
            if (_dispatching || (_deviceOutbox.Count == 0 && !_queueStalled))
            {
                return;
            }
            _dispatching = true;
        }
        try
        {
            while (true)
            {
                PendingDeviceInvalidation item;
                lock (_lock)
                {
                    if (_deviceOutbox.Count == 0 && _queueStalled && _invalidationTimer == null)
                    {
                        // Without a timer queue there is no virtual time to wait in: a device
                        // that has not answered by now has timed out.
                        TimeOutStalledQueue();
                    }
                    if (_deviceOutbox.Count == 0)
                    {
                        _dispatching = false;
                        return;
                    }
                    item = _deviceOutbox.Dequeue();
                }
                item.Endpoint.InvalidateDeviceTlb(item.Address, item.Size, item.Pasid, item.Tag);
            }
        }
        catch
        {
            lock (_lock)
            {
                _dispatching = false;
            }
            throw; // a device model threw: a VMM bug, not a guest action
        }
    }
}

/// <summary>
/// A requester's standing permission to issue translated requests (its context entry enables
/// device-TLBs), valid only in the translation generation it was granted in.
/// </summary>
internal sealed class TranslatedRequestPermit
{
    internal long Generation = -1;
}
