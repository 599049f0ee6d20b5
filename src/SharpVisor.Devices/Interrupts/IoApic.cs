using SharpVisor.Core;

namespace SharpVisor.Devices.Interrupts;

/// <summary>
/// The ICH9 I/O APIC (82093AA programming model, version 0x20, 24 pins), mapped at 0xFEC00000.
/// Each pin's redirection table entry turns an input into an MSI-style message (address/data) that
/// goes to an <see cref="IMsiSink"/> with the IOAPIC's requester ID: the VT-d remapping unit, or
/// <see cref="CompatibilityMsiSink"/> when there is no IOMMU. RTEs in remappable format (bit 48,
/// VT-d spec 5.1.5.1) produce remappable-format messages.
/// </summary>
/// <remarks>
/// Pins are logical levels: <c>SetLevel(true)</c> means asserted whatever the RTE polarity (the
/// board inverts active-low PCI INTx lines before the IOAPIC, as QEMU models it). Level-triggered
/// pins set Remote IRR on delivery and are re-delivered after the EOI if still asserted
/// (82093AA datasheet 3.2.4); the EOI comes from the local APIC broadcast or the version-0x20 EOI
/// register at offset 0x40 (which Linux uses with interrupt remapping, io_apic.c eoi_ioapic_pin).
/// </remarks>
public sealed class IoApic : IMmioDevice, IApicEoiListener, IPersistent<IoApic.State>
{
    /// <summary>The log of the VM this device belongs to.</summary>
    readonly Log Log;

    public const ulong DefaultBaseAddress = 0xFEC0_0000;
    public const ulong MmioSize = 0x1000;
    public const int PinCount = 24;
    public const uint VersionValue = 0x20;

    // MMIO registers (ICH9 datasheet 13.5, IOAPIC direct registers).
    const ulong RegSelect = 0x00;
    const ulong RegWindow = 0x10;
    const ulong RegEoi = 0x40;

    // Indirect registers (82093AA datasheet 3.2).
    const uint IndexId = 0x00;
    const uint IndexVersion = 0x01;
    const uint IndexArbitration = 0x02;
    const uint IndexRedirection = 0x10;

    // Redirection table entry bits (82093AA datasheet 3.2.4).
    const ulong RteMasked = 1UL << 16;
    const ulong RteLevel = 1UL << 15;
    const ulong RteRemoteIrr = 1UL << 14;
    const ulong RteLogical = 1UL << 11;
    const ulong RteRemappable = 1UL << 48; // VT-d spec 5.1.5.1, interrupt format bit
    const ulong RteLowWritable = 0x0001_AFFF; // vector, delivery mode, destination mode, polarity, trigger, mask

    readonly Lock _gate = new();
    readonly IMsiSink _sink;
    readonly ushort _requesterId;
    readonly ulong[] _rte = new ulong[PinCount];
    readonly bool[] _asserted = new bool[PinCount];
    readonly IIrqLine[] _pins = new IIrqLine[PinCount];
    uint _select;
    uint _id;
    readonly uint _resetId;

    public readonly Counter Delivered = new("ioapic.delivered");
    public readonly Counter EdgesLostWhileMasked = new("ioapic.edges_lost_masked");
    public readonly Counter GuestErrors = new("ioapic.guest_errors");

    /// <param name="sink">Where messages go (IOMMU or <see cref="CompatibilityMsiSink"/>).</param>
    /// <param name="requesterId">Source ID of the IOAPIC's messages (the DMAR table's IOAPIC device scope).</param>
    /// <param name="id">The IOAPIC ID the MADT advertises.</param>
    public IoApic(IMsiSink sink, ushort requesterId, byte id = 0, Log? log = null)
    {
        Log = log ?? new Log();
        _sink = sink;
        _requesterId = requesterId;
        _resetId = (uint)id & 0xF;
        for (int i = 0; i < PinCount; i++)
        {
            _pins[i] = new Pin(this, i);
        }
        Reset();
    }

    public string Name => "ioapic";

