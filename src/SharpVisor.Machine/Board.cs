using SharpVisor.Core;
using SharpVisor.Cpu.X86;
using SharpVisor.Cpu.X86.Semantics;
using SharpVisor.Devices.Interrupts;
using SharpVisor.Devices.Iommu;
using SharpVisor.Devices.Legacy;
using SharpVisor.Devices.Net;
using SharpVisor.Devices.Pci;
using SharpVisor.Devices.Storage;
using SharpVisor.Devices.Virtio;
using SharpVisor.Machine.Acpi;
using SharpVisor.Machine.Boot;

namespace SharpVisor.Machine;

/// <summary>
/// The q35-like board: which device sits where. Addresses follow QEMU's q35 so that guests and
/// people used to it find things where they expect: IOAPIC 0xFEC00000, HPET 0xFED00000,
/// VT-d 0xFED90000, local APICs 0xFEE00000, ECAM 0xB0000000 (256 buses).
/// </summary>
public sealed partial class VirtualMachine
{
    public const ulong IoApicBase = 0xFEC0_0000;
    public const ulong EcamBase = 0xB000_0000;
    public const int EcamBuses = 256;
    /// <summary>Source ID of the IOAPIC's interrupt messages (a pseudo bus:devfn, as QEMU's q35 uses); the DMAR scope names it.</summary>
    public const ushort IoApicSourceId = 0xFF00;
    public const byte IoApicId = 0;

    public ApicBus ApicBus { get; private set; } = null!;
    public LocalApic[] LocalApics { get; private set; } = [];
    public IoApic IoApic { get; private set; } = null!;
    public PciHostBridge Pci { get; private set; } = null!;
    public IntelIommu? Iommu { get; private set; }
    public EduDevice Edu { get; private set; } = null!;
    public Pic8259Pair Pic { get; private set; } = null!;
    public Uart16550 Com1 { get; private set; } = null!;
    /// <summary>The virtio console the terminal is connected to with --console virtio; null otherwise.</summary>
    public VirtioConsole? VirtioConsole { get; private set; }
    public Pit8254 Pit { get; private set; } = null!;
    public Rtc Rtc { get; private set; } = null!;
    public Hpet Hpet { get; private set; } = null!;
    public AcpiPm AcpiPm { get; private set; } = null!;
    public I8042 I8042 { get; private set; } = null!;
    public PcFirmware Firmware { get; private set; } = null!;

    public const ushort AcpiPmBase = 0x600;
    public const ulong HpetBase = 0xFED0_0000;

