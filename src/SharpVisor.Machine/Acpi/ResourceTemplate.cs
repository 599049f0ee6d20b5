namespace SharpVisor.Machine.Acpi;

/// <summary>Address space resource types (ACPI 6.4 table 6.50, "Resource Type").</summary>
public enum AddressSpaceType : byte
{
    Memory = 0,
    Io = 1,
    BusNumber = 2,
}

/// <summary>
/// Builds the byte stream of a ResourceTemplate (ACPI 6.4 6.4, "Resource Data Types for ACPI"):
/// the resource descriptors followed by an End Tag. <see cref="ToAml"/> wraps it in a Buffer for
/// use as a _CRS value.
/// </summary>
public sealed class ResourceTemplate
{
    readonly List<byte> _bytes = [];

    /// <summary>I/O Port Descriptor (6.4.2.5), 16-bit decode: small item 0x08, length 7.</summary>
    public ResourceTemplate Io(ushort minimum, ushort maximum, byte alignment, byte length)
    {
        _bytes.AddRange([0x47, 0x01, .. BitConverter.GetBytes(minimum), .. BitConverter.GetBytes(maximum), alignment, length]);
        return this;
    }

    /// <summary>IRQ Descriptor (6.4.2.1) without the information byte: edge, active-high, exclusive.</summary>
    public ResourceTemplate IrqNoFlags(params int[] irqs)
    {
        ushort mask = 0;
        foreach (int irq in irqs)
        {
            mask |= (ushort)(1 << (irq & 15));
        }
        _bytes.AddRange([0x22, .. BitConverter.GetBytes(mask)]);
        return this;
    }

    /// <summary>IRQ Descriptor with information byte (6.4.2.1): small item 0x04, length 3.</summary>
    public ResourceTemplate Irq(bool levelTriggered, bool activeLow, bool shared, params int[] irqs)
    {
        ushort mask = 0;
        foreach (int irq in irqs)
        {
            mask |= (ushort)(1 << (irq & 15));
        }
        // Information byte: bit 0 edge (_HE), bit 3 active-low (_LL), bit 4 shared (_SHR).
        byte info = (byte)((levelTriggered ? 0 : 1) | (activeLow ? 0x08 : 0) | (shared ? 0x10 : 0));
        _bytes.AddRange([0x23, .. BitConverter.GetBytes(mask), info]);
        return this;
    }

    /// <summary>Extended Interrupt Descriptor (6.4.3.6): large item 0x89; resource consumer.</summary>
    public ResourceTemplate ExtendedInterrupt(bool levelTriggered, bool activeLow, bool shared, params uint[] gsis)
    {
        // Flags: bit 0 consumer, bit 1 edge (1) / level (0), bit 2 active-low, bit 3 shared.
        byte flags = (byte)(0x01 | (levelTriggered ? 0 : 0x02) | (activeLow ? 0x04 : 0) | (shared ? 0x08 : 0));
        int length = 2 + 4 * gsis.Length;
        _bytes.AddRange([0x89, .. BitConverter.GetBytes((ushort)length), flags, (byte)gsis.Length]);
        foreach (uint g in gsis)
        {
            _bytes.AddRange(BitConverter.GetBytes(g));
        }
        return this;
    }

    /// <summary>32-bit Fixed Memory Range Descriptor (6.4.3.4): large item 0x86.</summary>
    public ResourceTemplate Memory32Fixed(bool writable, uint baseAddress, uint length)
    {
        _bytes.AddRange([0x86, 9, 0, (byte)(writable ? 1 : 0), .. BitConverter.GetBytes(baseAddress), .. BitConverter.GetBytes(length)]);
        return this;
    }

    // General flags for a bridge window (6.4.3.5.1-3): producer (bit 0 = 0), positive decode,
    // minimum and maximum fixed (bits 2, 3).
    const byte ProducerFixedWindow = 0x0C;
    // Type-specific flags: memory read/write + cacheable (bit 0, bits 2:1 = 01); I/O: entire range (_RNG = 3).
    static byte TypeFlags(AddressSpaceType type) => type switch
    {
        AddressSpaceType.Memory => 0x03,
        AddressSpaceType.Io => 0x03,
        _ => 0,
    };

    /// <summary>Word Address Space Descriptor (6.4.3.5.3): large item 0x88, producer window [min, max].</summary>
    public ResourceTemplate WordWindow(AddressSpaceType type, ushort minimum, ushort maximum)
    {
        _bytes.AddRange([0x88, 13, 0, (byte)type, ProducerFixedWindow, TypeFlags(type)]);
        foreach (ushort v in new ushort[] { 0, minimum, maximum, 0, (ushort)(maximum - minimum + 1) })
        {
            _bytes.AddRange(BitConverter.GetBytes(v));
        }
        return this;
    }

    /// <summary>DWord Address Space Descriptor (6.4.3.5.2): large item 0x87, producer window [min, max].</summary>
    public ResourceTemplate DWordWindow(AddressSpaceType type, uint minimum, uint maximum)
    {
        _bytes.AddRange([0x87, 23, 0, (byte)type, ProducerFixedWindow, TypeFlags(type)]);
        foreach (uint v in new uint[] { 0, minimum, maximum, 0, maximum - minimum + 1 })
        {
            _bytes.AddRange(BitConverter.GetBytes(v));
        }
        return this;
    }

    /// <summary>QWord Address Space Descriptor (6.4.3.5.1): large item 0x8A, producer window [min, max].</summary>
    public ResourceTemplate QWordWindow(AddressSpaceType type, ulong minimum, ulong maximum)
    {
        _bytes.AddRange([0x8A, 43, 0, (byte)type, ProducerFixedWindow, TypeFlags(type)]);
        foreach (ulong v in new ulong[] { 0, minimum, maximum, 0, maximum - minimum + 1 })
        {
            _bytes.AddRange(BitConverter.GetBytes(v));
        }
        return this;
    }

    /// <summary>The descriptors plus the End Tag (6.4.2.9; checksum 0 = "treat as correct").</summary>
    public byte[] ToBytes() => [.. _bytes, 0x79, 0x00];

    /// <summary>The template as an AML Buffer, ready for <c>Name(_CRS, ...)</c>.</summary>
    public byte[] ToAml() => Aml.Buffer(ToBytes());
}
