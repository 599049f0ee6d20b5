using SharpVisor.Core;
using SharpVisor.Cpu.X86;
using SharpVisor.Devices.Interrupts;
using SharpVisor.Devices.Iommu;
using SharpVisor.Devices.Pci;

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

    void BuildBoard()
    {
        // Interrupt fabric: LAPICs on one bus; MSIs (devices and IOAPIC) through the remapper when VT-d is on.
        ApicBus = new ApicBus();
        LocalApics = new LocalApic[Cpus.Length];
        for (int i = 0; i < Cpus.Length; i++)
        {
            var apic = new LocalApic((uint)i, ApicBus, Cpus[i], Timers, Cpus[i].Tsc);
            LocalApics[i] = apic;
            ApicBus.Attach(apic);
            Cpus[i].Apic = new VcpuApicPort(apic);
            if (i > 0)
            {
                Cpus[i].EnterWaitForSipi(); // application processors wait for INIT-SIPI-SIPI
            }
        }
        IMsiSink directMsi = new CompatibilityMsiSink(ApicBus);
        IMsiSink msi = directMsi;
        IDmaSpaceProvider dma = new IdentityDmaSpaceProvider(Ram);
        if (_config.Iommu)
        {
            var options = new VtdOptions();
            options.Validate();
            Iommu = new IntelIommu(options, Ram, directMsi, ApicBus, Counters);
            Memory.AddMmio(options.BaseAddress, options.RegionSize, Iommu);
            msi = Iommu.InterruptRemapper;
            dma = new IommuDmaSpaceProvider(Iommu);
        }

        IoApic = new IoApic(msi, IoApicSourceId, IoApicId);
        Memory.AddMmio(IoApicBase, 0x1000, IoApic);
        foreach (var apic in LocalApics)
        {
            apic.EoiListener = IoApic;
        }

        Pci = new PciHostBridge(Memory, Ports, msi, dma, EcamBase, EcamBuses);
        var route = PciIntxRouting.CreateRouter(gsi => IoApic.GetPin(gsi));
        Edu = new EduDevice();
        Pci.Bus.Add(Edu, 3, 0, route(3, Edu.InterruptPin));
        PciFirmware.AssignResources(Pci.Bus, interruptLine: PciIntxRouting.InterruptLine);
        Pci.RegisterCounters(Counters);
    }

    void LoadGuest()
    {
        throw new UserErrorException("booting a kernel is not possible yet: the kernel loaders are being integrated (see README: status)");
    }

    /// <summary>A byte typed on the console, for the guest's serial port.</summary>
    public void SendConsoleInput(byte b)
    {
        _ = b; // wired to COM1 when the UART lands
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
