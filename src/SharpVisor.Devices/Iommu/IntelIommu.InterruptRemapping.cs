using System.Runtime.InteropServices;
using SharpVisor.Core;

namespace SharpVisor.Devices.Iommu;

/// <summary>A decoded, valid remapped-format IRTE (VT-d spec 9.10) as the interrupt entry cache holds it.</summary>
internal struct VtdIrte
{
    public uint Destination;
    public byte Vector;
    public ApicDeliveryMode DeliveryMode;
    public bool LogicalDestination;
    public bool LevelTriggered;
    public bool FaultProcessingDisable;
    public byte SourceValidationType;   // SVT, bits 83:82
    public byte SourceIdQualifier;      // SQ, bits 81:80
    public ushort SourceId;             // SID, bits 79:64
}

/// <summary>Interrupt remapping (VT-d spec chapter 5; IRTA 11.4.11.1; IRTE 9.10).</summary>
public sealed partial class IntelIommu
{
    ulong _activeIrta;      // IRTA latched by GCMD.SIRTP (11.4.4.1)
    readonly VtdIrte[] _iec;
    readonly int[] _iecIndex;   // interrupt index held by each slot, -1 when empty

    void InvalidateInterruptEntryCache(int index, int indexMask)
    {
        if (indexMask < 0)
        {
            Counters.InterruptEntryCacheInvGlobal.Increment();
            Array.Fill(_iecIndex, -1);
            return;
        }
        // 6.5.2.7: index-selective with IM invalidates the 2^IM entries aligned at IIDX.
        Counters.InterruptEntryCacheInvIndex.Increment();
        int first = index & ~((1 << indexMask) - 1);
        int last = first + (1 << indexMask) - 1;
        for (int i = 0; i < _iecIndex.Length; i++)
        {
            if (_iecIndex[i] >= first && _iecIndex[i] <= last)
            {
                _iecIndex[i] = -1;
            }
        }
    }

    /// <summary>Remaps one interrupt request. Returns true with the interrupt to deliver, false when blocked.</summary>
    bool RemapInterrupt(ulong address, uint data, ushort sourceId, out ApicInterrupt interrupt)
    {
        interrupt = default;
        lock (_lock)
        {
            Counters.InterruptRequests.Increment();
            if (!_regs.Test32(VtdReg.Gsts, VtdGcmd.Ire))
            {
                // 5.1: with interrupt remapping disabled every request is handled in compatibility format.
                Counters.InterruptsPassedThrough.Increment();
                interrupt = MsiMessage.DecodeCompatibility(address, data);
                return true;
            }
            if (!MsiMessage.IsRemappable(address))
            {
                // 5.1.2.1: compatibility format passes only with GSTS.CFIS set.
                if (_regs.Test32(VtdReg.Gsts, VtdGcmd.Cfi))
                {
                    Counters.InterruptsPassedThrough.Increment();
                    interrupt = MsiMessage.DecodeCompatibility(address, data);
                    return true;
                }
                return InterruptFault(sourceId, 0, VtdFaultReason.IrCompatibilityBlocked, false);
            }
            // 5.1.2.2 remappable format: address 19:5 handle[14:0], 4 format, 3 SHV, 2 handle[15];
            // data 15:0 subhandle when SHV.
            int handle = (int)((address >> 5) & 0x7FFF) | (int)((address >> 2) & 1) << 15;
            bool shv = (address & (1 << 3)) != 0;
            int index = shv ? (handle + (int)(data & 0xFFFF)) & 0xFFFF : handle;
            if ((address >> 32) != 0 || (shv && (data >> 16) != 0))
            {
                return InterruptFault(sourceId, index, VtdFaultReason.IrReservedInRequest, false);
            }
            int entries = 2 << (int)(_activeIrta & 0xF);
            if (index >= entries)
            {
                return InterruptFault(sourceId, index, VtdFaultReason.IrIndexBeyondTable, false);
            }
            var reason = LookupIrte(index, out var irte);
            if (reason != VtdFaultReason.None)
            {
                return InterruptFault(sourceId, index, reason, irte.FaultProcessingDisable);
            }
            if (!SourceIdMatches(in irte, sourceId))
            {
                return InterruptFault(sourceId, index, VtdFaultReason.IrSourceIdMismatch, irte.FaultProcessingDisable);
            }
            Counters.InterruptsRemapped.Increment();
            interrupt = new ApicInterrupt(irte.Destination, irte.LogicalDestination, irte.DeliveryMode, irte.Vector, irte.LevelTriggered);
            return true;
        }
    }

