using SharpVisor.Core;
using SharpVisor.Machine.Boot;

namespace SharpVisor.Machine.Acpi;

/// <summary>
/// What firmware would have left in RAM before a kernel loader runs: the ACPI tables (written to
/// the top of low RAM, RSDP copy at 0xE0000) and the matching E820 map. Typical wiring:
/// <code>
/// var firmware = PcFirmware.Install(memory, AcpiMachineDescription.ForMachine(memory, cpus));
/// var boot = LinuxLoader.Load(memory, new LinuxBootRequest(kernel, initrd, cmdline, firmware.E820, firmware.Acpi.RsdpAddress));
/// // apply boot.Entry to the bootstrap CPU
/// </code>
/// </summary>
public sealed record PcFirmware(E820Map E820, AcpiTableSet Acpi)
{
    public static PcFirmware Install(GuestMemory memory, AcpiMachineDescription description)
    {
        var region = AcpiRegion.AtTopOfLowRam(memory);
        var tables = AcpiTables.Build(description, region);
        tables.WriteTo(memory);
        var e820 = E820Map.ForMachine(memory, region, description.EcamBase, description.EcamSize);
        return new PcFirmware(e820, tables);
    }
}