    void BuildBoard()
    {
        // The 8259 pair reaches the boot CPU through LINT0 (virtual-wire mode) until the kernel moves to the IOAPIC.
        Pic = new Pic8259Pair(asserted => LocalApics[0].Lint0.SetLevel(asserted), Log);
        Ports.Register(0x20, 2, Pic.MasterPort);
        Ports.Register(0xA0, 2, Pic.SlavePort);
        Ports.Register(0x4D0, 2, Pic.ElcrPort);

        // Interrupt fabric: LAPICs on one bus; MSIs (devices and IOAPIC) through the remapper when VT-d is on.
        ApicBus = new ApicBus();
        LocalApics = new LocalApic[Cpus.Length];
        for (int i = 0; i < Cpus.Length; i++)
        {
            var apic = new LocalApic((uint)i, ApicBus, Cpus[i], Timers, Cpus[i].Tsc, i == 0 ? Pic : null, log: Log);
            LocalApics[i] = apic;
            ApicBus.Attach(apic);
            Cpus[i].Apic = new VcpuApicPort(apic);
            if (i > 0)
            {
                Cpus[i].EnterWaitForSipi(); // application processors wait for INIT-SIPI-SIPI
            }
        }
        var directMsi = new CompatibilityMsiSink(ApicBus, Log);
        IMsiSink msi = directMsi;
        IDmaSpaceProvider dma = new IdentityDmaSpaceProvider(Ram);
        if (_config.Iommu)
        {
            var options = new VtdOptions();
            options.Validate();
            Iommu = new IntelIommu(options, Ram, directMsi, ApicBus, Counters, timers: Timers, log: Log);
            Memory.AddMmio(options.BaseAddress, options.RegionSize, Iommu);
            msi = Iommu.InterruptRemapper;
            dma = options.DeviceTlb ? new AtsIommuDmaSpaceProvider(Iommu) : new IommuDmaSpaceProvider(Iommu);
        }

        IoApic = new IoApic(msi, IoApicSourceId, IoApicId, Log);
        Memory.AddMmio(IoApicBase, 0x1000, IoApic);
        foreach (var apic in LocalApics)
        {
            apic.EoiListener = IoApic;
        }

        BuildLegacyDevices();

        Pci = new PciHostBridge(Memory, Ports, msi, dma, EcamBase, EcamBuses, log: Log);
        var route = PciIntxRouting.CreateRouter(gsi => IoApic.GetPin(gsi));
        Edu = new EduDevice();
        AddAtsIfSupported(Edu);
        Pci.Bus.Add(Edu, 3, 0, route(3, Edu.InterruptPin));
        int slot = MachineConfig.FirstDeviceSlot;
        foreach (var d in _config.Disks)
        {
            var blk = new VirtioBlock(DiskImage.Open(d.Path, d.Format, d.ReadOnly, d.Locking, Log), serial: $"disk{slot - MachineConfig.FirstDeviceSlot}");
            _disposables.Add(blk);
            AddPci(blk, slot++, route);
        }
        if (_config.Rng)
        {
            // Host randomness would make a deterministic run differ from the next one.
            IEntropySource source = _config.Clock == ClockMode.Deterministic
                ? new SeededEntropySource(_config.RngSeed ?? MachineConfig.DefaultRngSeed)
                : new HostEntropySource();
            AddPci(new VirtioEntropy(source), slot++, route);
        }
        if (_config.Console == ConsoleDevice.Virtio)
        {
            VirtioConsole = new VirtioConsole(data =>
            {
                foreach (byte b in data)
                {
                    ConsoleOutput(b);
                }
            });
            AddPci(VirtioConsole, slot++, route);
        }
        if (_config.Net is { } net)
        {
            var nic = new VirtioNet(CreateNetBackend(net), net.Mac);
            _disposables.Add(nic);
            _deviceThreads.Add(nic); // its backend's receive thread
            AddPci(nic, slot++, route);
        }
        // Typed input comes on the terminal's thread: held while the machine is paused.
        _consoleInput = new HeldInput(DeliverConsoleInput, ConsoleInputHeldBytes, "console");
        _deviceThreads.Add(_consoleInput);
        PciFirmware.AssignResources(Pci.Bus, interruptLine: PciIntxRouting.InterruptLine);
        Pci.RegisterCounters(Counters);
        AddCounters([Ports.Counters, Memory.Counters, ApicBus.Counters, directMsi.Counters, IoApic.Counters, .. LocalApics.Select(a => a.Counters), _consoleInput.Counters]);
    }

    /// <summary>
    /// Registers the counters of the components this board builds, so --stats shows them. Every
    /// component that keeps counters is listed here or in <see cref="PciHostBridge.RegisterCounters"/>;
    /// VmContextTests walks a built machine and fails on any counter that is not registered.
    /// </summary>
    void AddCounters(IEnumerable<IEnumerable<Counter>> perComponent)
    {
        foreach (var c in perComponent.SelectMany(c => c))
        {
            Counters.Add(c);
        }
    }

    readonly List<IDisposable> _disposables = [];

    INetBackend CreateNetBackend(NetSpec net) => net.Backend switch
    {
        NetBackendKind.StreamListen => StreamSocketNetBackend.Listen(net.EndPoint!, Log),
        NetBackendKind.StreamConnect => StreamSocketNetBackend.Connect(net.EndPoint!, Log),
        _ => TapNetBackend.Open(net.InterfaceName!, Log),
    };

    /// <summary>Puts a virtio device on its PCI transport before firmware assignment; its counters register with the bus's (Pci.RegisterCounters).</summary>
    void AddPci(VirtioDevice device, int slot, Func<int, int, IIrqLine?> route)
    {
        var transport = new VirtioPciTransport(device);
        AddAtsIfSupported(transport);
        Pci.Bus.Add(transport, slot, 0, route(slot, transport.InterruptPin));
    }

    /// <summary>
    /// With a VT-d unit that supports device-TLBs (ECAP.DT), every PCI device becomes a PCI Express
    /// Root Complex Integrated Endpoint with the ATS capability, so Linux's intel-iommu enables
    /// device-IOTLBs on it. Without one the devices keep their conventional configuration space:
    /// nothing changes for a guest with the IOMMU off.
    /// </summary>
    void AddAtsIfSupported(PciFunction device)
    {
        if (Iommu is { Options.DeviceTlb: true })
        {
            device.AddAtsCapability();
        }
    }

