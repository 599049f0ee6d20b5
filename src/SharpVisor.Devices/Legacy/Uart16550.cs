using SharpVisor.Core;

namespace SharpVisor.Devices.Legacy;

/// <summary>
/// A 16550A UART (National PC16550D datasheet) as found at COM1 (0x3F8, IRQ 4) on a PC. Register
/// it as 8 ports. Transmission is instantaneous: a byte written to THR goes straight to the
/// transmit sink and the transmitter is empty again, so THRE and TEMT always read 1 and the THRE
/// interrupt is re-armed at once. Received bytes wait in a host-side backlog and enter the 16-byte
/// receive FIFO as room frees up, so a paste never overruns; the receive character time-out
/// interrupt is reported as soon as the FIFO holds fewer bytes than the trigger level (no timer).
/// As on a PC, the interrupt output only reaches the IRQ line while MCR.OUT2 is set and loopback
/// is off (in loopback the OUT2 pin is forced inactive, datasheet section 8.6 "MCR bit 4").
/// </summary>
public sealed class Uart16550 : IPortDevice, IPersistent<Uart16550.State>
{
    public const int RegisterCount = 8;
    const int FifoSize = 16;
    const int BacklogSize = 64 * 1024;

    // Register offsets (datasheet table 2).
    const int RbrThrDll = 0;
    const int IerDlm = 1;
    const int IirFcr = 2;
    const int Lcr = 3;
    const int Mcr = 4;
    const int Lsr = 5;
    const int Msr = 6;
    const int Scr = 7;

    // IER bits.
    const byte IerRda = 1 << 0;    // ERBFI
    const byte IerThre = 1 << 1;   // ETBEI
    const byte IerRls = 1 << 2;    // ELSI
    const byte IerMsr = 1 << 3;    // EDSSI

    // IIR interrupt identification (datasheet table 4), in priority order.
    const byte IirNone = 0x01;
    const byte IirRls = 0x06;
    const byte IirRda = 0x04;
    const byte IirTimeout = 0x0C;
    const byte IirThre = 0x02;
    const byte IirMsr = 0x00;
    const byte IirFifoEnabled = 0xC0;

    // FCR bits.
    const byte FcrEnable = 1 << 0;
    const byte FcrClearRx = 1 << 1;
    const byte FcrKept = 0xC9; // enable, DMA mode, trigger level

    // LCR / MCR bits.
    const byte LcrDlab = 1 << 7;
    const byte McrDtr = 1 << 0;
    const byte McrRts = 1 << 1;
    const byte McrOut1 = 1 << 2;
    const byte McrOut2 = 1 << 3;
    const byte McrLoop = 1 << 4;
    const byte McrMask = 0x1F;

    // LSR bits.
    const byte LsrDataReady = 1 << 0;
    const byte LsrOverrun = 1 << 1;
    const byte LsrErrorBits = 0x1E; // OE, PE, FE, BI
    const byte LsrThre = 1 << 5;
    const byte LsrTemt = 1 << 6;

    // MSR bits.
    const byte MsrDcts = 1 << 0;
    const byte MsrDdsr = 1 << 1;
    const byte MsrTeri = 1 << 2;
    const byte MsrDdcd = 1 << 3;
    const byte MsrCts = 1 << 4;
    const byte MsrDsr = 1 << 5;
    const byte MsrRi = 1 << 6;
    const byte MsrDcd = 1 << 7;
    /// <summary>Modem inputs outside loopback: a terminal that is present (CTS, DSR, DCD asserted).</summary>
    const byte MsrConnected = MsrCts | MsrDsr | MsrDcd;

    readonly Lock _lock = new();
    readonly IIrqLine _irq;
    readonly Action<byte> _transmit;
    readonly string _name;

    readonly byte[] _rxFifo = new byte[FifoSize];
    int _rxHead;
    int _rxCount;
    readonly byte[] _backlog = new byte[BacklogSize];
    int _backlogHead;
    int _backlogCount;

