using SharpVisor.Core;

namespace SharpVisor.Devices.Pci;

/// <summary>
/// One PCI function: its 4 KiB configuration space with per-byte write masks, its BARs and its
/// interrupt and DMA plumbing. Devices subclass it, declare BARs and capabilities in their
/// constructor (<see cref="DefineBar"/>, <see cref="AddMsiCapability"/>, ...) and override
/// <see cref="BarRead"/>/<see cref="BarWrite"/>, which see offsets within the BAR.
/// </summary>
/// <remarks>
/// Locking: configuration space, BAR registers, MSI/MSI-X state and the MSI-X table are guarded by
/// one lock private to this class. Interrupts (<see cref="RaiseInterrupt"/>) and DMA may be used
/// from any thread; a subclass must call <see cref="RaiseInterrupt"/>/<see cref="LowerInterrupt"/>
/// after releasing its own lock, since the MSI receiver may reach back into devices.
/// </remarks>
public abstract partial class PciFunction
{
    readonly byte[] _config = new byte[PciConfig.ExtendedSize];
    readonly byte[] _writable = new byte[PciConfig.ExtendedSize];
    readonly byte[] _writeOneToClear = new byte[PciConfig.ExtendedSize];
    readonly Bar[] _bars = new Bar[PciConfig.BarCount];
    readonly Lock _configLock = new();

    PciBus? _bus;

    /// <summary>The log of the VM whose bus this function is on (its own until it is attached).</summary>
    public Log Log { get; private set; } = new Log();
    IMsiSink? _msiSink;
    IDmaSpace _dma = DetachedDmaSpace.Instance;
    volatile bool _busMaster;

    /// <summary>Invalid config or BAR accesses (bad size or alignment, registers that do not exist).</summary>
    public readonly Counter BadAccesses;
    /// <summary>DMA requests refused because Bus Master Enable was clear.</summary>
    public readonly Counter DmaRefused;
    /// <summary>Interrupts that could not be sent (vector out of range, no MSI sink).</summary>
    public readonly Counter InterruptsDropped;
    /// <summary>Interrupts held pending because MSI/MSI-X masked them.</summary>
    public readonly Counter InterruptsMasked;

    /// <param name="name">Short device name for logs and counters ("edu").</param>
    /// <param name="classCode">24-bit class code: base class, sub-class, programming interface (0xBBSSPP).</param>
    protected PciFunction(string name, ushort vendorId, ushort deviceId, uint classCode, byte revision,
        ushort subsystemVendorId = 0, ushort subsystemId = 0)
    {
        Name = name;
        BadAccesses = new Counter($"pci.{name}.bad_accesses");
        DmaRefused = new Counter($"pci.{name}.dma_refused");
        InterruptsDropped = new Counter($"pci.{name}.interrupts_dropped");
        InterruptsMasked = new Counter($"pci.{name}.interrupts_masked");
        for (int i = 0; i < _bars.Length; i++)
        {
            _bars[i] = new Bar(i);
        }

        InitConfig(PciConfig.VendorId, 2, vendorId);
        InitConfig(PciConfig.DeviceId, 2, deviceId);
        // PCI 3.0, 6.2.2: the decode enables, bus mastering, error reporting and Interrupt Disable
        // are software-controlled; the rest of the command register is hardwired to 0 (PCIe 7.5.1.1).
        InitConfig(PciConfig.Command, 2, 0, (uint)(PciCommand.IoSpace | PciCommand.MemorySpace | PciCommand.BusMaster
            | PciCommand.ParityErrorResponse | PciCommand.SerrEnable | PciCommand.InterruptDisable));
        _writeOneToClear[PciConfig.Status] = (byte)((uint)PciStatus.WriteOneToClear & 0xFF);
        _writeOneToClear[PciConfig.Status + 1] = (byte)((uint)PciStatus.WriteOneToClear >> 8);
        InitConfig(PciConfig.RevisionId, 1, revision);
        InitConfig(PciConfig.ClassCode, 3, classCode & 0xFF_FFFF);
        // Cache Line Size is read/write scratch for software (PCI 3.0, 6.2.4); Linux writes it.
        InitConfig(PciConfig.CacheLineSize, 1, 0, 0xFF);
        InitConfig(PciConfig.SubsystemVendorId, 2, subsystemVendorId);
        InitConfig(PciConfig.SubsystemId, 2, subsystemId);
        // Interrupt Line is written by firmware/OS and means nothing to the device (PCI 3.0, 6.2.4).
        InitConfig(PciConfig.InterruptLine, 1, 0xFF, 0xFF);
    }

    public string Name { get; }

    /// <summary>This function's counters, for a <see cref="CounterRegistry"/>.</summary>
    public virtual IEnumerable<Counter> Counters => [BadAccesses, DmaRefused, InterruptsDropped, InterruptsMasked, .. AtsCounters];

