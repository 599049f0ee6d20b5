using System.Numerics;
using SharpVisor.Core;

namespace SharpVisor.Devices.Iommu;

/// <summary>
/// Everything a guest can observe of one VT-d unit: the register file as it reads it, and the
/// values the unit latched from registers at a command (the root table and translation mode at
/// GCMD.SRTP, the interrupt remapping table at GCMD.SIRTP, the queue geometry at GCMD.QIE), the
/// fault recording position, and an invalidation queue stalled on device-TLB completions.
/// </summary>
/// <remarks>
/// No cache is in it (IOTLB, context, PASID, paging-structure and interrupt entry caches, the
/// per-requester snapshots): chapter 6 (6.2, "Address Translation Caches") leaves which caches
/// exist, their size and what they hold to the implementation, and software keeps them coherent
/// only by invalidating (6.5), never by relying on an entry being cached; so a restored unit that
/// starts with empty caches is one a guest cannot tell apart. Device-TLBs belong to the devices.
/// </remarks>
public sealed record VtdState
{
    public const int CurrentVersion = 1;

    public int Version { get; init; } = CurrentVersion;

    /// <summary>The register block, one element per dword (element i is offset 4*i), as the guest reads it.</summary>
    public uint[] Registers { get; init; } = [];

    /// <summary>RTADDR.RTA latched by GCMD.SRTP (0 before the first SRTP).</summary>
    public ulong ActiveRootTable { get; init; }

    /// <summary>RTADDR.TTM latched by GCMD.SRTP: 0 legacy, 1 scalable (2 and 3 make every lookup fault).</summary>
    public int ActiveTableMode { get; init; }

    /// <summary>IRTA latched by GCMD.SIRTP: table address, EIME and size.</summary>
    public ulong ActiveInterruptRemapTable { get; init; }

    /// <summary>IQA.IQA, QS (as bytes) and DW latched when queued invalidation was last enabled.</summary>
    public ulong QueueBase { get; init; }
    public ulong QueueBytes { get; init; } = 4096;
    public bool QueueWideDescriptors { get; init; }

    /// <summary>The fault recording register the next fault goes to (7.2.1: used in a circular way).</summary>
    public int NextFaultIndex { get; init; }

    /// <summary>The last fault recorded while its F is still set (a repeat of it is compressed), or -1.</summary>
    public int LastFaultIndex { get; init; } = -1;

    /// <summary>The queue waits at IQH for device-TLB invalidation completions (6.5.2.8), on a wait descriptor or for a free tag.</summary>
    public bool QueueStalled { get; init; }
    public bool StalledOnWait { get; init; }

    /// <summary>Virtual time at which a stalled queue reports an Invalidation Time-out Error (6.5.2.10); 0 when not waiting.</summary>
    public long InvalidationDeadlineNs { get; init; }

    /// <summary>Device-TLB invalidations sent to devices and not yet answered, by requester.</summary>
    public VtdOutstandingInvalidations[] OutstandingInvalidations { get; init; } = [];
}

/// <summary>The invalidation tags (PCIe ATS ITag, one bit each) one requester has not answered yet.</summary>
public sealed record VtdOutstandingInvalidations
{
    public ushort RequesterId { get; init; }
    public uint Tags { get; init; }
}

public sealed partial class IntelIommu : IPersistent<VtdState>
{
    public VtdState SaveState()
    {
        lock (_lock)
        {
            var outstanding = new List<VtdOutstandingInvalidations>();
            foreach (var (rid, endpoint) in _atsEndpoints)
            {
                if (endpoint.Outstanding != 0)
                {
                    outstanding.Add(new VtdOutstandingInvalidations { RequesterId = rid, Tags = endpoint.Outstanding });
                }
            }
            return new VtdState
            {
                Registers = _regs.Save(),
                ActiveRootTable = _activeRootTable,
                ActiveTableMode = _activeTableMode,
                ActiveInterruptRemapTable = _activeIrta,
                QueueBase = _queueBase,
                QueueBytes = _queueBytes,
                QueueWideDescriptors = _queueWide,
                NextFaultIndex = _nextFaultIndex,
                LastFaultIndex = _lastFaultIndex,
                QueueStalled = _queueStalled,
                StalledOnWait = _queueStalled && _stalledOnWait, // the latch keeps its last value after a stall ends; it means nothing then
                InvalidationDeadlineNs = _queueStalled && _invalidationTimer is { IsArmed: true } ? _invalidationDeadlineNs : 0,
                OutstandingInvalidations = [.. outstanding],
            };
        }
    }

