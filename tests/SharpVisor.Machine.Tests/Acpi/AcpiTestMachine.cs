using SharpVisor.Core;
using SharpVisor.Machine.Acpi;
using SharpVisor.Machine.Boot;

namespace SharpVisor.Machine.Tests.Acpi;

/// <summary>A 512 MiB, 4-CPU machine's tables, as the tests inspect them.</summary>
internal static class AcpiTestMachine
{
    public static (GuestMemory Memory, AcpiMachineDescription Description, AcpiTableSet Tables) Build(int cpus = 4, ulong ram = 512UL << 20, IReadOnlyList<byte[]>? extra = null)
    {
        var memory = new GuestMemory(ram);
        var description = AcpiMachineDescription.ForMachine(memory, cpus) with { ExtraTables = extra ?? [] };
        var tables = AcpiTables.Build(description, AcpiRegion.AtTopOfLowRam(memory));
        tables.WriteTo(memory);
        return (memory, description, tables);
    }
}
