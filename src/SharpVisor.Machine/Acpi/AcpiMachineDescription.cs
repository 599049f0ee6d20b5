using SharpVisor.Core;
using SharpVisor.Machine.Boot;

namespace SharpVisor.Machine.Acpi;

/// <summary>
/// What the ACPI tables describe: a q35-like PC. Defaults are the q35/ICH9 values the rest of the
/// machine implements (QEMU's q35 uses the same addresses). The platform devices must match:
/// ICH9 PM block at <see cref="PmIoBase"/> (PM1a_EVT +0, PM1a_CNT +4, PM_TMR +8, GPE0 +0x20), with
/// PM1a_CNT.SCI_EN reading 1 (there is no SMI_CMD: ACPI 6.4 4.8.2.1 says the OS then assumes
/// ACPI mode is already on), reset register at I/O 0xCF9.
/// </summary>
public sealed record AcpiMachineDescription
{
    /// <summary>Number of CPUs (one MADT entry each).</summary>
    public required int CpuCount { get; init; }

    /// <summary>APIC IDs of the CPUs (default 0..CpuCount-1). IDs of 255 and above get x2APIC entries.</summary>
    public IReadOnlyList<uint>? ApicIds { get; init; }

    public uint LocalApicAddress { get; init; } = 0xFEE0_0000;
    public byte IoApicId { get; init; }
    public uint IoApicAddress { get; init; } = 0xFEC0_0000;
    public uint IoApicGsiBase { get; init; }

    /// <summary>HPET MMIO base, or null for a machine without HPET (no HPET table or device).</summary>
    public uint? HpetAddress { get; init; } = 0xFED0_0000;

    /// <summary>
    /// HPET Event Timer Block ID: a copy of the HPET's General Capabilities register bits 31:0
    /// (IA-PC HPET spec 1.0a 3.2.4 / 2.3.4): vendor 0x8086, legacy-replacement capable, 64-bit
    /// counter, 3 comparators (NUM_TIM_CAP = 2), revision 1.
    /// </summary>
    public uint HpetEventTimerBlockId { get; init; } = 0x8086_A201;

    /// <summary>ICH9 ACPI PM I/O base (PMBASE).</summary>
    public ushort PmIoBase { get; init; } = 0x600;

    /// <summary>True when the PM timer counts 32 bits (FADT TMR_VAL_EXT); ICH9's is 24 bits.</summary>
    public bool PmTimer32Bit { get; init; }

    public ushort ResetPort { get; init; } = 0xCF9;
    public byte ResetValue { get; init; } = 0x06; // ICH9 RST_CNT: SYS_RST | RST_CPU (hard reset)
    public byte SciIrq { get; init; } = 9;

    /// <summary>CMOS index of the century byte (FADT CENTURY); 0x32 on PC/AT-compatible RTCs.</summary>
    public byte RtcCenturyIndex { get; init; } = 0x32;

    public ulong EcamBase { get; init; } = 0xB000_0000;
    public byte EcamStartBus { get; init; }
    public byte EcamEndBus { get; init; } = 0xFF;
    public ulong EcamSize => (ulong)(EcamEndBus - EcamStartBus + 1) << 20;

    /// <summary>32-bit PCI MMIO window (inclusive bounds) the host bridge decodes.</summary>
    public required uint Pci32WindowBase { get; init; }
    public uint Pci32WindowLimit { get; init; } = 0xFEBF_FFFF;

    /// <summary>64-bit PCI MMIO window above RAM; size 0 = none.</summary>
    public required ulong Pci64WindowBase { get; init; }
    public ulong Pci64WindowSize { get; init; }

    /// <summary>COM1 (16550) I/O base and ISA IRQ, or null port for none.</summary>
    public ushort? Com1Port { get; init; } = 0x3F8;
    public byte Com1Irq { get; init; } = 4;

    /// <summary>Whether the MC146818 RTC at I/O 0x70 (IRQ 8) is described.</summary>
    public bool HasRtc { get; init; } = true;

    /// <summary>
    /// First GSI of the PCI INTx routing in _PRT, or null for no _PRT. Device d, pin p (INTA = 0)
    /// routes to GSI base + (d + p) % 4, level-triggered, active-low: the Devices side must raise
    /// the same GSIs.
    /// </summary>
    public uint? PciIntxGsiBase { get; init; } = 16;

    /// <summary>
    /// Extra complete tables (header included), e.g. the DMAR from the VT-d code. Listed in the
    /// XSDT; their checksum is recomputed, so it may be left 0.
    /// </summary>
    public IReadOnlyList<byte[]> ExtraTables { get; init; } = [];

    /// <summary>
    /// The usual description for a machine with <paramref name="cpuCount"/> CPUs and the given RAM:
    /// the 32-bit window from the first 256 MiB boundary above both low RAM and the ECAM window to
    /// 0xFEBFFFFF, and a 64-bit window of <paramref name="pci64WindowSize"/> bytes at the first
    /// 1 GiB boundary above RAM (keep it under the CPU's MAXPHYADDR).
    /// </summary>
    public static AcpiMachineDescription ForMachine(GuestMemory memory, int cpuCount, ulong pci64WindowSize = 32UL << 30)
    {
        const ulong ecamBase = 0xB000_0000, ecamSize = 0x1000_0000;
        ulong lowTop = BootLayout.AlignUp(memory.LowRamEnd, 0x1000_0000);
        if (lowTop > ecamBase)
        {
            throw new UserErrorException($"guest low RAM ends at 0x{memory.LowRamEnd:x}, inside the PCIe ECAM window at 0x{ecamBase:x}");
        }
        ulong pci32Base = Math.Max(lowTop, ecamBase + ecamSize);
        ulong ramTop = Math.Max(GuestMemory.FourGiB, memory.HighRamEnd);
        return new AcpiMachineDescription
        {
            CpuCount = cpuCount,
            EcamBase = ecamBase,
            Pci32WindowBase = (uint)pci32Base,
            Pci64WindowBase = BootLayout.AlignUp(ramTop, 1UL << 30),
            Pci64WindowSize = pci64WindowSize,
        };
    }
}
