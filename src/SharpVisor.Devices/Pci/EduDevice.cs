using SharpVisor.Core;

namespace SharpVisor.Devices.Pci;

/// <summary>
/// QEMU's educational PCI device "edu" (QEMU docs/specs/edu.rst), register-compatible: 1234:11e8,
/// BAR0 1 MiB of MMIO registers, a 4 KiB DMA buffer at device address 0x40000, INTx (pin A) or one
/// 64-bit MSI vector without masking.
/// </summary>
/// <remarks>
/// Differences from QEMU, all invisible to a driver that follows the spec:
/// <list type="bullet">
/// <item>Factorial and DMA complete synchronously inside the register write that starts them, so
/// the busy bits (status bit 0, DMA command bit 0) already read 0 when the driver polls them.
/// QEMU uses a thread and a 100 ms timer; the spec only promises that the bits clear.</item>
/// <item>A DMA that cannot complete (device-side range outside the buffer, the bus address not RAM,
/// an IOMMU fault, bus mastering disabled) transfers nothing, clears the start bit, sets DMA command
/// bit 3 (<see cref="DmaCommandError"/>, a SharpVisor extension: QEMU has no error reporting and
/// would overflow its buffer), counts <see cref="DmaErrors"/>, logs once, and still raises the
/// completion interrupt when bit 2 asked for it, so a driver waiting for it does not hang.</item>
/// </list>
/// DMA uses only the function's <see cref="IDmaSpace"/>, which reaches guest RAM and never MMIO, so
/// a transfer aimed at the device's own BAR fails as "not RAM" instead of re-entering the device.
/// </remarks>
public sealed class EduDevice : PciFunction, IPersistent<EduDevice.State>
{
    public const ushort QemuVendorId = 0x1234;
    public const ushort EduDeviceId = 0x11E8;
    public const ulong MmioSize = 1 << 20;

    // Register offsets in BAR0 (edu.rst, "MMIO area spec").
    public const int RegIdentification = 0x00;
    public const int RegLiveness = 0x04;
    public const int RegFactorial = 0x08;
    public const int RegStatus = 0x20;
    public const int RegInterruptStatus = 0x24;
    public const int RegInterruptRaise = 0x60;
    public const int RegInterruptAcknowledge = 0x64;
    public const int RegDmaSource = 0x80;
    public const int RegDmaDestination = 0x88;
    public const int RegDmaCount = 0x90;
    public const int RegDmaCommand = 0x98;

    /// <summary>0xRRrr00ed: version 1.0.</summary>
    public const uint Identification = 0x0100_00ED;
    public const uint StatusComputing = 0x01;
    public const uint StatusRaiseOnFactorial = 0x80;
    public const uint FactorialInterrupt = 0x001;
    public const uint DmaInterrupt = 0x100;
    public const ulong DmaCommandStart = 0x1;
    /// <summary>0: RAM → device buffer; 1: device buffer → RAM.</summary>
    public const ulong DmaCommandToRam = 0x2;
    public const ulong DmaCommandRaiseInterrupt = 0x4;
    /// <summary>SharpVisor extension: the last DMA failed and transferred nothing.</summary>
    public const ulong DmaCommandError = 0x8;
    public const ulong DmaBufferAddress = 0x40000;
    public const int DmaBufferSize = 4096;

    readonly Lock _gate = new();
    readonly byte[] _dmaBuffer = new byte[DmaBufferSize];
    uint _liveness;
    uint _factorial;
    uint _status;
    uint _interruptStatus;
    ulong _dmaSource;
    ulong _dmaDestination;
    ulong _dmaCount;
    ulong _dmaCommand;

    /// <summary>DMAs that failed (see remarks).</summary>
    public readonly Counter DmaErrors = new("pci.edu.dma_errors");
    /// <summary>DMA addresses cut to <see cref="DmaMask"/>, as QEMU clamps them.</summary>
    public readonly Counter DmaAddressesClamped = new("pci.edu.dma_clamped");
    public readonly Counter DmaTransfers = new("pci.edu.dma_transfers");

