using System.Text;

namespace SharpVisor.Machine.Acpi;

/// <summary>
/// A small encoder for ACPI Machine Language (ACPI 6.4 chapter 20, "ACPI Machine Language
/// Specification"): each method returns the encoded bytes of one term, so a DSDT body is built by
/// nesting calls, e.g. <c>Aml.Scope("\\_SB", Aml.Device("PCI0", Aml.Name("_HID", Aml.EisaId("PNP0A08"))))</c>.
/// </summary>
public static class Aml
{
    // Opcodes, ACPI 6.4 20.3 "AML Byte Stream Byte Values".
    const byte ZeroOp = 0x00, OneOp = 0x01, NameOp = 0x08;
    const byte BytePrefix = 0x0A, WordPrefix = 0x0B, DWordPrefix = 0x0C, StringPrefix = 0x0D, QWordPrefix = 0x0E;
    const byte ScopeOp = 0x10, BufferOp = 0x11, PackageOp = 0x12, MethodOp = 0x14;
    const byte DualNamePrefix = 0x2E, MultiNamePrefix = 0x2F, ExtOpPrefix = 0x5B, RootChar = 0x5C, ParentPrefixChar = 0x5E;
    const byte DeviceOp = 0x82; // after ExtOpPrefix
    const byte Local0Op = 0x60, Arg0Op = 0x68, StoreOp = 0x70, ReturnOp = 0xA4, OnesOp = 0xFF;

    /// <summary>Concatenates terms into a TermList.</summary>
    public static byte[] List(params byte[][] terms) => terms.SelectMany(t => t).ToArray();

    /// <summary>
    /// NameString (20.2.2): optional leading '\' or '^'s, then 4-character segments separated by
    /// '.'; segments shorter than 4 characters are padded with '_'.
    /// </summary>
    public static byte[] NameString(string name)
    {
        var bytes = new List<byte>();
        int i = 0;
        if (name.StartsWith('\\'))
        {
            bytes.Add(RootChar);
            i = 1;
        }
        while (i < name.Length && name[i] == '^')
        {
            bytes.Add(ParentPrefixChar);
            i++;
        }
        string[] segments = name[i..].Length == 0 ? [] : name[i..].Split('.');
        switch (segments.Length)
        {
            case 0:
                bytes.Add(0); // NullName
                break;
            case 1:
                break;
            case 2:
                bytes.Add(DualNamePrefix);
                break;
            default:
                bytes.Add(MultiNamePrefix);
                bytes.Add((byte)segments.Length);
                break;
        }
        foreach (string segment in segments)
        {
            bytes.AddRange(NameSeg(segment));
        }
        return bytes.ToArray();
    }

    // NameSeg := LeadNameChar NameChar NameChar NameChar (LeadNameChar: 'A'-'Z' or '_').
    static byte[] NameSeg(string segment)
    {
        if (segment.Length is 0 or > 4 || !(char.IsAsciiLetterUpper(segment[0]) || segment[0] == '_')
            || !segment.All(c => char.IsAsciiLetterUpper(c) || char.IsAsciiDigit(c) || c == '_'))
        {
            throw new ArgumentException($"invalid AML name segment '{segment}'", nameof(segment));
        }
        return Encoding.ASCII.GetBytes(segment.PadRight(4, '_'));
    }

    /// <summary>
    /// PkgLength (20.2.4): the length of the package including the PkgLength bytes themselves.
    /// One byte up to 63; otherwise bits 7-6 of the lead byte give the count of following bytes,
    /// its bits 3-0 the low nibble and each following byte the next 8 bits.
    /// </summary>
    public static byte[] PkgLength(int contentLength)
    {
        for (int extra = 0; extra <= 3; extra++)
        {
            int total = contentLength + 1 + extra;
            if (extra == 0 && total <= 0x3F)
            {
                return [(byte)total];
            }
            if (extra > 0 && total < 1 << (4 + 8 * extra))
            {
                var b = new byte[1 + extra];
                b[0] = (byte)((extra << 6) | (total & 0xF));
                for (int i = 1; i <= extra; i++)
                {
                    b[i] = (byte)(total >> (4 + 8 * (i - 1)));
                }
                return b;
            }
        }
        throw new ArgumentOutOfRangeException(nameof(contentLength), "AML package longer than 2^28 bytes");
    }

    static byte[] WithPkgLength(byte[] prefix, byte[] content) => [.. prefix, .. PkgLength(content.Length), .. content];