    byte _ier;
    byte _lcr;
    byte _mcr;
    byte _fcr;
    byte _lsrErrors;
    byte _msrLines;
    byte _msrDeltas;
    byte _scr;
    byte _dll;
    byte _dlm;
    byte _lastRbr;
    bool _thrInterruptPending;
    bool _irqLevel;

    public readonly Counter TransmittedBytes;
    public readonly Counter ReceivedBytes;
    public readonly Counter BacklogDrops;
    public readonly Counter Overruns;
    public readonly Counter ReadOnlyRegisterWrites;

    /// <summary>This device's counters, for the machine's <see cref="CounterRegistry"/>.</summary>
    public IEnumerable<Counter> Counters => [TransmittedBytes, ReceivedBytes, BacklogDrops, Overruns, ReadOnlyRegisterWrites];

    /// <param name="irq">The UART's ISA interrupt line (IRQ 4 for COM1).</param>
    /// <param name="transmit">Receives every byte the guest transmits (called under the UART lock, in order).</param>
    /// <param name="name">Device name, e.g. "com1".</param>
    public Uart16550(IIrqLine irq, Action<byte> transmit, string name = "com1")
    {
        _irq = irq;
        _transmit = transmit;
        _name = name;
        TransmittedBytes = new($"{name}.transmitted_bytes");
        ReceivedBytes = new($"{name}.received_bytes");
        BacklogDrops = new($"{name}.backlog_drops");
        Overruns = new($"{name}.overruns");
        ReadOnlyRegisterWrites = new($"{name}.read_only_register_writes");
        Reset();
    }

    /// <summary>Transmits into <paramref name="output"/>, flushing after every byte so a console stays interactive.</summary>
    public Uart16550(IIrqLine irq, Stream output, string name = "com1")
        : this(irq, b => { output.WriteByte(b); output.Flush(); }, name)
    {
    }

    public string Name => _name;

    /// <summary>Master reset (datasheet table 5): all registers to their reset values; the backlog is kept.</summary>
    public void Reset()
    {
        lock (_lock)
        {
            _ier = 0;
            _lcr = 0;
            _mcr = 0;
            _fcr = 0;
            _lsrErrors = 0;
            _scr = 0;
            _dll = 0x0C; // 9600 baud, what firmware usually leaves
            _dlm = 0;
            _rxCount = 0;
            _thrInterruptPending = false;
            _msrLines = MsrConnected;
            _msrDeltas = 0;
            FillFromBacklog();
            UpdateIrq();
        }
    }

    /// <summary>Queues bytes typed at the terminal; safe from any thread. Returns how many were accepted (the rest are dropped and counted).</summary>
    public int Receive(ReadOnlySpan<byte> data)
    {
        lock (_lock)
        {
            int accepted = Math.Min(data.Length, BacklogSize - _backlogCount);
            for (int i = 0; i < accepted; i++)
            {
                _backlog[(_backlogHead + _backlogCount) % BacklogSize] = data[i];
                _backlogCount++;
            }
            if (accepted < data.Length)
            {
                BacklogDrops.Add(data.Length - accepted);
            }
            ReceivedBytes.Add(accepted);
            FillFromBacklog();
            UpdateIrq();
            return accepted;
        }
    }

    /// <summary>
    /// Everything the guest can observe of the UART. The IRQ level is not in it: it follows from
    /// the registers and is driven again on restore.
    /// </summary>
    public sealed record State
    {
        public const int CurrentVersion = 1;
        public int Version { get; init; } = CurrentVersion;
        public byte Ier { get; init; }
        public byte Lcr { get; init; }
        public byte Mcr { get; init; }
        public byte Fcr { get; init; }
        /// <summary>LSR error bits (OE, PE, FE, BI) not yet read.</summary>
        public byte LsrErrors { get; init; }
        /// <summary>MSR bits 3:0, the deltas not yet read.</summary>
        public byte MsrDeltas { get; init; }
        public byte Scr { get; init; }
        public byte Dll { get; init; }
        public byte Dlm { get; init; }
        /// <summary>The byte an empty RBR reads again.</summary>
        public byte LastRbr { get; init; }
        public bool ThrInterruptPending { get; init; }
        /// <summary>The receive FIFO (the RBR when FIFOs are off), oldest byte first.</summary>
        public byte[] RxFifo { get; init; } = [];
        /// <summary>Terminal input not yet in the FIFO, oldest byte first.</summary>
        public byte[] PendingInput { get; init; } = [];
    }