    bool InterruptFault(ushort sourceId, int index, VtdFaultReason reason, bool fpd)
    {
        Counters.InterruptsBlocked.Increment();
        // 11.4.9.7: for interrupt-remapping faults FI bits 63:48 hold the interrupt index.
        RecordFault(sourceId, (ulong)index << 48, reason, isRead: false, fpd);
        return false;
    }

    /// <summary>Reads and validates the IRTE (9.10), through the interrupt entry cache.</summary>
    VtdFaultReason LookupIrte(int index, out VtdIrte irte)
    {
        int slot = index & (_iec.Length - 1);
        if (_iecIndex[slot] == index)
        {
            irte = _iec[slot];
            return VtdFaultReason.None;
        }
        irte = default;
        Span<ulong> e = stackalloc ulong[2];
        if (!_ram.TryRead((_activeIrta & _hawPageMask) + (ulong)index * 16, MemoryMarshal.AsBytes(e)))
        {
            return VtdFaultReason.IrTableAccessError;
        }
        ulong lo = e[0], hi = e[1];
        irte.FaultProcessingDisable = (lo & 2) != 0;
        if ((lo & 1) == 0)
        {
            return VtdFaultReason.IrteNotPresent;
        }
        bool x2apic = _options.ExtendedInterruptMode && (_activeIrta & (1 << 11)) != 0;
        // lo: 0 P, 1 FPD, 2 DM, 3 RH, 4 TM, 7:5 DLM, 11:8 AVAIL, 14:12 reserved, 15 IM (posted: not
        // supported, so reserved), 23:16 V, 31:24 reserved, 63:32 DST (xAPIC: only 47:40 used).
        ulong reservedLo = 0xFF00_F000UL | (x2apic ? 0 : 0xFFFF_00FF_0000_0000UL);
        // hi: 15:0 SID, 17:16 SQ, 19:18 SVT, 63:20 reserved.
        int dlm = (int)(lo >> 5) & 7;
        int svt = (int)(hi >> 18) & 3;
        if ((lo & reservedLo) != 0 || (hi & ~0xF_FFFFUL) != 0 || dlm is 3 or 6 || svt == 3)
        {
            return VtdFaultReason.IrteReserved;
        }
        uint dst = (uint)(lo >> 32);
        irte.Destination = x2apic ? dst : (dst >> 8) & 0xFF;
        irte.Vector = (byte)(lo >> 16);
        irte.DeliveryMode = (ApicDeliveryMode)dlm;
        irte.LogicalDestination = (lo & 4) != 0;
        irte.LevelTriggered = (lo & 16) != 0;
        irte.SourceId = (ushort)hi;
        irte.SourceIdQualifier = (byte)((hi >> 16) & 3);
        irte.SourceValidationType = (byte)svt;
        _iec[slot] = irte;
        _iecIndex[slot] = index;
        return VtdFaultReason.None;
    }

    /// <summary>Source-id verification (9.10 SVT/SQ/SID).</summary>
    static bool SourceIdMatches(in VtdIrte irte, ushort requester)
    {
        switch (irte.SourceValidationType)
        {
            case 0:
                return true;
            case 1:
                // SQ: 00 compare all 16 bits, 01 ignore function bit 2, 10 bits 2:1, 11 bits 2:0.
                int ignore = irte.SourceIdQualifier switch { 1 => 0b100, 2 => 0b110, 3 => 0b111, _ => 0 };
                return (requester & ~ignore) == (irte.SourceId & ~ignore);
            default:
                // SVT=10b: the requester's bus must lie in [SID 15:8, SID 7:0].
                int bus = requester >> 8;
                return bus >= irte.SourceId >> 8 && bus <= (irte.SourceId & 0xFF);
        }
    }

    internal void HandleInterrupt(ulong address, uint data, ushort sourceId)
    {
        bool deliver = RemapInterrupt(address, data, sourceId, out var interrupt);
        DrainOutbox();
        if (deliver)
        {
            _apicBus.Deliver(in interrupt);
        }
    }
}

/// <summary>The MSI sink devices and IOAPICs send through: remaps, then delivers to the APIC bus.</summary>
internal sealed class VtdInterruptRemapper(IntelIommu unit) : IMsiSink
{
    public void SendMsi(ulong address, uint data, ushort requesterId) => unit.HandleInterrupt(address, data, requesterId);
}