    /// <param name="dmaMask">Bus addresses the device can generate: 28 bits by default, like QEMU's
    /// dma_mask property (drivers are expected to call dma_set_mask accordingly).</param>
    public EduDevice(ulong dmaMask = (1UL << 28) - 1)
        : base("edu", QemuVendorId, EduDeviceId, 0xFF_00_00, 0x10)
    {
        DmaMask = dmaMask;
        InterruptPin = 1;
        DefineBar(0, PciBarKind.Memory32, MmioSize);
        AddMsiCapability(is64Bit: true, perVectorMask: false);
    }

    public ulong DmaMask { get; }

    public override IEnumerable<Counter> Counters => [.. base.Counters, DmaErrors, DmaAddressesClamped, DmaTransfers];

    protected override ulong BarRead(int bar, ulong offset, int size)
    {
        // edu.rst: only 4-byte accesses below 0x80, 4 or 8 bytes from 0x80 on; others read all ones.
        if (bar != 0 || !IsValidAccess(offset, size))
        {
            BadAccesses.Increment();
            return size == 8 ? ulong.MaxValue : (1UL << (size * 8)) - 1;
        }
        ulong value;
        lock (_gate)
        {
            value = offset switch
            {
                RegIdentification => Identification,
                RegLiveness => _liveness,
                RegFactorial => _factorial,
                RegStatus => _status,
                RegInterruptStatus => _interruptStatus,
                RegDmaSource => _dmaSource,
                RegDmaDestination => _dmaDestination,
                RegDmaCount => _dmaCount,
                RegDmaCommand => _dmaCommand,
                _ => ulong.MaxValue,
            };
        }
        return size == 8 ? value : value & 0xFFFF_FFFF;
    }

    protected override void BarWrite(int bar, ulong offset, int size, ulong value)
    {
        if (bar != 0 || !IsValidAccess(offset, size))
        {
            BadAccesses.Increment();
            return;
        }
        if (size == 4)
        {
            value &= 0xFFFF_FFFF; // a 4-byte write replaces the whole DMA register, as in QEMU
        }
        uint raise = 0, lower = 0;
        bool raiseWrite = false, acknowledgeWrite = false;
        lock (_gate)
        {
            switch (offset)
            {
                case RegLiveness:
                    _liveness = ~(uint)value;
                    break;
                case RegFactorial:
                    _factorial = Factorial((uint)value);
                    // Computing finished at once: status bit 0 never reads 1 here.
                    if ((_status & StatusRaiseOnFactorial) != 0)
                    {
                        raise = FactorialInterrupt;
                        raiseWrite = true;
                    }
                    break;
                case RegStatus:
                    // Only bit 7 is writable; bit 0 (computing) is read-only.
                    _status = (_status & ~StatusRaiseOnFactorial) | ((uint)value & StatusRaiseOnFactorial);
                    break;
                case RegInterruptRaise:
                    raise = (uint)value;
                    raiseWrite = true;
                    break;
                case RegInterruptAcknowledge:
                    lower = (uint)value;
                    acknowledgeWrite = true;
                    break;
                case RegDmaSource:
                    _dmaSource = value;
                    break;
                case RegDmaDestination:
                    _dmaDestination = value;
                    break;
                case RegDmaCount:
                    _dmaCount = value;
                    break;
                case RegDmaCommand:
                    // QEMU ignores a command write without the start bit.
                    if ((value & DmaCommandStart) != 0)
                    {
                        _dmaCommand = value & (DmaCommandStart | DmaCommandToRam | DmaCommandRaiseInterrupt);
                        if (RunDmaLocked() && (_dmaCommand & DmaCommandRaiseInterrupt) != 0)
                        {
                            raise = DmaInterrupt;
                            raiseWrite = true;
                        }
                    }
                    break;
                default:
                    BadAccesses.Increment(); // read-only or unassigned register
                    break;
            }
        }
        if (raiseWrite)
        {
            RaiseEduInterrupt(raise);
        }
        else if (acknowledgeWrite)
        {
            AcknowledgeEduInterrupt(lower);
        }
    }

