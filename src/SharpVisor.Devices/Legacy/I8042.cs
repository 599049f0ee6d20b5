using SharpVisor.Core;

namespace SharpVisor.Devices.Legacy;

/// <summary>
/// An 8042-compatible PS/2 controller with no keyboard and no mouse plugged in, which is what
/// Linux's i8042 driver needs to find the controller, see both ports empty and carry on quietly,
/// and what its "reboot=kbd" path needs (command 0xFE pulses the CPU reset line).
/// Register <see cref="DataPort"/> at 0x60 and <see cref="CommandPort"/> at 0x64 (one port each).
/// Controller replies come through the output buffer with IRQ1 (IRQ12 for the AUX port) when the
/// command byte enables it; bytes sent to an absent device are answered with a time-out
/// (status bit 6 and 0xFE in the output buffer), which libps2 treats as a NAK, so atkbd and
/// psmouse give up at once instead of waiting for their own time-outs.
/// </summary>
public sealed class I8042 : IPersistent<I8042.State>
{
    /// <summary>The log of the VM this device belongs to.</summary>
    readonly Log Log;

    // Status register bits (IBM PS/2 technical reference, 8042 status byte).
    const byte StatusOutputFull = 1 << 0;
    const byte StatusSystemFlag = 1 << 2;
    const byte StatusCommand = 1 << 3;       // last write went to port 0x64
    const byte StatusUnlocked = 1 << 4;      // keyboard inhibit switch "unlocked"
    const byte StatusAuxData = 1 << 5;
    const byte StatusTimeout = 1 << 6;

    // Command byte (CTR) bits.
    const byte CtrKbdInt = 1 << 0;
    const byte CtrAuxInt = 1 << 1;
    const byte CtrSystemFlag = 1 << 2;
    const byte CtrKbdDisable = 1 << 4;
    const byte CtrAuxDisable = 1 << 5;
    const byte CtrTranslate = 1 << 6;

    // Output port bits.
    const byte OutSystemReset = 1 << 0; // active low: writing 0 resets the CPU
    const byte OutA20 = 1 << 1;

    const int QueueSize = 16;

    readonly Lock _lock = new();
    readonly IIrqLine _kbdIrq;
    readonly IIrqLine _auxIrq;
    readonly Action _reset;

    // Output buffer queue: the 8042 holds one byte; the queue only holds replies not read yet.
    readonly byte[] _queueData = new byte[QueueSize];
    readonly byte[] _queueFlags = new byte[QueueSize]; // StatusAuxData | StatusTimeout per entry
    int _queueHead;
    int _queueCount;

    byte _ctr;
    byte _outputPort;
    byte _pendingCommand; // command waiting for its data byte on port 0x60, or 0
    bool _lastWriteWasCommand;
    bool _kbdIrqLevel;
    bool _auxIrqLevel;

    public readonly Counter UnknownCommands = new("i8042.unknown_commands");
    public readonly Counter DeviceBytesToAbsentDevice = new("i8042.bytes_to_absent_device");
    public readonly Counter OutputOverflows = new("i8042.output_overflows");
    public readonly Counter ResetPulses = new("i8042.reset_pulses");
    public readonly Counter A20Disables = new("i8042.a20_disables");

    /// <summary>This device's counters, for the machine's <see cref="CounterRegistry"/>.</summary>
    public IEnumerable<Counter> Counters => [UnknownCommands, DeviceBytesToAbsentDevice, OutputOverflows, ResetPulses, A20Disables];

    /// <param name="kbdIrq">IRQ 1.</param>
    /// <param name="auxIrq">IRQ 12.</param>
    /// <param name="reset">Called (outside the device lock) when the guest pulses the reset line.</param>
    public I8042(IIrqLine kbdIrq, IIrqLine auxIrq, Action reset, Log? log = null)
    {
        Log = log ?? new Log();
        _kbdIrq = kbdIrq;
        _auxIrq = auxIrq;
        _reset = reset;
        DataPort = new Port(this, isCommand: false);
        CommandPort = new Port(this, isCommand: true);
        Reset();
    }

    /// <summary>Port 0x60: output buffer (read) / data for the keyboard or a pending command (write).</summary>
    public IPortDevice DataPort { get; }

    /// <summary>Port 0x64: status register (read) / controller command (write).</summary>
    public IPortDevice CommandPort { get; }

    /// <summary>Returns to the state firmware leaves behind (machine reset).</summary>
    public void Reset()
    {
        lock (_lock)
        {
            // The command byte a PC BIOS leaves: both interrupts on, system flag set, scancode
            // translation on. The output port has the reset line inactive and A20 enabled.
            _ctr = CtrKbdInt | CtrAuxInt | CtrSystemFlag | CtrTranslate;
            _outputPort = OutSystemReset | OutA20;
            _pendingCommand = 0;
            _queueCount = 0;
            _lastWriteWasCommand = false;
            UpdateIrqs();
        }
    }