    /// <inheritdoc/>
    public State SaveState()
    {
        lock (_lock)
        {
            var fifo = new byte[_rxCount];
            for (int i = 0; i < _rxCount; i++)
            {
                fifo[i] = _rxFifo[(_rxHead + i) % FifoSize];
            }
            var pending = new byte[_backlogCount];
            for (int i = 0; i < _backlogCount; i++)
            {
                pending[i] = _backlog[(_backlogHead + i) % BacklogSize];
            }
            return new State
            {
                Ier = _ier,
                Lcr = _lcr,
                Mcr = _mcr,
                Fcr = _fcr,
                LsrErrors = _lsrErrors,
                MsrDeltas = _msrDeltas,
                Scr = _scr,
                Dll = _dll,
                Dlm = _dlm,
                LastRbr = _lastRbr,
                ThrInterruptPending = _thrInterruptPending,
                RxFifo = fifo,
                PendingInput = pending,
            };
        }
    }

    /// <inheritdoc/>
    public void RestoreState(State state)
    {
        ArgumentNullException.ThrowIfNull(state);
        InvalidStateException.CheckVersion(state.Version, State.CurrentVersion, _name);
        Check((state.Ier & 0xF0) == 0, $"Ier 0x{state.Ier:x2} has bits 7:4 set (always 0 on a 16550A)");
        Check((state.Mcr & ~McrMask) == 0, $"Mcr 0x{state.Mcr:x2} has bits 7:5 set (always 0)");
        Check((state.Fcr & ~FcrKept) == 0 && (state.Fcr == 0 || (state.Fcr & FcrEnable) != 0),
            $"Fcr 0x{state.Fcr:x2} is not a value FCR can hold (bits 7:6, 3 and 0, the others only with bit 0)");
        Check((state.LsrErrors & ~LsrErrorBits) == 0, $"LsrErrors 0x{state.LsrErrors:x2} has bits outside OE, PE, FE, BI");
        Check((state.MsrDeltas & 0xF0) == 0, $"MsrDeltas 0x{state.MsrDeltas:x2} has line bits 7:4 set");
        Check(state.RxFifo is not null, "RxFifo is missing");
        Check(state.PendingInput is not null, "PendingInput is missing");
        int capacity = (state.Fcr & FcrEnable) != 0 ? FifoSize : 1;
        Check(state.RxFifo!.Length <= capacity, $"RxFifo holds {state.RxFifo.Length} bytes, the receiver holds at most {capacity}");
        Check(state.PendingInput!.Length <= BacklogSize, $"PendingInput holds {state.PendingInput.Length} bytes, at most {BacklogSize} are kept");
        Check((state.Mcr & McrLoop) != 0 || state.PendingInput.Length == 0 || state.RxFifo.Length == capacity,
            "PendingInput is not empty while the receiver has room (outside loopback input moves in at once)");

        lock (_lock)
        {
            _ier = state.Ier;
            _lcr = state.Lcr;
            _mcr = state.Mcr;
            _fcr = state.Fcr;
            _lsrErrors = state.LsrErrors;
            _msrLines = ModemLines(state.Mcr);
            _msrDeltas = state.MsrDeltas;
            _scr = state.Scr;
            _dll = state.Dll;
            _dlm = state.Dlm;
            _lastRbr = state.LastRbr;
            _thrInterruptPending = state.ThrInterruptPending;
            _rxHead = 0;
            _rxCount = state.RxFifo.Length;
            state.RxFifo.CopyTo(_rxFifo, 0);
            _backlogHead = 0;
            _backlogCount = state.PendingInput.Length;
            state.PendingInput.CopyTo(_backlog, 0);
            UpdateIrq();
        }
    }

    void Check(bool condition, string problem) => InvalidStateException.Check(condition, _name, problem);