    /// <summary>ComputationalData integer (20.2.3): Zero/One/Ones or the smallest prefix that fits.</summary>
    public static byte[] Integer(ulong value) => value switch
    {
        0 => [ZeroOp],
        1 => [OneOp],
        ulong.MaxValue => [OnesOp],
        <= 0xFF => [BytePrefix, (byte)value],
        <= 0xFFFF => [WordPrefix, .. BitConverter.GetBytes((ushort)value)],
        <= 0xFFFF_FFFF => [DWordPrefix, .. BitConverter.GetBytes((uint)value)],
        _ => [QWordPrefix, .. BitConverter.GetBytes(value)],
    };

    /// <summary>String constant: StringPrefix, ASCII characters, NUL.</summary>
    public static byte[] String(string s) => [StringPrefix, .. Encoding.ASCII.GetBytes(s), 0];

    /// <summary>DefBuffer (20.2.5.4): BufferOp PkgLength BufferSize ByteList.</summary>
    public static byte[] Buffer(byte[] data) => WithPkgLength([BufferOp], [.. Integer((ulong)data.Length), .. data]);

    /// <summary>DefPackage (20.2.5.4): PackageOp PkgLength NumElements PackageElementList.</summary>
    public static byte[] Package(params byte[][] elements)
    {
        if (elements.Length > 255)
        {
            throw new ArgumentException("a Package holds at most 255 elements (use VarPackage)", nameof(elements));
        }
        return WithPkgLength([PackageOp], [(byte)elements.Length, .. List(elements)]);
    }

    /// <summary>DefName: NameOp NameString DataRefObject.</summary>
    public static byte[] Name(string name, byte[] value) => [NameOp, .. NameString(name), .. value];

    /// <summary>DefScope: ScopeOp PkgLength NameString TermList.</summary>
    public static byte[] Scope(string name, params byte[][] terms) => WithPkgLength([ScopeOp], [.. NameString(name), .. List(terms)]);

    /// <summary>DefDevice: ExtOpPrefix DeviceOp PkgLength NameString TermList.</summary>
    public static byte[] Device(string name, params byte[][] terms) => WithPkgLength([ExtOpPrefix, DeviceOp], [.. NameString(name), .. List(terms)]);

    /// <summary>DefMethod: MethodOp PkgLength NameString MethodFlags TermList (flags: ArgCount bits 0-2, Serialized bit 3).</summary>
    public static byte[] Method(string name, int argCount, bool serialized, params byte[][] terms)
    {
        if (argCount is < 0 or > 7)
        {
            throw new ArgumentOutOfRangeException(nameof(argCount));
        }
        byte flags = (byte)(argCount | (serialized ? 0x08 : 0));
        return WithPkgLength([MethodOp], [.. NameString(name), flags, .. List(terms)]);
    }

    /// <summary>DefReturn: ReturnOp ArgObject.</summary>
    public static byte[] Return(byte[] value) => [ReturnOp, .. value];

    /// <summary>DefStore: StoreOp TermArg SuperName.</summary>
    public static byte[] Store(byte[] source, byte[] target) => [StoreOp, .. source, .. target];

    /// <summary>ArgN (N = 0-6).</summary>
    public static byte[] Arg(int n) => n is >= 0 and <= 6 ? [(byte)(Arg0Op + n)] : throw new ArgumentOutOfRangeException(nameof(n));

    /// <summary>LocalN (N = 0-7).</summary>
    public static byte[] Local(int n) => n is >= 0 and <= 7 ? [(byte)(Local0Op + n)] : throw new ArgumentOutOfRangeException(nameof(n));

    /// <summary>A name used as a value (reference to a named object).</summary>
    public static byte[] Reference(string name) => NameString(name);

    /// <summary>
    /// EISA ID (ACPI 6.4 6.1.5 _HID): "PNP0A08" compressed to a 32-bit integer — three 5-bit letters
    /// (A = 1) then four hex digits, stored big-endian in the integer's bytes.
    /// </summary>
    public static uint EisaIdValue(string id)
    {
        if (id.Length != 7 || !id[..3].All(char.IsAsciiLetterUpper) || !id[3..].All(char.IsAsciiHexDigit))
        {
            throw new ArgumentException($"invalid EISA ID '{id}'", nameof(id));
        }
        int letters = ((id[0] - 0x40) << 10) | ((id[1] - 0x40) << 5) | (id[2] - 0x40);
        int digits = Convert.ToInt32(id[3..], 16);
        return (uint)((letters >> 8) | ((letters & 0xFF) << 8) | ((digits >> 8) << 16) | ((digits & 0xFF) << 24));
    }

    public static byte[] EisaId(string id) => Integer(EisaIdValue(id));
}