    /// <summary>"bb:dd.f" once on a bus.</summary>
    public string Location { get; private set; } = "--:--.-";

    /// <summary>Bus &lt;&lt; 8 | device &lt;&lt; 3 | function: the ID on this function's DMA and MSI requests.</summary>
    public ushort RequesterId { get; private set; }

    public ushort VendorId => (ushort)ReadConfigLocked(PciConfig.VendorId, 2);
    public ushort DeviceId => (ushort)ReadConfigLocked(PciConfig.DeviceId, 2);
    public PciCommand Command => (PciCommand)ConfigRead(PciConfig.Command, 2);
    public bool BusMasterEnabled => _busMaster;
    public bool IsAttached => _bus is not null;

    /// <summary>Interrupt Pin (1 = INTA# .. 4 = INTD#, 0 = none), read-only to software.</summary>
    public byte InterruptPin
    {
        get => _config[PciConfig.InterruptPin];
        protected init => _config[PciConfig.InterruptPin] = value <= 4 ? value : throw new ArgumentOutOfRangeException(nameof(value));
    }

    /// <summary>
    /// True once a PCI Express capability exists: the function then has the 4 KiB extended
    /// configuration space. A conventional function answers accesses above 0xFF with all ones, as
    /// QEMU's conventional devices do behind ECAM.
    /// </summary>
    public bool HasExtendedConfigSpace => _pcieCapability != 0;

    /// <summary>The DMA space of this function's requester ID, gated by Bus Master Enable.</summary>
    protected IDmaSpace Dma => _dma;

    // ---- configuration space ----

    /// <summary>
    /// Reads 1, 2 or 4 bytes of configuration space (little-endian). Accesses outside the space
    /// or with another size read all ones, as a master abort does.
    /// </summary>
    public uint ConfigRead(int offset, int size)
    {
        if (!IsValidConfigAccess(offset, size))
        {
            BadAccesses.Increment();
            return AllOnes(size);
        }
        if (offset >= PciConfig.ConventionalSize && !HasExtendedConfigSpace)
        {
            return AllOnes(size);
        }
        return OnConfigRead(offset, size, ReadConfigLocked(offset, size));
    }

    /// <summary>
    /// Lets a device compute registers on read (e.g. a window into a BAR): gets the stored value,
    /// returns what the guest sees. Called outside every lock of this class.
    /// </summary>
    protected virtual uint OnConfigRead(int offset, int size, uint value) => value;

    /// <summary>
    /// Writes 1, 2 or 4 bytes of configuration space. Read-only bits keep their value, RW1C bits
    /// clear where a 1 is written, then side effects run: decode changes remap BARs through the
    /// bus, unmasking MSI/MSI-X delivers pending messages, INTx is re-evaluated.
    /// </summary>
    public void ConfigWrite(int offset, int size, uint value)
    {
        if (!IsValidConfigAccess(offset, size))
        {
            BadAccesses.Increment();
            return;
        }
        if (offset >= PciConfig.ConventionalSize && !HasExtendedConfigSpace)
        {
            return;
        }
        bool commandTouched, msiTouched, msixTouched, powerTouched, atsTouched;
        lock (_configLock)
        {
            byte oldPowerState = _pmCapability != 0 ? _config[_pmCapability + 4] : (byte)0;
            for (int i = 0; i < size; i++)
            {
                int o = offset + i;
                byte b = (byte)(value >> (8 * i));
                byte mask = _writable[o];
                int updated = (_config[o] & ~mask) | (b & mask);
                updated &= ~(b & _writeOneToClear[o]);
                _config[o] = (byte)updated;
            }
            commandTouched = Overlaps(offset, size, PciConfig.Command, 2);
            if (commandTouched)
            {
                _busMaster = (_config[PciConfig.Command] & (byte)PciCommand.BusMaster) != 0;
            }
            msiTouched = _msiCapability != 0 && Overlaps(offset, size, _msiCapability, MsiLength);
            msixTouched = _msixCapability != 0 && Overlaps(offset, size, _msixCapability + 2, 2);
            powerTouched = _pmCapability != 0 && Overlaps(offset, size, _pmCapability + 4, 1);
            atsTouched = _atsCapability != 0 && Overlaps(offset, size, _atsCapability + AtsControlRegister, 2);
            if (powerTouched && (_config[_pmCapability + 4] & 3) is 1 or 2)
            {
                _config[_pmCapability + 4] = oldPowerState; // D1/D2 unsupported: the write is discarded
            }
        }

        if (atsTouched)
        {
            ApplyAtsControl();
        }
        if (msiTouched)
        {
            DeliverPendingMsi();
        }
        if (msixTouched)
        {
            DeliverPendingMsiX();
        }
        if (commandTouched || msiTouched || msixTouched)
        {
            UpdateIntxLine();
        }
        if (commandTouched || powerTouched || Overlaps(offset, size, PciConfig.Bar0, 4 * PciConfig.BarCount))
        {
            _bus?.UpdateDecode();
        }
        OnConfigWritten(offset, size);
    }