    /// <summary>
    /// Replaces the unit's state. Every cache is dropped. Outstanding device-TLB invalidations are
    /// given back to the ATS endpoints attached now; those of requesters with no endpoint attached
    /// cannot be answered any more and end, as a silent device does, in the time-out (6.5.2.10).
    /// </summary>
    public void RestoreState(VtdState state)
    {
        lock (_lock)
        {
            Validate(state);
            _regs.Load(state.Registers);
            _activeRootTable = state.ActiveRootTable;
            _activeTableMode = state.ActiveTableMode;
            _activeIrta = state.ActiveInterruptRemapTable;
            _queueBase = state.QueueBase;
            _queueBytes = state.QueueBytes;
            _queueWide = state.QueueWideDescriptors;
            _nextFaultIndex = state.NextFaultIndex;
            _lastFaultIndex = state.LastFaultIndex;

            // Caches are not state: a restored unit starts with all of them empty.
            InvalidateSnapshots();
            _contextCache.InvalidateAll();
            _iotlb.InvalidateAll();
            _pasidCache.InvalidateAll();
            _psc?.InvalidateAll();
            Array.Fill(_iecIndex, -1);

            _outstandingDeviceInvalidations = 0;
            foreach (var (rid, endpoint) in _atsEndpoints)
            {
                endpoint.Outstanding = 0;
                foreach (var o in state.OutstandingInvalidations)
                {
                    if (o.RequesterId == rid)
                    {
                        endpoint.Outstanding = o.Tags;
                        _outstandingDeviceInvalidations += BitOperations.PopCount(o.Tags);
                    }
                }
            }
            _queueStalled = state.QueueStalled;
            _stalledOnWait = state.StalledOnWait;
            if (_queueStalled && _invalidationTimer is not null)
            {
                _invalidationDeadlineNs = state.InvalidationDeadlineNs;
                _invalidationTimer.ArmAt(_invalidationDeadlineNs);
            }
            else
            {
                _invalidationTimer?.Cancel();
            }
            _outboxCount = 0;
            _deviceOutbox.Clear();
        }
        // Without a timer queue a stalled queue times out at the next dispatch (as it would have).
        DrainOutbox();
    }