    /// <summary>
    /// The controller's registers and its output queue. IRQ 1 and IRQ 12 are not in it: they
    /// follow from the queue and the command byte and are driven again on restore.
    /// </summary>
    public sealed record State
    {
        public const int CurrentVersion = 1;
        public int Version { get; init; } = CurrentVersion;
        /// <summary>The command byte (CTR).</summary>
        public byte CommandByte { get; init; }
        /// <summary>The output port (bit 0 reset line, inactive high; bit 1 A20).</summary>
        public byte OutputPort { get; init; }
        /// <summary>A command waiting for its data byte on port 0x60, or 0.</summary>
        public byte PendingCommand { get; init; }
        /// <summary>Status bit 3: the last write went to port 0x64.</summary>
        public bool LastWriteWasCommand { get; init; }
        /// <summary>Bytes waiting in the output buffer, oldest first.</summary>
        public byte[] OutputQueue { get; init; } = [];
        /// <summary>Per queued byte, its status bits (5 AUX data, 6 time-out).</summary>
        public byte[] OutputQueueFlags { get; init; } = [];
    }

    /// <inheritdoc/>
    public State SaveState()
    {
        lock (_lock)
        {
            var data = new byte[_queueCount];
            var flags = new byte[_queueCount];
            for (int i = 0; i < _queueCount; i++)
            {
                data[i] = _queueData[(_queueHead + i) % QueueSize];
                flags[i] = _queueFlags[(_queueHead + i) % QueueSize];
            }
            return new State
            {
                CommandByte = _ctr,
                OutputPort = _outputPort,
                PendingCommand = _pendingCommand,
                LastWriteWasCommand = _lastWriteWasCommand,
                OutputQueue = data,
                OutputQueueFlags = flags,
            };
        }
    }

    /// <inheritdoc/>
    public void RestoreState(State state)
    {
        ArgumentNullException.ThrowIfNull(state);
        InvalidStateException.CheckVersion(state.Version, State.CurrentVersion, "i8042");
        Check((state.OutputPort & (OutSystemReset | OutA20)) == (OutSystemReset | OutA20),
            $"OutputPort 0x{state.OutputPort:x2} has the reset line active or A20 off (both are kept high)");
        Check(state.PendingCommand is 0 or (>= 0x60 and <= 0x7F) or (>= 0xD1 and <= 0xD4),
            $"PendingCommand 0x{state.PendingCommand:x2} is not a command that takes a data byte");
        Check(state.OutputQueue is not null && state.OutputQueueFlags is not null, "OutputQueue or OutputQueueFlags is missing");
        Check(state.OutputQueue!.Length <= QueueSize, $"OutputQueue holds {state.OutputQueue.Length} bytes, at most {QueueSize}");
        Check(state.OutputQueueFlags!.Length == state.OutputQueue.Length,
            $"OutputQueueFlags has {state.OutputQueueFlags.Length} entries for {state.OutputQueue.Length} bytes");
        foreach (byte f in state.OutputQueueFlags)
        {
            Check((f & ~(StatusAuxData | StatusTimeout)) == 0, $"OutputQueueFlags entry 0x{f:x2} has bits outside AUX data and time-out");
        }

        lock (_lock)
        {
            _ctr = state.CommandByte;
            _outputPort = state.OutputPort;
            _pendingCommand = state.PendingCommand;
            _lastWriteWasCommand = state.LastWriteWasCommand;
            _queueHead = 0;
            _queueCount = state.OutputQueue.Length;
            state.OutputQueue.CopyTo(_queueData, 0);
            state.OutputQueueFlags.CopyTo(_queueFlags, 0);
            UpdateIrqs();
        }
    }

    static void Check(bool condition, string problem) => InvalidStateException.Check(condition, "i8042", problem);

    sealed class Port(I8042 owner, bool isCommand) : IPortDevice
    {
        public string Name => isCommand ? "i8042-command" : "i8042-data";
        public uint PortRead(ushort offset, int size) => isCommand ? owner.ReadStatus() : owner.ReadData();
        public void PortWrite(ushort offset, int size, uint value)
        {
            if (isCommand)
            {
                owner.WriteCommand((byte)value);
            }
            else
            {
                owner.WriteData((byte)value);
            }
        }
    }

    byte ReadStatus()
    {
        lock (_lock)
        {
            byte status = StatusUnlocked;
            if ((_ctr & CtrSystemFlag) != 0)
            {
                status |= StatusSystemFlag;
            }
            if (_lastWriteWasCommand)
            {
                status |= StatusCommand;
            }
            if (_queueCount > 0)
            {
                status |= (byte)(StatusOutputFull | _queueFlags[_queueHead]);
            }
            // Input buffer full (bit 1) is never set: every write is processed at once.
            return status;
        }
    }

    byte ReadData()
    {
        lock (_lock)
        {
            if (_queueCount == 0)
            {
                return 0; // reading an empty output buffer returns a stale byte on hardware
            }
            byte b = _queueData[_queueHead];
            _queueHead = (_queueHead + 1) % QueueSize;
            _queueCount--;
            // The byte was taken: the IRQ line drops, and rises again for the next queued byte,
            // giving the edge-triggered PIC a new edge.
            DropIrqs();
            UpdateIrqs();
            return b;
        }
    }

