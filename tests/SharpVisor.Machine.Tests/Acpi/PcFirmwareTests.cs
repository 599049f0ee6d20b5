using System.Buffers.Binary;
using System.Text;
using SharpVisor.Core;
using SharpVisor.Machine.Acpi;
using SharpVisor.Machine.Boot;
using static SharpVisor.Machine.Tests.Boot.SyntheticImages;

namespace SharpVisor.Machine.Tests.Acpi;

public sealed class PcFirmwareTests
{
    [Fact]
    public void KernelFindsTheRsdpThroughBootParamsInsideAnE820AcpiRange()
    {
        using var memory = new GuestMemory(128UL << 20);
        var firmware = PcFirmware.Install(memory, AcpiMachineDescription.ForMachine(memory, 2));
        var boot = LinuxLoader.Load(memory, new LinuxBootRequest(BzImage(Gzip(Elf64())), new byte[1 << 20], "", firmware.E820, firmware.Acpi.RsdpAddress));

        ulong rsdp = memory.ReadU64(boot.Entry.Rsi + 0x70); // boot_params.acpi_rsdp_addr
        var bytes = new byte[36];
        Assert.True(memory.TryRead(rsdp, bytes));
        Assert.Equal("RSD PTR ", Encoding.ASCII.GetString(bytes, 0, 8));
        Assert.Equal(0, AcpiTables.Sum(bytes));

        // The boot_params E820 table marks the RSDP's range as ACPI, and the initrd is outside it.
        var zp = new byte[4096];
        Assert.True(memory.TryRead(boot.Entry.Rsi, zp));
        bool found = false;
        for (int i = 0; i < zp[0x1E8]; i++)
        {
            var e = zp.AsSpan(0x2D0 + 20 * i);
            ulong address = BinaryPrimitives.ReadUInt64LittleEndian(e), length = BinaryPrimitives.ReadUInt64LittleEndian(e[8..]);
            uint type = BinaryPrimitives.ReadUInt32LittleEndian(e[16..]);
            if (rsdp >= address && rsdp + 36 <= address + length)
            {
                Assert.Equal((uint)E820Type.Acpi, type);
                found = true;
            }
            if (type == (uint)E820Type.Acpi)
            {
                Assert.True(boot.InitrdAddress + boot.InitrdSize <= address || boot.InitrdAddress >= address + length);
            }
        }
        Assert.True(found);
        Assert.Contains(firmware.E820.Entries, e => e.Type == E820Type.Reserved && e.Address == 0xB000_0000 && e.Length == 0x1000_0000);
    }
}