    /// <summary>ISA interrupt n: PIC input n and IOAPIC pin n, except IRQ 0 which is IOAPIC pin 2 (MADT override).</summary>
    IIrqLine IsaIrq(int irq) => new IrqFanOut(Pic.Input(irq), IoApic.GetPin(irq == 0 ? 2 : irq));

    void BuildLegacyDevices()
    {
        // With --console virtio the terminal shows the virtio console only; COM1 still works for the guest.
        Com1 = new Uart16550(IsaIrq(4), _config.Console == ConsoleDevice.Serial ? ConsoleOutput : _ => { }, "com1");
        Ports.Register(0x3F8, 8, Com1);
        Pit = new Pit8254(Timers, IsaIrq(0));
        Ports.Register(0x40, 4, Pit);
        Ports.Register(0x61, 1, Pit.Port61);
        DateTime? start = _config.Clock == ClockMode.Deterministic ? new DateTime(2026, 1, 1, 0, 0, 0, DateTimeKind.Utc) : null;
        Rtc = new Rtc(Timers, IsaIrq(8), start, Log);
        Rtc.SetMemorySize(Ram.LowRamEnd, Ram.HighRamSize);
        Ports.Register(0x70, 2, Rtc);
        I8042 = new I8042(IsaIrq(1), IsaIrq(12), () => RequestExit(new VmExit(VmExitKind.Reset, "the guest reset the machine (i8042)")), Log);
        Ports.Register(0x60, 1, I8042.DataPort);
        Ports.Register(0x64, 1, I8042.CommandPort);
        // The DSDT's \_S5 package says sleep type 0 (as QEMU's q35), so S5 is type 0 here too.
        AcpiPm = new AcpiPm(Timers, IoApic.GetPin(9), () => RequestExit(new VmExit(VmExitKind.PowerOff, "the guest powered off")), s5SleepType: 0, log: Log);
        Ports.Register(AcpiPmBase, AcpiPm.BlockSize, AcpiPm);
        var resetControl = new ResetControl(() => RequestExit(new VmExit(VmExitKind.Reset, "the guest reset the machine")));
        Ports.Register(0xCF9, 1, resetControl);
        Hpet = new Hpet(Timers, IsaIrq(0), IsaIrq(8), gsi => IoApic.GetPin(gsi), legacy =>
        {
            // Legacy replacement routing takes IRQ 0 and IRQ 8 away from the PIT and RTC (HPET spec 2.3.9.2.2).
            Pit.Irq0Connected = !legacy;
            Rtc.IrqConnected = !legacy;
        }, log: Log);
        Memory.AddMmio(HpetBase, Hpet.RegionSize, Hpet);
        var debugExit = new DebugExit(status => RequestExit(new VmExit(VmExitKind.PowerOff, $"debug-exit port written (status {status})", status)));
        Ports.Register(0xF4, 1, debugExit);
        AddCounters([Com1.Counters, Pit.Counters, Rtc.Counters, Hpet.Counters, AcpiPm.Counters, Pic.Counters, I8042.Counters, resetControl.Counters, debugExit.Counters]);
    }

    void LoadGuest()
    {
        var acpi = AcpiMachineDescription.ForMachine(Ram, Cpus.Length);
        if (Iommu is { } iommu)
        {
            acpi = acpi with { ExtraTables = [DmarTable.Build(iommu.Options, IoApicId, IoApicSourceId, DmarTable.Flags.InterruptRemapping, includeAtsr: iommu.Options.DeviceTlb)] };
        }
        Firmware = PcFirmware.Install(Ram, acpi);
        byte[] kernel = LinuxLoader.ReadFile(_config.Kernel!, "kernel");
        byte[]? initrd = _config.Initrd is { } path ? LinuxLoader.ReadFile(path, "initrd") : null;
        BootEntry entry;
        if (!BzImage.LooksLikeBzImage(kernel) && MultibootLoader.FindHeader(kernel) is not null)
        {
            // A Multiboot v1 kernel (test kernels, hypervisors): the initrd, if any, is its one module.
            var modules = initrd is null ? [] : new[] { new MultibootModule(initrd, Path.GetFileName(_config.Initrd!)) };
            entry = MultibootLoader.Load(Ram, kernel, _config.KernelCommandLine, modules, Firmware.E820, log: Log).Entry;
        }
        else
        {
            entry = LinuxLoader.Load(Ram, new LinuxBootRequest(kernel, initrd, _config.KernelCommandLine, Firmware.E820, Firmware.Acpi.RsdpAddress)).Entry;
        }
        foreach (var cpu in Cpus)
        {
            MsrAccess.ApplyFirmwareDefaults(cpu); // MTRRs on, write-back default, as a BIOS leaves them
        }
        ApplyBootEntry(Cpus[0], entry);
    }