    void WriteCommand(byte command)
    {
        bool reset = false;
        lock (_lock)
        {
            _lastWriteWasCommand = true;
            _pendingCommand = 0;
            switch (command)
            {
                case 0x20: Reply(_ctr); break;                         // read command byte
                case >= 0x21 and <= 0x3F: Reply(0); break;             // read controller RAM
                case 0x60: _pendingCommand = command; break;           // write command byte
                case >= 0x61 and <= 0x7F: _pendingCommand = command; break; // write controller RAM
                case 0xA7: _ctr |= CtrAuxDisable; break;
                case 0xA8: _ctr &= unchecked((byte)~CtrAuxDisable); break;
                case 0xA9: Reply(0x00); break;                          // AUX interface test: OK
                case 0xAA:                                              // controller self-test
                    _ctr |= CtrSystemFlag;
                    Reply(0x55);
                    break;
                case 0xAB: Reply(0x00); break;                          // keyboard interface test: OK
                case 0xAD: _ctr |= CtrKbdDisable; break;
                case 0xAE: _ctr &= unchecked((byte)~CtrKbdDisable); break;
                case 0xC0: Reply(0xBF); break;                          // input port: no keyboard lock
                case 0xD0: Reply(_outputPort); break;
                case 0xD1 or 0xD2 or 0xD3 or 0xD4: _pendingCommand = command; break;
                case 0xE0: Reply(0x00); break;                          // test inputs
                case >= 0xF0:
                    // Pulse output port bits 3:0 low for 6 us; bit 0 low is the CPU reset line.
                    if ((command & 1) == 0)
                    {
                        reset = true;
                    }
                    break;
                default:
                    UnknownCommands.Increment();
                    Log.Once("i8042.command", "i8042", $"unimplemented controller command 0x{command:x2} (ignored)");
                    break;
            }
            UpdateIrqs();
        }
        if (reset)
        {
            ResetPulses.Increment();
            _reset();
        }
    }

    void WriteData(byte value)
    {
        bool reset = false;
        lock (_lock)
        {
            _lastWriteWasCommand = false;
            byte command = _pendingCommand;
            _pendingCommand = 0;
            switch (command)
            {
                case 0x60:
                    _ctr = value;
                    break;
                case >= 0x61 and <= 0x7F:
                    break; // controller RAM beyond the command byte is not kept
                case 0xD1:
                    if ((value & OutA20) == 0)
                    {
                        A20Disables.Increment();
                        Log.Once("i8042.a20", "i8042", "guest disabled A20 through the 8042; A20 stays enabled");
                    }
                    _outputPort = (byte)(value | OutA20);
                    if ((value & OutSystemReset) == 0)
                    {
                        reset = true;
                        _outputPort |= OutSystemReset;
                    }
                    break;
                case 0xD2: Enqueue(value, 0); break;                  // as if from the keyboard
                case 0xD3: Enqueue(value, StatusAuxData); break;      // as if from the mouse
                case 0xD4:
                    // A byte for the AUX device: nobody is plugged in.
                    DeviceBytesToAbsentDevice.Increment();
                    Enqueue(0xFE, StatusAuxData | StatusTimeout);
                    break;
                default:
                    // A byte for the keyboard, which is absent. Sending it enables the port.
                    _ctr &= unchecked((byte)~CtrKbdDisable);
                    DeviceBytesToAbsentDevice.Increment();
                    Enqueue(0xFE, StatusTimeout);
                    break;
            }
            UpdateIrqs();
        }
        if (reset)
        {
            ResetPulses.Increment();
            _reset();
        }
    }

    void Reply(byte value) => Enqueue(value, 0);

    void Enqueue(byte value, byte flags)
    {
        if (_queueCount == QueueSize)
        {
            OutputOverflows.Increment();
            return;
        }
        int tail = (_queueHead + _queueCount) % QueueSize;
        _queueData[tail] = value;
        _queueFlags[tail] = flags;
        _queueCount++;
    }

    void DropIrqs()
    {
        if (_kbdIrqLevel)
        {
            _kbdIrqLevel = false;
            _kbdIrq.SetLevel(false);
        }
        if (_auxIrqLevel)
        {
            _auxIrqLevel = false;
            _auxIrq.SetLevel(false);
        }
    }

    // IRQ1/IRQ12 follow "output buffer full" for the byte's source when the command byte enables
    // that interrupt. Driven under the device lock (the PIC/IOAPIC never call back into us).
    void UpdateIrqs()
    {
        bool kbd = false, aux = false;
        if (_queueCount > 0)
        {
            bool fromAux = (_queueFlags[_queueHead] & StatusAuxData) != 0;
            kbd = !fromAux && (_ctr & CtrKbdInt) != 0;
            aux = fromAux && (_ctr & CtrAuxInt) != 0;
        }
        if (kbd != _kbdIrqLevel)
        {
            _kbdIrqLevel = kbd;
            _kbdIrq.SetLevel(kbd);
        }
        if (aux != _auxIrqLevel)
        {
            _auxIrqLevel = aux;
            _auxIrq.SetLevel(aux);
        }
    }
}
