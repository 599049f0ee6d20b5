using System.Buffers.Binary;
using System.Text;
using SharpVisor.Devices.Iommu;

namespace SharpVisor.Devices.Tests.Iommu;

public class DmarTableTests
{
    [Fact]
    public void TableHasValidChecksumAndTheFieldsLinuxParses()
    {
        var options = new VtdOptions { HostAddressWidth = 46 };
        byte[] t = DmarTable.Build(options, ioApicId: 0, ioApicSourceId: 0xF0F8, DmarTable.Flags.InterruptRemapping);
        Assert.Equal("DMAR", Encoding.ASCII.GetString(t, 0, 4));
        Assert.Equal(t.Length, (int)BinaryPrimitives.ReadUInt32LittleEndian(t.AsSpan(4)));
        Assert.Equal(0, t.Aggregate(0, (s, b) => (s + b) & 0xFF));
        Assert.Equal(45, t[36]);                                     // HAW - 1
        Assert.Equal(1, t[37]);                                      // INTR_REMAP
        // DRHD at 48: type 0, INCLUDE_PCI_ALL, register base.
        Assert.Equal(0, BinaryPrimitives.ReadUInt16LittleEndian(t.AsSpan(48)));
        Assert.Equal(t.Length - 48, BinaryPrimitives.ReadUInt16LittleEndian(t.AsSpan(50)));
        Assert.Equal(1, t[52]);
        Assert.Equal(0xFED9_0000UL, BinaryPrimitives.ReadUInt64LittleEndian(t.AsSpan(56)));
        // IOAPIC scope: type 3, length 8, enumeration id, bus F0, device 1F, function 0.
        Assert.Equal(new byte[] { 3, 8, 0, 0, 0, 0xF0, 0x1F, 0 }, t[64..72]);
    }
}