    static bool IsValidAccess(ulong offset, int size) =>
        offset < MmioSize && (offset < 0x80 ? size == 4 : size is 4 or 8);

    /// <summary>n! modulo 2^32, as the device's 32-bit register holds it.</summary>
    static uint Factorial(uint n)
    {
        uint result = 1;
        // 34! and above are multiples of 2^32; stopping there keeps a hostile n from spinning.
        for (uint i = Math.Min(n, 34); i > 1; i--)
        {
            result *= i;
        }
        return n >= 34 ? 0 : result;
    }

    /// <summary>Runs the programmed DMA; returns true when it finished (with or without error).</summary>
    bool RunDmaLocked()
    {
        bool toRam = (_dmaCommand & DmaCommandToRam) != 0;
        ulong deviceAddress = toRam ? _dmaSource : _dmaDestination;
        ulong busAddress = toRam ? _dmaDestination : _dmaSource;
        ulong count = _dmaCount;
        _dmaCommand &= ~DmaCommandStart;

        if (deviceAddress < DmaBufferAddress || count > DmaBufferSize || deviceAddress - DmaBufferAddress > (ulong)DmaBufferSize - count)
        {
            FailDmaLocked($"device range 0x{deviceAddress:x}+0x{count:x} is outside the buffer at 0x{DmaBufferAddress:x}");
            return true;
        }
        ulong clamped = busAddress & DmaMask;
        if (clamped != busAddress)
        {
            DmaAddressesClamped.Increment();
        }
        var buffer = _dmaBuffer.AsSpan((int)(deviceAddress - DmaBufferAddress), (int)count);
        DmaStatus status = toRam ? Dma.Write(clamped, buffer) : Dma.Read(clamped, buffer);
        if (status != DmaStatus.Ok)
        {
            FailDmaLocked($"{(toRam ? "write to" : "read from")} bus address 0x{clamped:x}+0x{count:x} failed: {status}");
            return true;
        }
        DmaTransfers.Increment();
        return true;
    }

    void FailDmaLocked(string reason)
    {
        _dmaCommand |= DmaCommandError;
        DmaErrors.Increment();
        Log.Once($"pci.edu.{Location}.dma_error", "edu", $"{Location}: DMA {reason}; nothing transferred (DMA command bit 3 set)");
    }

    /// <summary>edu.rst "IRQ controller": the value is ORed into the interrupt status and an interrupt sent.</summary>
    void RaiseEduInterrupt(uint value)
    {
        bool pending;
        lock (_gate)
        {
            _interruptStatus |= value;
            pending = _interruptStatus != 0;
        }
        if (pending)
        {
            RaiseInterrupt();
        }
    }

    /// <summary>Acknowledge clears bits; INTx drops when none remain (MSI, an edge, has nothing to lower).</summary>
    void AcknowledgeEduInterrupt(uint value)
    {
        bool clear;
        lock (_gate)
        {
            _interruptStatus &= ~value;
            clear = _interruptStatus == 0;
        }
        if (clear)
        {
            LowerInterrupt();
        }
    }

    // ---- saved state: the PCI function plus the device's own registers and DMA buffer ----

    /// <summary>
    /// Everything a driver can observe of the edu device: its PCI function (configuration space,
    /// MSI, INTx) and the registers of edu.rst's MMIO area with the DMA buffer. Factorial and DMA
    /// complete inside the register write that starts them, so nothing is ever in flight: no
    /// computing bit, no DMA start bit, no timer.
    /// </summary>
    public sealed record State
    {
        public const int CurrentVersion = 1;
        public int Version { get; init; } = CurrentVersion;
        public required PciFunctionState Function { get; init; }
        /// <summary>0x04: the complement of the last value written.</summary>
        public uint Liveness { get; init; }
        /// <summary>0x08: n! modulo 2^32 of the last n written (0 before any).</summary>
        public uint Factorial { get; init; }
        /// <summary>0x20: only bit 7 (raise an interrupt after factorial) can be set.</summary>
        public uint Status { get; init; }
        /// <summary>0x24: the interrupt status bits raised and not acknowledged.</summary>
        public uint InterruptStatus { get; init; }
        public ulong DmaSource { get; init; }
        public ulong DmaDestination { get; init; }
        public ulong DmaCount { get; init; }
        /// <summary>0x98: direction, raise-interrupt and error bits of the last command (start is always clear).</summary>
        public ulong DmaCommand { get; init; }
        /// <summary>The 4 KiB DMA buffer at device address 0x40000.</summary>
        public required byte[] DmaBuffer { get; init; }
    }

