using SharpVisor.Core;

namespace SharpVisor.Devices.Legacy;

/// <summary>
/// The cascaded pair of 8259A interrupt controllers of a PC (Intel 8259A datasheet; ICH9
/// datasheet 5.8): the master at 0x20/0x21 (<see cref="MasterPort"/>), the slave at 0xA0/0xA1
/// (<see cref="SlavePort"/>) cascaded on master IR2, and the ICH's edge/level control registers
/// ELCR1/ELCR2 at 0x4D0/0x4D1 (<see cref="ElcrPort"/>, 2 ports). Inputs are <see cref="Input"/>(0..15).
/// <para>The master's INT output reaches the CPU through <see cref="IExtIntController"/> (LINT0 in
/// virtual-wire mode). <c>intChanged</c> is called outside the PIC lock whenever the output
/// changes; the argument is the level at that moment, but as calls from two threads can arrive in
/// either order, receivers should treat it as a hint and re-read <see cref="HasInterrupt"/>.</para>
/// <para>Not modelled: 8080/8085 mode (ICW4 bit 0 = 0), buffered mode, single (non-cascaded)
/// mode and ICW1.LTIM (ignored on ICH9, which uses ELCR instead); each is counted and logged.</para>
/// </summary>
public sealed class Pic8259Pair : IExtIntController, IPersistent<Pic8259Pair.State>
{
    /// <summary>The log of the VM this device belongs to.</summary>
    readonly Log Log;

    sealed class Chip(bool isMaster)
    {
        public readonly bool IsMaster = isMaster;
        public byte IrrEdge;      // requests latched by rising edges of edge-triggered inputs
        public byte Lines;        // current input levels
        public byte Elcr;         // 1 = level-triggered input
        public byte Imr;
        public byte Isr;
        public byte PriorityAdd;  // the input with the highest priority (rotation)
        public byte VectorBase;
        public int InitStep;      // 0 = operational, 2/3/4 = waiting for ICW2/ICW3/ICW4
        public bool Icw4Needed;
        public bool Single;
        public bool AutoEoi;
        public bool RotateOnAutoEoi;
        public bool SpecialMask;
        public bool SpecialFullyNested;
        public bool ReadIsr;
        public bool Poll;
    }

    const int CascadeInput = 2;

    readonly Lock _lock = new();
    readonly Chip _master = new(isMaster: true);
    readonly Chip _slave = new(isMaster: false);
    readonly Action<bool>? _intChanged;
    readonly InputLine[] _inputs = new InputLine[16];
    bool _output;

    public readonly Counter SpuriousAcknowledges = new("pic.spurious_acknowledges");
    public readonly Counter UnsupportedModes = new("pic.unsupported_modes");
    public readonly Counter CascadeInputWrites = new("pic.cascade_input_writes");
    public readonly Counter ReservedElcrWrites = new("pic.reserved_elcr_writes");

    /// <summary>This device's counters, for the machine's <see cref="CounterRegistry"/>.</summary>
    public IEnumerable<Counter> Counters => [SpuriousAcknowledges, UnsupportedModes, CascadeInputWrites, ReservedElcrWrites];

    /// <param name="intChanged">Called when the master's INT output may have changed (kick the vCPU / LINT0).</param>
    public Pic8259Pair(Action<bool>? intChanged = null, Log? log = null)
    {
        Log = log ?? new Log();
        _intChanged = intChanged;
        for (int i = 0; i < 16; i++)
        {
            _inputs[i] = new InputLine(this, i);
        }
        MasterPort = new ChipPort(this, _master);
        SlavePort = new ChipPort(this, _slave);
        ElcrPort = new ElcrPorts(this);
        Reset();
    }

    /// <summary>Ports 0x20-0x21.</summary>
    public IPortDevice MasterPort { get; }

    /// <summary>Ports 0xA0-0xA1.</summary>
    public IPortDevice SlavePort { get; }

    /// <summary>Ports 0x4D0-0x4D1 (ELCR1, ELCR2).</summary>
    public IPortDevice ElcrPort { get; }

