using SharpVisor.Core;

namespace SharpVisor.Devices.Pci;

/// <summary>
/// The q35-like PCI Express root complex: bus 0, the host bridge function at 00:00.0 (Intel
/// 82G33/Q35 MCH, 8086:29C0), the ICH9 LPC/ISA bridge at 00:1f.0 (8086:2918), the ECAM window
/// (PCIe Base 4.0, 7.2.2) and configuration mechanism #1 at 0xCF8/0xCFC (PCI 3.0, 3.2.2.3.2).
/// Construction registers the ECAM window and the ports.
/// </summary>
public sealed class PciHostBridge
{
    /// <summary>Where QEMU's q35 places MMCONFIG (PCIEXBAR) by default.</summary>
    public const ulong DefaultEcamBase = 0xB000_0000;
    public const ushort ConfigAddressPort = 0xCF8;
    public const ushort ConfigDataPort = 0xCFC;

    /// <param name="busCount">Buses the ECAM window covers (1 MiB each): a power of two, 1 to 256.</param>
    /// <param name="pmBase">ACPI PM I/O base reported by the LPC bridge (see <see cref="Ich9LpcBridge"/>).</param>
    public PciHostBridge(PhysicalMemoryMap memory, PortBus ports, IMsiSink? msiSink, IDmaSpaceProvider dma,
        ulong ecamBase = DefaultEcamBase, int busCount = 256, ushort pmBase = 0, Log? log = null)
    {
        if (busCount is < 1 or > 256 || !int.IsPow2(busCount))
        {
            ThrowHelper.ArgumentOutOfRange(nameof(busCount), "the ECAM window covers a power of two of buses, 1 to 256");
        }
        ulong size = (ulong)busCount << 20;
        if (ecamBase % size != 0)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(ecamBase), "the ECAM window must be aligned to its size");
        }
        EcamBase = ecamBase;
        EcamSize = size;
        EndBus = (byte)(busCount - 1);
        Bus = new PciBus(memory, ports, msiSink, dma, log: log);
        HostBridge = new Q35HostBridgeFunction(ecamBase, busCount);
        Lpc = new Ich9LpcBridge(pmBase);
        Bus.Add(HostBridge, 0, 0);
        Bus.Add(Lpc, 0x1F, 0);
        Ecam = new PciEcamWindow(Bus, busCount);
        LegacyConfig = new PciConfigMechanism1(Bus);
        memory.AddMmio(EcamBase, EcamSize, Ecam);
        // Only the dword at 0xCF8 is CONFIG_ADDRESS; 0xCF9 stays free for the ICH9 Reset Control
        // register, as on real chipsets (ICH9 datasheet 13.7.5, RST_CNT).
        ports.Register(ConfigAddressPort, 1, LegacyConfig.AddressPort);
        ports.Register(ConfigDataPort, 4, LegacyConfig.DataPort);
    }

    public PciBus Bus { get; }
    public Q35HostBridgeFunction HostBridge { get; }
    public Ich9LpcBridge Lpc { get; }
    public PciEcamWindow Ecam { get; }
    public PciConfigMechanism1 LegacyConfig { get; }

    // What the ACPI MCFG table describes (PCI Firmware Specification 3.2, 4.1.2).
    public ulong EcamBase { get; }
    public ulong EcamSize { get; }
    public ushort Segment => 0;
    public byte StartBus => 0;
    public byte EndBus { get; }

    /// <summary>Adds the counters of the root complex and of every function now on the bus.</summary>
    public void RegisterCounters(CounterRegistry registry)
    {
        registry.Add(Bus.BarConflicts);
        registry.Add(Ecam.BadAccesses);
        registry.Add(LegacyConfig.BadAccesses);
        foreach (var f in Bus.Functions)
        {
            foreach (var c in f.Counters)
            {
                registry.Add(c, scope: f.Location); // two devices of one type have the same counter names
            }
        }
    }
}

/// <summary>
/// How INTx pins of bus 0 reach the IOAPIC: the usual swizzle of INTA-INTD over four GSIs, so
/// neighbouring slots spread over different inputs. The ACPI _PRT must describe the same routing
/// (PCI interrupts are level-triggered, active low), and functions sharing a GSI share it through a
/// <see cref="WiredOrIrqLine"/>.
/// </summary>
public static class PciIntxRouting
{
    public const int FirstGsi = 16;
    public const int GsiCount = 4;