    /// <summary>Puts the boot CPU in the state the loader describes (registers, control registers, hidden segment state).</summary>
    static void ApplyBootEntry(Cpu.X86.Cpu cpu, BootEntry e)
    {
        cpu.Cr0Value = e.Cr0;
        cpu.Cr3 = e.Cr3;
        cpu.Cr4Value = e.Cr4;
        cpu.EferValue = e.Efer;
        cpu.GdtBase = e.GdtBase;
        cpu.GdtLimit = e.GdtLimit;
        cpu.IdtBase = 0;
        cpu.IdtLimit = 0;
        static SegmentRegister Seg(BootSegment s) => new() { Selector = s.Selector, Base = s.Base, Limit = s.Limit, Attributes = s.Attributes };
        cpu.Segs[(int)Cpu.X86.Seg.CS] = Seg(e.Cs);
        foreach (var s in new[] { Cpu.X86.Seg.DS, Cpu.X86.Seg.ES, Cpu.X86.Seg.SS, Cpu.X86.Seg.FS, Cpu.X86.Seg.GS })
        {
            cpu.Segs[(int)s] = Seg(e.Data);
        }
        cpu.Tr = Seg(e.Tr);
        cpu.SetFlags(BootEntry.InitialRflags);
        cpu.Rip = e.Rip;
        cpu.Rsi = e.Rsi;
        cpu.Rax = e.Rax;
        cpu.Rbx = e.Rbx;
        cpu.FlushTlb(includeGlobal: true);
        cpu.UpdateMode();
    }

    /// <summary>Typed input held while the machine is paused: what a user types in a few seconds.</summary>
    public const int ConsoleInputHeldBytes = 64 * 1024;

    HeldInput _consoleInput = null!;

    /// <summary>A byte typed on the terminal, for the console device it is connected to (--console); held while the machine is paused.</summary>
    public void SendConsoleInput(byte b) => _consoleInput.Send([b]);

    void DeliverConsoleInput(ReadOnlySpan<byte> data)
    {
        if (VirtioConsole is { } console)
        {
            console.Input(data);
        }
        else
        {
            Com1.Receive(data);
        }
    }
}

/// <summary>Presents a <see cref="LocalApic"/> to its vCPU (MMIO page while in xAPIC mode, MSRs, interrupts).</summary>
internal sealed class VcpuApicPort(LocalApic apic) : IVcpuApic
{
    public ulong? MmioBase => apic.IsEnabled && !apic.IsX2ApicMode ? LocalApic.DefaultBaseAddress : null;
    public bool HasPendingInterrupt => apic.HasPendingInterrupt;
    public byte AcknowledgeInterrupt() => apic.AcknowledgeInterrupt();
    public ulong MmioRead(ulong offset, int size) => apic.MmioRead(offset, size);
    public void MmioWrite(ulong offset, int size, ulong value) => apic.MmioWrite(offset, size, value);
    public bool OwnsMsr(uint msr) => LocalApic.IsApicMsr(msr);
    public bool TryReadMsr(uint msr, out ulong value) => apic.TryReadMsr(msr, out value);
    public bool TryWriteMsr(uint msr, ulong value) => apic.TryWriteMsr(msr, value);
}

/// <summary>DMA for each PCI requester through the VT-d unit's translation.</summary>
internal sealed class IommuDmaSpaceProvider(IntelIommu iommu) : IDmaSpaceProvider
{
    public IDmaSpace ForRequester(ushort requesterId) => iommu.DmaSpaceFor(requesterId);
}

/// <summary>DMA through the VT-d unit, and for functions with ATS a device-TLB of their own (VT-d 4.1).</summary>
internal sealed class AtsIommuDmaSpaceProvider(IntelIommu iommu) : IDmaSpaceProvider, IAtsDmaSpaceProvider
{
    public IDmaSpace ForRequester(ushort requesterId) => iommu.DmaSpaceFor(requesterId);

    public IAtsPort CreateAtsPort(ushort requesterId, string name) =>
        new AtsDmaSpace(iommu, requesterId, new DeviceIotlb(name));
}