    /// <summary>Refuses (InvalidStateException) anything this unit could not have produced; changes nothing.</summary>
    void Validate(VtdState s)
    {
        void Check(bool ok, string problem) => InvalidStateException.Check(ok, Name, problem);

        Check(s is not null, "no state");
        InvalidStateException.CheckVersion(s!.Version, VtdState.CurrentVersion, Name);
        Check(s.Registers is not null && s.OutstandingInvalidations is not null, "Registers and OutstandingInvalidations must be present");
        // Reserved bits zero, read-only fields (VER, CAP, ECAP: the configuration) as this unit
        // has them, addresses within the host address width (the RW masks stop at HAW).
        string? problem = _regs.CheckFixedBits(s.Registers!);
        Check(problem is null, problem ?? "");

        uint R32(int offset) => s.Registers![offset / 4];
        ulong R64(int offset) => R32(offset) | ((ulong)R32(offset + 4) << 32);
        uint gsts = R32(VtdReg.Gsts);
        int records = _options.FaultRecordingRegisters;

        // Register commands complete before the write that starts them returns (11.4.6, 11.4.8.1).
        Check((R64(VtdReg.Ccmd) & (1UL << 63)) == 0, "CCMD.ICC is set: a context command cannot be in progress");
        Check((R64(_options.IotlbRegisterOffset + 8) & (1UL << 63)) == 0, "IOTLB.IVT is set: an IOTLB command cannot be in progress");

        // Fault logging (11.4.9.2, 11.4.9.3, 11.4.9.7).
        uint fsts = R32(VtdReg.Fsts);
        bool anyF = false;
        for (int i = 0; i < records; i++)
        {
            anyF |= (R64(_options.FaultRecordingOffset + 16 * i + 8) & FaultF) != 0;
        }
        Check(((fsts & VtdFsts.Ppf) != 0) == anyF, $"FSTS.PPF is {(fsts >> 1) & 1} but {(anyF ? "a" : "no")} fault record has F set");
        Check((int)((fsts >> VtdFsts.FriShift) & 0xFF) < records, $"FSTS.FRI {(fsts >> VtdFsts.FriShift) & 0xFF} is beyond the {records} fault recording registers");
        Check(s.NextFaultIndex >= 0 && s.NextFaultIndex < records, $"NextFaultIndex {s.NextFaultIndex} is not a fault recording register (0..{records - 1})");
        Check(s.LastFaultIndex >= -1 && s.LastFaultIndex < records, $"LastFaultIndex {s.LastFaultIndex} is not -1 or a fault recording register");
        Check(s.LastFaultIndex < 0 || (R64(_options.FaultRecordingOffset + 16 * s.LastFaultIndex + 8) & FaultF) != 0,
            $"LastFaultIndex {s.LastFaultIndex} names a fault record whose F is clear");
        uint fectl = R32(VtdReg.Fectl);
        Check((fectl & VtdEventCtl.Ip) == 0 || ((fectl & VtdEventCtl.Im) != 0 && (fsts & VtdFsts.EventConditions) != 0),
            "FECTL.IP is set without IM set and a fault status condition pending");

        // Root table and translation mode latched by SRTP (11.4.4.1, 11.4.5).
        bool rtps = (gsts & VtdGcmd.Srtp) != 0;
        Check((s.ActiveRootTable & ~_hawPageMask) == 0, $"ActiveRootTable 0x{s.ActiveRootTable:x} is not a 4 KiB aligned address below the {_options.HostAddressWidth}-bit host address width");
        Check(s.ActiveTableMode >= 0 && s.ActiveTableMode <= (_options.ScalableMode ? 3 : 0), $"ActiveTableMode {s.ActiveTableMode} is not a TTM this unit implements");
        Check(rtps || (s.ActiveRootTable == 0 && s.ActiveTableMode == 0), "a root table is latched but GSTS.RTPS is clear");

        // Interrupt remapping table latched by SIRTP (11.4.11.1).
        ulong irtaMask = _options.InterruptRemapping ? _hawPageMask | (_options.ExtendedInterruptMode ? 0x800UL : 0) | 0xF : 0;
        Check((s.ActiveInterruptRemapTable & ~irtaMask) == 0, $"ActiveInterruptRemapTable 0x{s.ActiveInterruptRemapTable:x} has bits IRTA does not implement");
        Check((gsts & VtdGcmd.Sirtp) != 0 || s.ActiveInterruptRemapTable == 0, "an interrupt remapping table is latched but GSTS.IRTPS is clear");

        // Invalidation queue (6.5.2, 11.4.10).
        Check((s.QueueBase & ~_hawPageMask) == 0, $"QueueBase 0x{s.QueueBase:x} is not a 4 KiB aligned address below the host address width");
        Check(s.QueueBytes is >= 4096 and <= 4096 << 7 && BitOperations.IsPow2(s.QueueBytes), $"QueueBytes {s.QueueBytes} is not 4 KiB << QS (QS 0..7)");
        Check(!s.QueueWideDescriptors || _options.ScalableMode, "256-bit descriptors without scalable mode");
        Check(_options.QueuedInvalidation || (s.QueueBase == 0 && s.QueueBytes == 4096 && !s.QueueWideDescriptors),
            "a queue geometry is latched but the unit has no queued invalidation");
        ulong iqh = R64(VtdReg.Iqh);
        Check(iqh < s.QueueBytes, $"IQH 0x{iqh:x} is beyond the {s.QueueBytes}-byte queue");
        Check(!s.QueueWideDescriptors || (iqh & 0x10) == 0, $"IQH 0x{iqh:x} is not 32-byte aligned with 256-bit descriptors");
        Check((gsts & VtdGcmd.Qie) != 0 || iqh == 0, $"IQH is 0x{iqh:x} but queued invalidation is disabled (IQH then reads 0, 11.4.10.1)");
        uint iectl = R32(VtdReg.Iectl);
        Check((iectl & VtdEventCtl.Ip) == 0 || ((iectl & VtdEventCtl.Im) != 0 && (R32(VtdReg.Ics) & 1) != 0),
            "IECTL.IP is set without IM set and ICS.IWC set");
        Check(!s.StalledOnWait || s.QueueStalled, "StalledOnWait without QueueStalled");
        Check(s.InvalidationDeadlineNs >= 0, $"InvalidationDeadlineNs {s.InvalidationDeadlineNs} is negative");
        VtdOutstandingInvalidations?[] outstanding = s.OutstandingInvalidations!;
        Check(outstanding.All(o => o is not null && o.Tags != 0), "OutstandingInvalidations holds an entry without tags");
        Check(outstanding.Length == outstanding.Select(o => o!.RequesterId).Distinct().Count(), "OutstandingInvalidations names a requester twice");
        Check(outstanding.Length == 0 || _options.DeviceTlb, "outstanding device-TLB invalidations without ECAP.DT");

        // PMEN.PRS follows EPM at once (11.4.12.1).
        if (_options.ProtectedMemoryRegions)
        {
            uint pmen = R32(VtdReg.Pmen);
            Check((pmen & 1) == (pmen >> 31), "PMEN.PRS differs from PMEN.EPM");
        }
    }
}