    /// <param name="device">Device (slot) number, 0-31.</param>
    /// <param name="pin">Interrupt Pin register value: 1 = INTA# .. 4 = INTD#.</param>
    public static int Gsi(int device, int pin)
    {
        if ((uint)device >= 32 || pin is < 1 or > 4)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(pin), $"device {device} pin {pin} has no INTx route");
        }
        return FirstGsi + (device + pin - 1) % GsiCount;
    }

    /// <summary>
    /// Shared INTx inputs over interrupt-controller lines: one wired-OR per GSI, created on first use.
    /// </summary>
    /// <param name="gsiLine">The interrupt controller input for a GSI (16-19).</param>
    /// <returns>A function taking (device, pin) to a new input of that GSI's wired-OR, or null for pin 0;
    /// pass its result to <see cref="PciBus.Add"/>.</returns>
    public static Func<int, int, IIrqLine?> CreateRouter(Func<int, IIrqLine> gsiLine)
    {
        var shared = new WiredOrIrqLine?[GsiCount];
        return (device, pin) =>
        {
            if (pin == 0)
            {
                return null;
            }
            int gsi = Gsi(device, pin);
            return (shared[gsi - FirstGsi] ??= new WiredOrIrqLine(gsiLine(gsi))).CreateInput();
        };
    }

    /// <summary>The GSI of a function on bus 0, for the Interrupt Line register (0xFF: no pin).</summary>
    public static byte InterruptLine(PciFunction function) =>
        function.InterruptPin == 0 ? (byte)0xFF : (byte)Gsi((function.RequesterId >> 3) & 31, function.InterruptPin);
}

/// <summary>
/// Enhanced Configuration Access Mechanism (PCIe Base 4.0, 7.2.2): 4 KiB of configuration space per
/// function at base + (bus &lt;&lt; 20 | device &lt;&lt; 15 | function &lt;&lt; 12 | register).
/// </summary>
public sealed class PciEcamWindow(PciBus bus, int busCount) : IMmioDevice
{
    public readonly Counter BadAccesses = new("pci.ecam.bad_accesses");

    public string Name => "pci-ecam";

    public ulong MmioRead(ulong offset, int size)
    {
        int busNumber = (int)(offset >> 20);
        int devfn = (int)(offset >> 12) & 0xFF;
        int register = (int)offset & 0xFFF;
        // 7.2.2: accesses are naturally aligned dwords or smaller; an 8-byte access is split in two.
        if ((register & (size - 1)) != 0 || busNumber >= busCount)
        {
            BadAccesses.Increment();
            return size == 8 ? ulong.MaxValue : PciFunction.AllOnes(size);
        }
        if (size == 8)
        {
            return bus.ConfigRead(busNumber, devfn, register, 4) | (ulong)bus.ConfigRead(busNumber, devfn, register + 4, 4) << 32;
        }
        return bus.ConfigRead(busNumber, devfn, register, size);
    }

    public void MmioWrite(ulong offset, int size, ulong value)
    {
        int busNumber = (int)(offset >> 20);
        int devfn = (int)(offset >> 12) & 0xFF;
        int register = (int)offset & 0xFFF;
        if ((register & (size - 1)) != 0 || busNumber >= busCount)
        {
            BadAccesses.Increment();
            return;
        }
        if (size == 8)
        {
            bus.ConfigWrite(busNumber, devfn, register, 4, (uint)value);
            bus.ConfigWrite(busNumber, devfn, register + 4, 4, (uint)(value >> 32));
            return;
        }
        bus.ConfigWrite(busNumber, devfn, register, size, (uint)value);
    }
}

/// <summary>
/// Configuration mechanism #1 (PCI 3.0, 3.2.2.3.2): CONFIG_ADDRESS at 0xCF8 (dword only: bit 31
/// enable, bus 23:16, device 15:11, function 10:8, register 7:2) and CONFIG_DATA at 0xCFC-0xCFF
/// (byte, word or dword; the low address bits pick the bytes). Reaches the first 256 bytes only.
/// </summary>
public sealed class PciConfigMechanism1
{
    readonly PciBus _bus;
    readonly Lock _gate = new();
    uint _address;

    public readonly Counter BadAccesses = new("pci.cf8.bad_accesses");

    public PciConfigMechanism1(PciBus bus)
    {
        _bus = bus;
        AddressPort = new AddressRegister(this);
        DataPort = new DataRegister(this);
    }

    /// <summary>Register at 0xCF8, one port wide (dword accesses start there).</summary>
    public IPortDevice AddressPort { get; }
    /// <summary>Register at 0xCFC, four ports wide.</summary>
    public IPortDevice DataPort { get; }

    uint Address
    {
        get { lock (_gate) { return _address; } }
    }

    uint ReadAddress(int size)
    {
        if (size != 4)
        {
            // Only dword accesses hit CONFIG_ADDRESS; narrower ones are ordinary I/O with nothing behind.
            BadAccesses.Increment();
            return PciFunction.AllOnes(size);
        }
        return Address;
    }

    void WriteAddress(int size, uint value)
    {
        if (size != 4)
        {
            BadAccesses.Increment();
            return;
        }
        lock (_gate)
        {
            // Bits 1:0 are read-only 0 and bits 30:24 reserved (read 0).
            _address = value & 0x80FF_FFFC;
        }
    }