    /// <summary>The line of ISA IRQ <paramref name="irq"/> (0-15). IRQ 2 is the cascade and has no input.</summary>
    public IIrqLine Input(int irq)
    {
        if ((uint)irq >= 16)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(irq), "the PIC pair has IRQs 0-15");
        }
        return _inputs[irq];
    }

    /// <summary>True while the master drives INT: an unmasked request beats everything in service.</summary>
    public bool HasInterrupt => Volatile.Read(ref _output);

    /// <summary>Power-on state; vector bases as a PC BIOS leaves them (0x08 and 0x70).</summary>
    public void Reset()
    {
        bool changed;
        lock (_lock)
        {
            foreach (var chip in (ReadOnlySpan<Chip>)[_master, _slave])
            {
                ResetChip(chip);
                chip.Elcr = 0;
                chip.InitStep = 0;
            }
            _master.VectorBase = 0x08;
            _slave.VectorBase = 0x70;
            changed = UpdateOutput();
        }
        Notify(changed);
    }

    /// <summary>One 8259A's registers and initialisation progress.</summary>
    public sealed record ChipState
    {
        /// <summary>Requests latched by rising edges of edge-triggered inputs.</summary>
        public byte IrrEdge { get; init; }
        /// <summary>The current level of each input line.</summary>
        public byte Lines { get; init; }
        public byte Elcr { get; init; }
        public byte Imr { get; init; }
        public byte Isr { get; init; }
        /// <summary>The input with the highest priority (rotation), 0-7.</summary>
        public byte PriorityAdd { get; init; }
        public byte VectorBase { get; init; }
        /// <summary>0 = operational, 2/3/4 = waiting for ICW2/ICW3/ICW4.</summary>
        public int InitStep { get; init; }
        public bool Icw4Needed { get; init; }
        public bool AutoEoi { get; init; }
        public bool RotateOnAutoEoi { get; init; }
        public bool SpecialMask { get; init; }
        public bool SpecialFullyNested { get; init; }
        /// <summary>OCW3 read register select: ISR rather than IRR.</summary>
        public bool ReadIsr { get; init; }
        /// <summary>A poll command waits for its read.</summary>
        public bool Poll { get; init; }
    }

    /// <summary>
    /// Both chips. The INT output is not in it: it follows from the chips and is driven again on
    /// restore (through <c>intChanged</c>).
    /// </summary>
    public sealed record State
    {
        public const int CurrentVersion = 1;
        public int Version { get; init; } = CurrentVersion;
        public ChipState Master { get; init; } = new();
        public ChipState Slave { get; init; } = new();
    }

    /// <inheritdoc/>
    public State SaveState()
    {
        lock (_lock)
        {
            return new State { Master = Save(_master), Slave = Save(_slave) };
        }
    }

    static ChipState Save(Chip c) => new()
    {
        IrrEdge = c.IrrEdge,
        Lines = c.Lines,
        Elcr = c.Elcr,
        Imr = c.Imr,
        Isr = c.Isr,
        PriorityAdd = c.PriorityAdd,
        VectorBase = c.VectorBase,
        InitStep = c.InitStep,
        Icw4Needed = c.Icw4Needed,
        AutoEoi = c.AutoEoi,
        RotateOnAutoEoi = c.RotateOnAutoEoi,
        SpecialMask = c.SpecialMask,
        SpecialFullyNested = c.SpecialFullyNested,
        ReadIsr = c.ReadIsr,
        Poll = c.Poll,
    };

    /// <inheritdoc/>
    public void RestoreState(State state)
    {
        ArgumentNullException.ThrowIfNull(state);
        InvalidStateException.CheckVersion(state.Version, State.CurrentVersion, "pic");
        InvalidStateException.Check(state.Master is not null && state.Slave is not null, "pic", "Master or Slave is missing");
        Validate(state.Master!, "Master", ElcrPorts.MasterMask);
        Validate(state.Slave!, "Slave", ElcrPorts.SlaveMask);
        const byte cascadeBit = 1 << CascadeInput;
        InvalidStateException.Check(((state.Master!.Lines | state.Master.IrrEdge) & cascadeBit) == 0, "pic",
            "Master.Lines/IrrEdge: IR2 carries the slave's INT, it has no input line");

        bool changed;
        lock (_lock)
        {
            Apply(_master, state.Master);
            Apply(_slave, state.Slave!);
            changed = UpdateOutput();
        }
        Notify(changed);
    }

    static void Validate(ChipState c, string name, byte elcrMask)
    {
        InvalidStateException.Check((c.Elcr & ~elcrMask) == 0, "pic", $"{name}.Elcr 0x{c.Elcr:x2} makes an always-edge-triggered input (IRQ 0, 1, 2, 8, 13) level-triggered");
        InvalidStateException.Check(c.PriorityAdd < 8, "pic", $"{name}.PriorityAdd {c.PriorityAdd} is not an input (0-7)");
        InvalidStateException.Check((c.VectorBase & 7) == 0, "pic", $"{name}.VectorBase 0x{c.VectorBase:x2} has bits 2:0 set (ICW2 sets bits 7:3)");
        InvalidStateException.Check(c.InitStep is 0 or 2 or 3 or 4, "pic", $"{name}.InitStep {c.InitStep} is not 0 (operational) or 2-4 (waiting for ICW2-ICW4)");
    }

    static void Apply(Chip chip, ChipState c)
    {
        chip.IrrEdge = c.IrrEdge;
        chip.Lines = c.Lines;
        chip.Elcr = c.Elcr;
        chip.Imr = c.Imr;
        chip.Isr = c.Isr;
        chip.PriorityAdd = c.PriorityAdd;
        chip.VectorBase = c.VectorBase;
        chip.InitStep = c.InitStep;
        chip.Icw4Needed = c.Icw4Needed;
        chip.Single = false; // never kept set: single mode is not modelled (see WriteChip)
        chip.AutoEoi = c.AutoEoi;
        chip.RotateOnAutoEoi = c.RotateOnAutoEoi;
        chip.SpecialMask = c.SpecialMask;
        chip.SpecialFullyNested = c.SpecialFullyNested;
        chip.ReadIsr = c.ReadIsr;
        chip.Poll = c.Poll;
    }

    /// <summary>The INTA cycle: accepts the highest-priority request and returns its vector.</summary>
    public byte Acknowledge()
    {
        byte vector;
        bool changed;
        lock (_lock)
        {
            int irq = HighestRequest(_master);
            if (irq < 0)
            {
                // The request went away before INTA: the 8259A answers with IR7's vector and sets
                // no ISR bit (datasheet "Interrupt sequence"); Linux checks ISR and counts it spurious.
                SpuriousAcknowledges.Increment();
                vector = (byte)(_master.VectorBase | 7);
            }
            else if (irq == CascadeInput && !_master.Single)
            {
                AcceptRequest(_master, irq);
                int slaveIrq = HighestRequest(_slave);
                if (slaveIrq < 0)
                {
                    SpuriousAcknowledges.Increment();
                    vector = (byte)(_slave.VectorBase | 7);
                }
                else
                {
                    AcceptRequest(_slave, slaveIrq);
                    vector = (byte)(_slave.VectorBase | slaveIrq);
                }
            }
            else
            {
                AcceptRequest(_master, irq);
                vector = (byte)(_master.VectorBase | irq);
            }
            changed = UpdateOutput();
        }
        Notify(changed);
        return vector;
    }

    /// <summary>Drives ISA IRQ <paramref name="irq"/>.</summary>
    public void SetIrq(int irq, bool level)
    {
        if (irq == CascadeInput)
        {
            CascadeInputWrites.Increment();
            return;
        }
        bool changed;
        lock (_lock)
        {
            var chip = irq < 8 ? _master : _slave;
            byte bit = (byte)(1 << (irq & 7));
            if (level)
            {
                if ((chip.Lines & bit) == 0)
                {
                    chip.IrrEdge |= bit; // a rising edge; used only while the input is edge-triggered
                }
                chip.Lines |= bit;
            }
            else
            {
                chip.Lines &= (byte)~bit;
            }
            changed = UpdateOutput();
        }
        Notify(changed);
    }

    static void ResetChip(Chip chip)
    {
        chip.IrrEdge = 0;
        chip.Imr = 0;
        chip.Isr = 0;
        chip.PriorityAdd = 0;
        chip.AutoEoi = false;
        chip.RotateOnAutoEoi = false;
        chip.SpecialMask = false;
        chip.SpecialFullyNested = false;
        chip.ReadIsr = false;
        chip.Poll = false;
        chip.Single = false;
    }

    /// <summary>IRR as the chip sees it: latched edges, current levels of level-triggered inputs and, on the master, the slave's INT on IR2.</summary>
    byte Irr(Chip chip)
    {
        byte irr = (byte)((chip.IrrEdge & ~chip.Elcr) | (chip.Lines & chip.Elcr));
        if (chip.IsMaster && !chip.Single)
        {
            irr = (byte)(irr & ~(1 << CascadeInput));
            if (HighestRequest(_slave) >= 0)
            {
                irr |= 1 << CascadeInput;
            }
        }
        return irr;
    }

    /// <summary>Priority rank of the best bit in <paramref name="mask"/> (0 = highest), or 8 when empty.</summary>
    static int Priority(Chip chip, int mask)
    {
        if (mask == 0)
        {
            return 8;
        }
        int priority = 0;
        while ((mask & (1 << ((priority + chip.PriorityAdd) & 7))) == 0)
        {
            priority++;
        }
        return priority;
    }

    /// <summary>The input that would interrupt now, or -1 (datasheet "Priority resolver").</summary>
    int HighestRequest(Chip chip)
    {
        int requested = Priority(chip, Irr(chip) & ~chip.Imr);
        if (requested == 8)
        {
            return -1;
        }
        int inService = chip.Isr;
        if (chip.SpecialMask)
        {
            inService &= ~chip.Imr; // special mask mode: masked levels do not block lower ones
        }
        if (chip.IsMaster && chip.SpecialFullyNested)
        {
            inService &= ~(1 << CascadeInput); // the slave may interrupt a slave service routine
        }
        return requested < Priority(chip, inService) ? (requested + chip.PriorityAdd) & 7 : -1;
    }

    static void AcceptRequest(Chip chip, int irq)
    {
        byte bit = (byte)(1 << irq);
        if (chip.AutoEoi)
        {
            if (chip.RotateOnAutoEoi)
            {
                chip.PriorityAdd = (byte)((irq + 1) & 7);
            }
        }
        else
        {
            chip.Isr |= bit;
        }
        chip.IrrEdge &= (byte)~bit; // an edge request is consumed; a level one lasts while the line is high
    }

    bool UpdateOutput()
    {
        bool output = HighestRequest(_master) >= 0;
        if (output == _output)
        {
            return false;
        }
        Volatile.Write(ref _output, output);
        return true;
    }

    void Notify(bool changed)
    {
        if (changed)
        {
            _intChanged?.Invoke(Volatile.Read(ref _output));
        }
    }

    byte ReadChip(Chip chip, int offset)
    {
        if (offset == 1)
        {
            return chip.Imr;
        }
        if (chip.Poll)
        {
            // Poll command (OCW3 bit 2): this read is the acknowledge.
            chip.Poll = false;
            int irq = HighestRequest(chip);
            if (irq < 0)
            {
                return 0;
            }
            AcceptRequest(chip, irq);
            return (byte)(0x80 | irq);
        }
        return chip.ReadIsr ? chip.Isr : Irr(chip);
    }

    void WriteChip(Chip chip, int offset, byte value)
    {
        string name = chip.IsMaster ? "master" : "slave";
        if (offset == 0)
        {
            if ((value & 0x10) != 0)
            {
                // ICW1 (datasheet "Initialization command words"): starts the sequence, clears
                // IMR and ISR, resets edge sensing and priorities, selects IRR for reading.
                ResetChip(chip);
                chip.InitStep = 2;
                chip.Icw4Needed = (value & 0x01) != 0;
                chip.Single = (value & 0x02) != 0;
                if ((value & 0x08) != 0 || chip.Single)
                {
                    UnsupportedModes.Increment();
                    Log.Once($"pic.icw1.{name}", "pic", $"{name} ICW1 0x{value:x2} asks for level-triggered or single mode; ELCR decides triggering and the pair stays cascaded");
                    chip.Single = false;
                }
            }
            else if ((value & 0x08) != 0)
            {
                // OCW3.
                if ((value & 0x04) != 0)
                {
                    chip.Poll = true;
                }
                if ((value & 0x02) != 0)
                {
                    chip.ReadIsr = (value & 0x01) != 0;
                }
                if ((value & 0x40) != 0)
                {
                    chip.SpecialMask = (value & 0x20) != 0;
                }
            }
            else
            {
                WriteOcw2(chip, value);
            }
            return;
        }

        switch (chip.InitStep)
        {
            case 2: // ICW2: vector base (bits 7:3)
                chip.VectorBase = (byte)(value & 0xF8);
                chip.InitStep = chip.Single ? (chip.Icw4Needed ? 4 : 0) : 3;
                break;
            case 3: // ICW3: cascade wiring, fixed on a PC (slave on master IR2)
                if (value != (chip.IsMaster ? 1 << CascadeInput : CascadeInput))
                {
                    UnsupportedModes.Increment();
                    Log.Once($"pic.icw3.{name}", "pic", $"{name} ICW3 0x{value:x2} does not match the PC's wiring (slave on IR2); ignored");
                }
                chip.InitStep = chip.Icw4Needed ? 4 : 0;
                if (!chip.Icw4Needed)
                {
                    WarnNo8086Mode(name);
                }
                break;
            case 4: // ICW4
                chip.AutoEoi = (value & 0x02) != 0;
                chip.SpecialFullyNested = (value & 0x10) != 0;
                if ((value & 0x01) == 0)
                {
                    WarnNo8086Mode(name);
                }
                chip.InitStep = 0;
                break;
            default: // OCW1
                chip.Imr = value;
                break;
        }
    }

    void WarnNo8086Mode(string name)
    {
        UnsupportedModes.Increment();
        Log.Once($"pic.8080.{name}", "pic", $"{name} initialised without 8086 mode (ICW4 bit 0); vectors are delivered as in 8086 mode");
    }

    static void WriteOcw2(Chip chip, byte value)
    {
        int level = value & 7;
        switch (value >> 5)
        {
            case 0: chip.RotateOnAutoEoi = false; break;
            case 4: chip.RotateOnAutoEoi = true; break;
            case 1: // non-specific EOI
            case 5: // rotate on non-specific EOI
                {
                    int priority = Priority(chip, chip.Isr);
                    if (priority != 8)
                    {
                        int irq = (priority + chip.PriorityAdd) & 7;
                        chip.Isr &= (byte)~(1 << irq);
                        if (value >> 5 == 5)
                        {
                            chip.PriorityAdd = (byte)((irq + 1) & 7);
                        }
                    }
                    break;
                }
            case 3: // specific EOI
                chip.Isr &= (byte)~(1 << level);
                break;
            case 7: // rotate on specific EOI
                chip.Isr &= (byte)~(1 << level);
                chip.PriorityAdd = (byte)((level + 1) & 7);
                break;
            case 6: // set priority: level becomes the lowest
                chip.PriorityAdd = (byte)((level + 1) & 7);
                break;
            default: // 2: no operation
                break;
        }
    }

    sealed class InputLine(Pic8259Pair pic, int irq) : IIrqLine
    {
        public void SetLevel(bool asserted) => pic.SetIrq(irq, asserted);
    }

    sealed class ChipPort(Pic8259Pair pic, Chip chip) : IPortDevice
    {
        public string Name => chip.IsMaster ? "pic-master" : "pic-slave";

        public uint PortRead(ushort offset, int size)
        {
            bool changed;
            byte value;
            lock (pic._lock)
            {
                value = pic.ReadChip(chip, offset & 1);
                changed = pic.UpdateOutput();
            }
            pic.Notify(changed);
            return value;
        }

        public void PortWrite(ushort offset, int size, uint value)
        {
            bool changed;
            lock (pic._lock)
            {
                pic.WriteChip(chip, offset & 1, (byte)value);
                changed = pic.UpdateOutput();
            }
            pic.Notify(changed);
        }
    }

    sealed class ElcrPorts(Pic8259Pair pic) : IPortDevice
    {
        // IRQ 0, 1, 2, 8 and 13 are always edge-triggered (ICH9 datasheet 13.4.2, ELCR1/ELCR2).
        public const byte MasterMask = 0xF8;
        public const byte SlaveMask = 0xDE;

        public string Name => "pic-elcr";

        public uint PortRead(ushort offset, int size)
        {
            lock (pic._lock)
            {
                uint value = 0;
                for (int i = 0; i < size && offset + i < 2; i++)
                {
                    value |= (uint)(offset + i == 0 ? pic._master.Elcr : pic._slave.Elcr) << (8 * i);
                }
                return value;
            }
        }

        public void PortWrite(ushort offset, int size, uint value)
        {
            bool changed;
            lock (pic._lock)
            {
                for (int i = 0; i < size && offset + i < 2; i++)
                {
                    byte b = (byte)(value >> (8 * i));
                    var chip = offset + i == 0 ? pic._master : pic._slave;
                    byte mask = offset + i == 0 ? MasterMask : SlaveMask;
                    if ((b & ~mask) != 0)
                    {
                        pic.ReservedElcrWrites.Increment();
                    }
                    byte elcr = (byte)(b & mask);
                    // A line switching to edge mode needs a fresh rising edge.
                    chip.IrrEdge &= (byte)~(elcr ^ chip.Elcr);
                    chip.Elcr = elcr;
                }
                changed = pic.UpdateOutput();
            }
            pic.Notify(changed);
        }
    }
}