    bool FifoEnabled => (_fcr & FcrEnable) != 0;
    int RxCapacity => FifoEnabled ? FifoSize : 1;
    bool Loopback => (_mcr & McrLoop) != 0;

    int RxTriggerLevel => (_fcr >> 6) switch { 0 => 1, 1 => 4, 2 => 8, _ => 14 };

    void FillFromBacklog()
    {
        // In loopback the serial input pin is disconnected from the receiver.
        if (Loopback)
        {
            return;
        }
        while (_rxCount < RxCapacity && _backlogCount > 0)
        {
            _rxFifo[(_rxHead + _rxCount) % FifoSize] = _backlog[_backlogHead];
            _rxCount++;
            _backlogHead = (_backlogHead + 1) % BacklogSize;
            _backlogCount--;
        }
    }

    public uint PortRead(ushort offset, int size)
    {
        lock (_lock)
        {
            // An ISA byte device: wider accesses are split by the bus into byte accesses.
            uint value = 0;
            for (int i = 0; i < size; i++)
            {
                value |= (uint)ReadRegister(offset + i) << (8 * i);
            }
            UpdateIrq();
            return value;
        }
    }

    public void PortWrite(ushort offset, int size, uint value)
    {
        lock (_lock)
        {
            for (int i = 0; i < size; i++)
            {
                WriteRegister(offset + i, (byte)(value >> (8 * i)));
            }
            UpdateIrq();
        }
    }

    byte ReadRegister(int offset)
    {
        bool dlab = (_lcr & LcrDlab) != 0;
        switch (offset)
        {
            case RbrThrDll:
                if (dlab)
                {
                    return _dll;
                }
                if (_rxCount > 0)
                {
                    _lastRbr = _rxFifo[_rxHead];
                    _rxHead = (_rxHead + 1) % FifoSize;
                    _rxCount--;
                    FillFromBacklog();
                }
                return _lastRbr; // an empty RBR reads the last byte again
            case IerDlm:
                return dlab ? _dlm : _ier;
            case IirFcr:
                {
                    byte id = CurrentInterrupt();
                    // Reading IIR while it reports THRE clears that interrupt (datasheet table 4).
                    if (id == IirThre)
                    {
                        _thrInterruptPending = false;
                    }
                    return (byte)(id | (FifoEnabled ? IirFifoEnabled : 0));
                }
            case Lcr:
                return _lcr;
            case Mcr:
                return _mcr;
            case Lsr:
                {
                    byte lsr = (byte)(LsrThre | LsrTemt | _lsrErrors);
                    if (_rxCount > 0)
                    {
                        lsr |= LsrDataReady;
                    }
                    _lsrErrors = 0; // error bits clear on read
                    return lsr;
                }
            case Msr:
                {
                    byte msr = (byte)(_msrLines | _msrDeltas);
                    _msrDeltas = 0;
                    return msr;
                }
            case Scr:
                return _scr;
            default:
                return 0xFF; // beyond the 8 registers (a wide access past the end)
        }
    }

    void WriteRegister(int offset, byte value)
    {
        bool dlab = (_lcr & LcrDlab) != 0;
        switch (offset)
        {
            case RbrThrDll:
                if (dlab)
                {
                    _dll = value;
                }
                else
                {
                    Transmit(value);
                }
                break;
            case IerDlm:
                if (dlab)
                {
                    _dlm = value;
                }
                else
                {
                    byte ier = (byte)(value & 0x0F); // bits 7:4 are always 0 on a 16550A
                    // Enabling ETBEI while THR is empty raises the THRE interrupt again; Linux's
                    // serial8250_do_startup checks this to decide whether the UART has UART_BUG_THRE.
                    if ((ier & IerThre) != 0 && (_ier & IerThre) == 0)
                    {
                        _thrInterruptPending = true;
                    }
                    _ier = ier;
                }
                break;
            case IirFcr:
                WriteFcr(value);
                break;
            case Lcr:
                _lcr = value;
                break;
            case Mcr:
                SetMcr((byte)(value & McrMask));
                break;
            case Lsr:
            case Msr:
                // Factory-test writes on real parts; ignored here.
                ReadOnlyRegisterWrites.Increment();
                break;
            case Scr:
                _scr = value;
                break;
            default:
                ReadOnlyRegisterWrites.Increment();
                break;
        }
    }