    /// <summary>The device's state (call with the VM paused).</summary>
    public State SaveState()
    {
        var function = SaveFunctionState();
        lock (_gate)
        {
            return new State
            {
                Function = function,
                Liveness = _liveness,
                Factorial = _factorial,
                Status = _status,
                InterruptStatus = _interruptStatus,
                DmaSource = _dmaSource,
                DmaDestination = _dmaDestination,
                DmaCount = _dmaCount,
                DmaCommand = _dmaCommand,
                DmaBuffer = _dmaBuffer.ToArray(),
            };
        }
    }

    /// <summary>
    /// Applies <paramref name="state"/> whole, or refuses it (<see cref="InvalidStateException"/>)
    /// and changes nothing: the function's own checks, then a factorial register holding a value
    /// n! mod 2^32 can have, only the writable status bit, no DMA start bit or unknown command bit,
    /// a 4 KiB buffer, and INTx asserted only with an interrupt status bit set (the device lowers
    /// INTx when the last bit is acknowledged).
    /// </summary>
    public void RestoreState(State state)
    {
        ArgumentNullException.ThrowIfNull(state);
        const string component = "pci edu";
        InvalidStateException.CheckVersion(state.Version, State.CurrentVersion, component);
        var function = state.Function ?? throw new InvalidStateException(component, "the PCI function's state is missing");
        CheckFunctionState(function);
        byte[] buffer = state.DmaBuffer ?? throw new InvalidStateException(component, "the DMA buffer is missing");
        InvalidStateException.Check(buffer.Length == DmaBufferSize, component, $"DMA buffer has {buffer.Length} bytes, not {DmaBufferSize}");
        InvalidStateException.Check(IsFactorialValue(state.Factorial), component,
            $"factorial register 0x{state.Factorial:x8} is not n! mod 2^32 for any n");
        InvalidStateException.Check((state.Status & ~StatusRaiseOnFactorial) == 0, component,
            $"status 0x{state.Status:x8} has bits other than raise-on-factorial (computing finishes at once)");
        InvalidStateException.Check((state.DmaCommand & ~(DmaCommandToRam | DmaCommandRaiseInterrupt | DmaCommandError)) == 0, component,
            $"DMA command 0x{state.DmaCommand:x} has the start bit or an unknown bit set (a DMA finishes at once)");
        InvalidStateException.Check(!function.IntxAsserted || state.InterruptStatus != 0, component,
            "INTx asserted with no interrupt status bit set");
        ApplyFunctionState(function);
        lock (_gate)
        {
            _liveness = state.Liveness;
            _factorial = state.Factorial;
            _status = state.Status;
            _interruptStatus = state.InterruptStatus;
            _dmaSource = state.DmaSource;
            _dmaDestination = state.DmaDestination;
            _dmaCount = state.DmaCount;
            _dmaCommand = state.DmaCommand;
            buffer.CopyTo(_dmaBuffer, 0);
        }
    }

    /// <summary>Whether the factorial register can hold <paramref name="value"/>: 0 (reset, or n ≥ 34) or n! mod 2^32 for some n &lt; 34.</summary>
    static bool IsFactorialValue(uint value)
    {
        for (uint n = 0; n <= 34; n++)
        {
            if (Factorial(n) == value)
            {
                return true;
            }
        }
        return false;
    }
}