    bool TryDecode(int dataOffset, int size, out int busNumber, out int devfn, out int register)
    {
        uint address = Address;
        busNumber = (int)(address >> 16) & 0xFF;
        devfn = (int)(address >> 8) & 0xFF;
        register = (int)(address & 0xFC) + dataOffset;
        if ((address & 0x8000_0000) == 0)
        {
            return false;
        }
        if (dataOffset + size > 4)
        {
            BadAccesses.Increment();
            return false;
        }
        return true;
    }

    uint ReadData(int offset, int size) =>
        TryDecode(offset, size, out int busNumber, out int devfn, out int register)
            ? _bus.ConfigRead(busNumber, devfn, register, size)
            : PciFunction.AllOnes(size);

    void WriteData(int offset, int size, uint value)
    {
        if (TryDecode(offset, size, out int busNumber, out int devfn, out int register))
        {
            _bus.ConfigWrite(busNumber, devfn, register, size, value);
        }
    }

    sealed class AddressRegister(PciConfigMechanism1 owner) : IPortDevice
    {
        public string Name => "pci-config-address";
        public uint PortRead(ushort offset, int size) => owner.ReadAddress(size);
        public void PortWrite(ushort offset, int size, uint value) => owner.WriteAddress(size, value);
    }

    sealed class DataRegister(PciConfigMechanism1 owner) : IPortDevice
    {
        public string Name => "pci-config-data";
        public uint PortRead(ushort offset, int size) => owner.ReadData(offset, size);
        public void PortWrite(ushort offset, int size, uint value) => owner.WriteData(offset, size, value);
    }
}

/// <summary>
/// Host bridge 00:00.0 as QEMU's q35 presents it: Intel 82G33/Q35 DRAM controller (8086:29C0),
/// class 0x060000. Only PCIEXBAR is modelled, read-only, reporting the fixed ECAM window.
/// </summary>
public sealed class Q35HostBridgeFunction : PciFunction
{
    /// <summary>PCIEXBAR, Intel 3 Series chipset datasheet 5.1.12 (offset 60h, 64 bits).</summary>
    public const int PciExBar = 0x60;

    public Q35HostBridgeFunction(ulong ecamBase, int busCount)
        : base("q35-host", 0x8086, 0x29C0, 0x06_00_00, 0x02, 0x1AF4, 0x1100)
    {
        // Bits 35:28 base, bits 2:1 length (00b 256 MiB, 01b 128 MiB, 10b 64 MiB), bit 0 enable.
        // The window is fixed by the VMM (firmware would program it; Linux reads ACPI MCFG), so the
        // register is read-only; a window size the register cannot express reads as disabled.
        uint length = busCount switch { 256 => 0, 128 => 1, 64 => 2, _ => 3 };
        if (length != 3)
        {
            ulong value = ecamBase | length << 1 | 1;
            InitConfig(PciExBar, 4, (uint)value);
            InitConfig(PciExBar + 4, 4, (uint)(value >> 32));
        }
    }
}

/// <summary>
/// ICH9 LPC interface bridge 00:1f.0 (8086:2918), class 0x060100 (PCI-to-ISA bridge), present so
/// the platform looks like q35. Its chipset registers (PMBASE, GPIO base, PIRQ routing, RCBA) read 0:
/// the ACPI tables describe the fixed resources and interrupt routing instead.
/// </summary>
public sealed class Ich9LpcBridge : PciFunction
{
    /// <summary>PMBASE, ICH9 datasheet 13.1.10 (offset 40h): ACPI I/O base, bit 0 reads 1 (I/O).</summary>
    public const int PmBase = 0x40;
    /// <summary>ACPI_CNTL, ICH9 datasheet 13.1.11 (offset 44h): bit 7 ACPI_EN, bits 2:0 SCI IRQ (000b = IRQ 9).</summary>
    public const int AcpiControl = 0x44;

    /// <param name="pmBase">Where the ACPI PM registers sit in I/O space, when the machine has them
    /// (reported read-only, with ACPI_EN and SCI on IRQ 9, as QEMU's q35 firmware leaves them);
    /// 0 reports the ACPI block as disabled.</param>
    public Ich9LpcBridge(ushort pmBase = 0)
        : base("ich9-lpc", 0x8086, 0x2918, 0x06_01_00, 0x02, 0x1AF4, 0x1100)
    {
        // Real ICH9 is multi-function (SATA at .2, SMBus at .3); the bus sets header type bit 7 if
        // other functions are added at 00:1f.
        if (pmBase != 0)
        {
            InitConfig(PmBase, 4, (uint)(pmBase & 0xFF80) | 1);
            InitConfig(AcpiControl, 1, 0x80);
        }
    }
}