    void Transmit(byte value)
    {
        // Writing THR clears the THRE interrupt; the byte leaves at once, so the transmitter is
        // empty again and THRE is raised anew.
        if (Loopback)
        {
            // Loopback: the transmitter output feeds the receiver (datasheet MCR bit 4).
            if (_rxCount < RxCapacity)
            {
                _rxFifo[(_rxHead + _rxCount) % FifoSize] = value;
                _rxCount++;
            }
            else
            {
                Overruns.Increment();
                _lsrErrors |= LsrOverrun;
            }
        }
        else
        {
            TransmittedBytes.Increment();
            _transmit(value);
        }
        _thrInterruptPending = true;
    }

    void WriteFcr(byte value)
    {
        byte wasEnabled = (byte)(_fcr & FcrEnable);
        if ((value & FcrEnable) != wasEnabled)
        {
            // Changing FIFO enable resets both FIFOs (datasheet FCR bit 0).
            _rxCount = 0;
        }
        if ((value & FcrEnable) == 0)
        {
            // The other bits can only be programmed with bit 0 set.
            _fcr = 0;
        }
        else
        {
            if ((value & FcrClearRx) != 0)
            {
                _rxCount = 0;
            }
            // FCR bit 2 (clear TX FIFO) has nothing to do: the transmit FIFO is always empty here.
            _fcr = (byte)(value & FcrKept);
        }
        FillFromBacklog();
    }

    void SetMcr(byte mcr)
    {
        bool wasLoopback = Loopback;
        _mcr = mcr;
        byte lines = ModemLines(mcr);
        byte changed = (byte)(lines ^ _msrLines);
        if ((changed & MsrCts) != 0)
        {
            _msrDeltas |= MsrDcts;
        }
        if ((changed & MsrDsr) != 0)
        {
            _msrDeltas |= MsrDdsr;
        }
        if ((changed & MsrDcd) != 0)
        {
            _msrDeltas |= MsrDdcd;
        }
        if ((_msrLines & MsrRi) != 0 && (lines & MsrRi) == 0)
        {
            _msrDeltas |= MsrTeri; // trailing edge of RI
        }
        _msrLines = lines;
        if (wasLoopback && !Loopback)
        {
            FillFromBacklog();
        }
    }

    /// <summary>MSR bits 7:4 for an MCR value: in loopback the modem outputs feed them (datasheet MCR bit 4).</summary>
    static byte ModemLines(byte mcr) => (mcr & McrLoop) != 0
        ? (byte)(((mcr & McrRts) != 0 ? MsrCts : 0)
            | ((mcr & McrDtr) != 0 ? MsrDsr : 0)
            | ((mcr & McrOut1) != 0 ? MsrRi : 0)
            | ((mcr & McrOut2) != 0 ? MsrDcd : 0))
        : MsrConnected;

    byte CurrentInterrupt()
    {
        if ((_ier & IerRls) != 0 && _lsrErrors != 0)
        {
            return IirRls;
        }
        if ((_ier & IerRda) != 0 && _rxCount > 0)
        {
            return FifoEnabled && _rxCount < RxTriggerLevel ? IirTimeout : IirRda;
        }
        if ((_ier & IerThre) != 0 && _thrInterruptPending)
        {
            return IirThre;
        }
        if ((_ier & IerMsr) != 0 && _msrDeltas != 0)
        {
            return IirMsr;
        }
        return IirNone;
    }

    // The PC routes INTR through a buffer enabled by OUT2. Driven under the device lock so level
    // changes arrive in order; interrupt controllers never call back into the UART.
    void UpdateIrq()
    {
        bool level = CurrentInterrupt() != IirNone && (_mcr & McrOut2) != 0 && !Loopback;
        if (level != _irqLevel)
        {
            _irqLevel = level;
            _irq.SetLevel(level);
        }
    }
}