    public IEnumerable<Counter> Counters => [Delivered, EdgesLostWhileMasked, GuestErrors];

    /// <summary>The input pin <paramref name="pin"/> (0-23) for devices to drive.</summary>
    public IIrqLine GetPin(int pin)
    {
        if ((uint)pin >= PinCount)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(pin), $"IOAPIC has pins 0-{PinCount - 1}");
        }
        return _pins[pin];
    }

    /// <summary>Power-on state: every entry masked (82093AA datasheet 3.2.4).</summary>
    public void Reset()
    {
        lock (_gate)
        {
            for (int i = 0; i < PinCount; i++)
            {
                _rte[i] = RteMasked;
            }
            _select = 0;
            _id = _resetId;
        }
    }

    /// <summary>
    /// The IOAPIC's registers and the level of each input pin. Remote IRR lives in the entries
    /// (bit 14), so a level interrupt the local APIC has not yet EOIed stays blocked after restore.
    /// </summary>
    public sealed record State
    {
        public const int CurrentVersion = 1;
        public int Version { get; init; } = CurrentVersion;
        /// <summary>IOAPIC ID (bits 27:24 of the ID register), 0-15.</summary>
        public uint Id { get; init; }
        /// <summary>IOREGSEL.</summary>
        public uint Select { get; init; }
        /// <summary>The 24 redirection table entries, Remote IRR included.</summary>
        public ulong[] Redirection { get; init; } = [];
        /// <summary>Whether each input pin is asserted now.</summary>
        public bool[] PinAsserted { get; init; } = [];
    }

    /// <inheritdoc/>
    public State SaveState()
    {
        lock (_gate)
        {
            return new State
            {
                Id = _id,
                Select = _select,
                Redirection = (ulong[])_rte.Clone(),
                PinAsserted = (bool[])_asserted.Clone(),
            };
        }
    }

    /// <inheritdoc/>
    /// <remarks>
    /// Sends nothing: a level pin that is asserted and deliverable has Remote IRR set already (it
    /// was delivered when it became so). Restore the IOAPIC before the devices that drive its pins:
    /// their re-driven levels then arrive at pins already at that level, which changes nothing.
    /// </remarks>
    public void RestoreState(State state)
    {
        ArgumentNullException.ThrowIfNull(state);
        InvalidStateException.CheckVersion(state.Version, State.CurrentVersion, Name);
        Check(state.Id <= 0xF, $"Id {state.Id} is not 0-15");
        Check(state.Select <= 0xFF, $"Select 0x{state.Select:x} is wider than IOREGSEL's 8 bits");
        Check(state.Redirection is { Length: PinCount }, $"Redirection has {state.Redirection?.Length ?? 0} entries, the IOAPIC has {PinCount}");
        Check(state.PinAsserted is { Length: PinCount }, $"PinAsserted has {state.PinAsserted?.Length ?? 0} entries, the IOAPIC has {PinCount} pins");
        for (int pin = 0; pin < PinCount; pin++)
        {
            ulong rte = state.Redirection![pin];
            Check((rte & 0xFFFF_FFFF & ~(RteLowWritable | RteRemoteIrr)) == 0,
                $"Redirection[{pin}] 0x{rte:x16} has read-only or reserved bits set in its low half (delivery status is never set)");
            Check((rte & RteRemoteIrr) == 0 || (rte & RteLevel) != 0, $"Redirection[{pin}] has Remote IRR set on an edge-triggered entry");
        }

        lock (_gate)
        {
            _id = state.Id;
            _select = state.Select;
            state.Redirection!.CopyTo(_rte, 0);
            state.PinAsserted!.CopyTo(_asserted, 0);
        }
    }

    void Check(bool condition, string problem) => InvalidStateException.Check(condition, Name, problem);

    /// <summary>Reads the raw redirection entry of <paramref name="pin"/> (tests, debugging).</summary>
    public ulong ReadRedirectionEntry(int pin)
    {
        lock (_gate)
        {
            return _rte[pin];
        }
    }

    sealed class Pin(IoApic owner, int index) : IIrqLine
    {
        public void SetLevel(bool asserted) => owner.SetPin(index, asserted);
    }

    void SetPin(int pin, bool asserted)
    {
        ulong address = 0;
        uint data = 0;
        bool send = false;
        lock (_gate)
        {
            bool rising = asserted && !_asserted[pin];
            _asserted[pin] = asserted;
            ulong rte = _rte[pin];
            if (UsesRemoteIrr(rte))
            {
                send = asserted && TryStartDelivery(pin, out address, out data);
            }
            else if (rising)
            {
                if ((rte & RteMasked) != 0)
                {
                    EdgesLostWhileMasked.Increment(); // an edge on a masked pin is lost (82093AA 3.2.4)
                }
                else
                {
                    send = true;
                    FormMessage(rte, out address, out data);
                }
            }
        }
        if (send)
        {
            Send(address, data);
        }
    }

    /// <summary>
    /// For a level-triggered pin that is asserted: delivers unless masked or Remote IRR is set, and
    /// sets Remote IRR until the EOI (under the lock).
    /// </summary>
    bool TryStartDelivery(int pin, out ulong address, out uint data)
    {
        address = 0;
        data = 0;
        ulong rte = _rte[pin];
        if (!_asserted[pin] || (rte & (RteMasked | RteRemoteIrr)) != 0 || !UsesRemoteIrr(rte))
        {
            return false;
        }
        _rte[pin] = rte | RteRemoteIrr;
        FormMessage(rte, out address, out data);
        return true;
    }

    /// <summary>
    /// Level semantics (Remote IRR, re-delivery after EOI) apply to fixed and lowest-priority
    /// entries; NMI, SMI, INIT and ExtINT entries are meant to be edge-triggered (82093AA 3.2.4)
    /// and are delivered on each rising edge whatever their trigger bit says, so a missing EOI
    /// can never wedge them.
    /// </summary>
    static bool UsesRemoteIrr(ulong rte)
        => (rte & RteLevel) != 0 && ((rte >> 8) & 7) is (ulong)ApicDeliveryMode.Fixed or (ulong)ApicDeliveryMode.LowestPriority;

    /// <summary>
    /// Turns an RTE into the interrupt message the IOAPIC writes upstream. Compatibility format puts
    /// the destination in address bits 19:12 and the destination mode in bit 2 (SDM 11.11.1);
    /// remappable format puts interrupt_index[14:0] in bits 19:5, the format bit in 4 and
    /// interrupt_index[15] (RTE bit 11) in bit 2 (VT-d spec 5.1.5.1). The data word carries vector,
    /// delivery mode and trigger mode (level messages assert, bit 14).
    /// </summary>
    static void FormMessage(ulong rte, out ulong address, out uint data)
    {
        if ((rte & RteRemappable) != 0)
        {
            ulong indexLow = (rte >> 49) & 0x7FFF;
            ulong index15 = (rte >> 11) & 1;
            address = MsiMessage.AddressBase | (indexLow << 5) | (1UL << 4) | (index15 << 2);
        }
        else
        {
            ulong destination = (rte >> 56) & 0xFF;
            address = MsiMessage.AddressBase | (destination << 12) | ((rte & RteLogical) != 0 ? 1UL << 2 : 0);
        }
        data = (uint)(rte & 0x7FF);
        if ((rte & RteLevel) != 0)
        {
            data |= (1u << 15) | (1u << 14);
        }
    }

    void Send(ulong address, uint data)
    {
        Delivered.Increment();
        _sink.SendMsi(address, data, _requesterId);
    }

    /// <summary>EOI from a local APIC's broadcast (SDM 11.8.5) or the EOI register: clears Remote IRR
    /// of every level pin with that vector and re-delivers the ones still asserted.</summary>
    public void OnEoi(byte vector)
    {
        uint redeliver = 0;
        lock (_gate)
        {
            for (int pin = 0; pin < PinCount; pin++)
            {
                ulong rte = _rte[pin];
                if ((byte)rte == vector && (rte & RteRemoteIrr) != 0)
                {
                    _rte[pin] = rte & ~RteRemoteIrr;
                    redeliver |= 1u << pin;
                }
            }
        }
        RedeliverPins(redeliver);
    }

    /// <summary>Re-delivers level pins still asserted; takes the lock per pin and sends outside it.</summary>
    void RedeliverPins(uint pins)
    {
        while (pins != 0)
        {
            int pin = System.Numerics.BitOperations.TrailingZeroCount(pins);
            pins &= pins - 1;
            ulong address;
            uint data;
            bool send;
            lock (_gate)
            {
                send = TryStartDelivery(pin, out address, out data);
            }
            if (send)
            {
                Send(address, data);
            }
        }
    }

    /// <inheritdoc/>
    public ulong MmioRead(ulong offset, int size)
    {
        ulong aligned = offset & ~3UL;
        uint value;
        lock (_gate)
        {
            value = aligned switch
            {
                RegSelect => _select,
                RegWindow => ReadIndirect(_select),
                _ => 0, // EOI register is write-only; other offsets are reserved
            };
        }
        value >>= (int)(offset & 3) * 8;
        return size >= 4 ? value : value & ((1u << (size * 8)) - 1);
    }

    uint ReadIndirect(uint index)
    {
        switch (index)
        {
            case IndexId:
                return _id << 24;
            case IndexVersion:
                // Maximum redirection entry in bits 23:16 (82093AA datasheet 3.2.2).
                return VersionValue | ((PinCount - 1) << 16);
            case IndexArbitration:
                return _id << 24;
            case >= IndexRedirection and < IndexRedirection + 2 * PinCount:
                ulong rte = _rte[(index - IndexRedirection) >> 1];
                return (index & 1) == 0 ? (uint)rte : (uint)(rte >> 32);
            default:
                GuestErrors.Increment();
                return 0;
        }
    }

    /// <inheritdoc/>
    public void MmioWrite(ulong offset, int size, ulong value)
    {
        switch (offset)
        {
            case RegSelect:
                lock (_gate)
                {
                    _select = (uint)value & 0xFF; // IOREGSEL bits 7:0 (82093AA datasheet 3.1.1)
                }
                return;
            case RegWindow when size >= 4:
                WriteIndirect((uint)value);
                return;
            case RegEoi when size >= 4:
                OnEoi((byte)value); // ICH9 EOI register (version 0x20)
                return;
            default:
                GuestErrors.Increment();
                Log.Once("ioapic.mmio.write", Name, $"ignored {size}-byte IOAPIC write at offset 0x{offset:x}");
                return;
        }
    }

    void WriteIndirect(uint value)
    {
        int deliverPin = -1;
        lock (_gate)
        {
            uint index = _select;
            switch (index)
            {
                case IndexId:
                    _id = (value >> 24) & 0xF;
                    return;
                case >= IndexRedirection and < IndexRedirection + 2 * PinCount:
                    int pin = (int)((index - IndexRedirection) >> 1);
                    ulong rte = _rte[pin];
                    if ((index & 1) == 0)
                    {
                        // Delivery status and Remote IRR are read-only.
                        rte = (rte & ~RteLowWritable & ~0xFFFF_FFFFUL) | (rte & RteRemoteIrr) | (value & RteLowWritable);
                        if ((rte & RteLevel) == 0)
                        {
                            // Remote IRR is undefined for edge pins; switching to edge clears it, which is
                            // how pre-0x20 IOAPIC EOI is emulated (Linux io_apic.c __eoi_ioapic_pin).
                            rte &= ~RteRemoteIrr;
                        }
                    }
                    else
                    {
                        rte = (rte & 0xFFFF_FFFFUL) | ((ulong)value << 32);
                    }
                    _rte[pin] = rte;
                    deliverPin = pin; // unmasking an asserted level pin delivers it
                    break;
                default:
                    GuestErrors.Increment(); // version, arbitration and reserved indices are read-only
                    return;
            }
        }
        RedeliverPins(1u << deliverPin);
    }
}
