using SharpVisor.Machine.Acpi;

namespace SharpVisor.Machine.Tests.Acpi;

public sealed class AmlTests
{
    // Decodes a PkgLength the way ACPICA does (ACPI 6.4 20.2.4): returns (length, bytes used).
    static (int Length, int Size) DecodePkgLength(byte[] b)
    {
        int extra = b[0] >> 6;
        if (extra == 0)
        {
            return (b[0] & 0x3F, 1);
        }
        int length = b[0] & 0x0F;
        for (int i = 1; i <= extra; i++)
        {
            length |= b[i] << (4 + 8 * (i - 1));
        }
        return (length, 1 + extra);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(62)]
    [InlineData(63)]
    [InlineData(64)]
    [InlineData(4093)]
    [InlineData(4094)]
    [InlineData((1 << 20) - 4)]
    [InlineData((1 << 20) - 3)]
    [InlineData((1 << 28) - 5)]
    public void PkgLengthCountsItselfAndRoundTrips(int content)
    {
        byte[] encoded = Aml.PkgLength(content);
        var (length, size) = DecodePkgLength(encoded);
        Assert.Equal(encoded.Length, size);
        Assert.Equal(content + size, length);
        Assert.Equal(content <= 62 ? 1 : content <= 4093 ? 2 : content <= (1 << 20) - 4 ? 3 : 4, size);
    }

    [Fact]
    public void PkgLengthBeyond28BitsIsRejected() => Assert.Throws<ArgumentOutOfRangeException>(() => Aml.PkgLength(1 << 28));

    [Theory]
    [InlineData("PNP0A03", 0x030AD041u)] // the value in every PC DSDT's PCI0 _CID
    [InlineData("PNP0A08", 0x080AD041u)]
    [InlineData("PNP0501", 0x0105D041u)]
    [InlineData("PNP0B00", 0x000BD041u)]
    public void EisaIdCompression(string id, uint expected) => Assert.Equal(expected, Aml.EisaIdValue(id));

    [Theory]
    [InlineData("pnp0a03")]
    [InlineData("PNP0A0")]
    [InlineData("PNP0A0G")]
    public void InvalidEisaIdIsRejected(string id) => Assert.Throws<ArgumentException>(() => Aml.EisaIdValue(id));

    [Fact]
    public void IntegersUseTheShortestEncoding()
    {
        Assert.Equal([0x00], Aml.Integer(0));
        Assert.Equal([0x01], Aml.Integer(1));
        Assert.Equal([0xFF], Aml.Integer(ulong.MaxValue));
        Assert.Equal([0x0A, 0x02], Aml.Integer(2));
        Assert.Equal([0x0B, 0x00, 0x01], Aml.Integer(0x100));
        Assert.Equal([0x0C, 0x00, 0x00, 0x01, 0x00], Aml.Integer(0x10000));
        Assert.Equal([0x0E, 0, 0, 0, 0, 1, 0, 0, 0], Aml.Integer(1UL << 32));
    }

    [Fact]
    public void NameStrings()
    {
        Assert.Equal("RTC_"u8.ToArray(), Aml.NameString("RTC"));
        Assert.Equal([0x5C, .. "_S5_"u8], Aml.NameString("\\_S5"));
        Assert.Equal([0x5C, 0x2E, .. "_SB_PCI0"u8], Aml.NameString("\\_SB.PCI0"));
        Assert.Equal([0x5C, 0x2F, 3, .. "_SB_PCI0COM1"u8], Aml.NameString("\\_SB.PCI0.COM1"));
        Assert.Equal([0x5E, .. "PCI0"u8], Aml.NameString("^PCI0"));
        Assert.Equal([0x5C, 0x00], Aml.NameString("\\"));
        Assert.Throws<ArgumentException>(() => Aml.NameString("pci0"));
        Assert.Throws<ArgumentException>(() => Aml.NameString("TOOLONG"));
        Assert.Throws<ArgumentException>(() => Aml.NameString("0ABC"));
    }

    [Fact]
    public void DeviceAndMethodEncodings()
    {
        byte[] device = Aml.Device("COM1", Aml.Name("_UID", Aml.Integer(1)));
        // ExtOpPrefix DeviceOp PkgLength "COM1" NameOp "_UID" One
        Assert.Equal([0x5B, 0x82, 11, .. "COM1"u8, 0x08, .. "_UID"u8, 0x01], device);
        byte[] method = Aml.Method("_PIC", 1, false, Aml.Store(Aml.Arg(0), Aml.Reference("PICF")));
        Assert.Equal([0x14, 12, .. "_PIC"u8, 0x01, 0x70, 0x68, .. "PICF"u8], method);
        Assert.Equal(0x08, Aml.Method("M", 0, true)[6]); // Serialized flag
    }

    [Fact]
    public void BufferAndPackageCarryTheirSizes()
    {
        Assert.Equal([0x11, 5, 0x0A, 2, 0xAA, 0xBB], Aml.Buffer([0xAA, 0xBB]));
        Assert.Equal([0x12, 4, 2, 0x00, 0x01], Aml.Package(Aml.Integer(0), Aml.Integer(1)));
    }

    [Fact]
    public void ResourceTemplateEndsWithEndTag()
    {
        byte[] rt = new ResourceTemplate().Io(0x3F8, 0x3F8, 1, 8).IrqNoFlags(4).ToBytes();
        Assert.Equal([0x47, 0x01, 0xF8, 0x03, 0xF8, 0x03, 0x01, 0x08, 0x22, 0x10, 0x00, 0x79, 0x00], rt);
    }

    [Fact]
    public void AddressWindowsHaveLengthMaxMinusMinPlusOne()
    {
        byte[] q = new ResourceTemplate().QWordWindow(AddressSpaceType.Memory, 0x1_0000_0000, 0x1_FFFF_FFFF).ToBytes();
        Assert.Equal(0x8A, q[0]);
        Assert.Equal(43, BitConverter.ToUInt16(q, 1));
        Assert.Equal(0x1_0000_0000UL, BitConverter.ToUInt64(q, 14));      // _MIN
        Assert.Equal(0x1_FFFF_FFFFUL, BitConverter.ToUInt64(q, 22));      // _MAX
        Assert.Equal(0x1_0000_0000UL, BitConverter.ToUInt64(q, 38));      // _LEN
    }
}