    /// <summary>Called after a guest configuration write (outside every lock of this class).</summary>
    protected virtual void OnConfigWritten(int offset, int size)
    {
    }

    /// <summary>
    /// Sets the initial value and the software-writable bits of a configuration register. For use
    /// in constructors, before the function is on a bus.
    /// </summary>
    protected void InitConfig(int offset, int size, uint value, uint writableMask = 0)
    {
        if (size is < 1 or > 4 || offset < 0 || offset + size > PciConfig.ExtendedSize)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(offset), $"config register 0x{offset:x}/{size} is invalid");
        }
        EnsureNotAttached();
        for (int i = 0; i < size; i++)
        {
            _config[offset + i] = (byte)(value >> (8 * i));
            _writable[offset + i] = (byte)(writableMask >> (8 * i));
        }
    }

    /// <summary>
    /// Changes a register's value at run time (device-owned bits such as a read-only status field),
    /// keeping its write masks. Takes effect without the side effects of a guest write.
    /// </summary>
    protected void SetConfig(int offset, int size, uint value)
    {
        if (!IsValidConfigAccess(offset, size))
        {
            ThrowHelper.ArgumentOutOfRange(nameof(offset), $"config register 0x{offset:x}/{size} is invalid");
        }
        lock (_configLock)
        {
            WriteRaw(offset, size, value);
        }
    }

    /// <summary>Sets status error bits the device detected (they stay until software writes 1 to them).</summary>
    protected void SetStatusBits(PciStatus bits)
    {
        lock (_configLock)
        {
            ushort status = (ushort)(ReadRaw(PciConfig.Status, 2) | (uint)bits);
            WriteRaw(PciConfig.Status, 2, status);
        }
    }

    internal void SetMultiFunction(bool multiFunction)
    {
        lock (_configLock)
        {
            _config[PciConfig.HeaderType] = (byte)((_config[PciConfig.HeaderType] & 0x7F) | (multiFunction ? PciConfig.HeaderTypeMultiFunction : 0));
        }
    }

    uint ReadConfigLocked(int offset, int size)
    {
        lock (_configLock)
        {
            return ReadRaw(offset, size);
        }
    }

    uint ReadRaw(int offset, int size)
    {
        uint v = 0;
        for (int i = size - 1; i >= 0; i--)
        {
            v = (v << 8) | _config[offset + i];
        }
        return v;
    }

    void WriteRaw(int offset, int size, uint value)
    {
        for (int i = 0; i < size; i++)
        {
            _config[offset + i] = (byte)(value >> (8 * i));
        }
    }

    static bool IsValidConfigAccess(int offset, int size) =>
        size is 1 or 2 or 4 && offset >= 0 && offset + size <= PciConfig.ExtendedSize;

    static bool Overlaps(int offset, int size, int start, int length) => offset < start + length && start < offset + size;

    internal static uint AllOnes(int size) => size >= 4 ? uint.MaxValue : (1u << (size * 8)) - 1;

    void EnsureNotAttached()
    {
        if (_bus is not null)
        {
            ThrowHelper.InvalidOperation($"{Name}: the configuration layout is fixed once the function is on a bus");
        }
    }

    // ---- bus attachment ----

    internal void Attach(PciBus bus, byte busNumber, byte devfn, IMsiSink? msiSink, IDmaSpace dma, IAtsDmaSpaceProvider? ats, IIrqLine? intx)
    {
        if (_bus is not null)
        {
            ThrowHelper.InvalidOperation($"{Name} is already at {Location}");
        }
        RequesterId = (ushort)(busNumber << 8 | devfn);
        Location = $"{busNumber:x2}:{devfn >> 3:x2}.{devfn & 7}";
        _msiSink = msiSink;
        _dma = new BusMasterGatedDmaSpace(this, WrapForAts(dma, ats, RequesterId));
        _intxLine = intx;
        foreach (var bar in _bars)
        {
            if (bar.Kind is PciBarKind.Io)
            {
                bar.Ports = new BarPorts(this, bar.Index, $"{Location} {Name} BAR{bar.Index}");
            }
            else if (bar.Kind is PciBarKind.Memory32 or PciBarKind.Memory64)
            {
                bar.Mmio = new BarMmio(this, bar.Index, $"{Location} {Name} BAR{bar.Index}");
            }
        }
        _bus = bus;
        Log = bus.Log;
    }

    internal void NoteDmaRefused(ulong address)
    {
        DmaRefused.Increment();
        if (DmaRefused.Value == 1)
        {
            Log.Once($"pci.{Location}.dma_refused", "pci", $"{Location} {Name}: DMA at 0x{address:x} refused: bus mastering is disabled");
        }
    }
}
