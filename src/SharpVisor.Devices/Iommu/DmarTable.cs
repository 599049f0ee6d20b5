using System.Buffers.Binary;
using System.Text;

namespace SharpVisor.Devices.Iommu;

/// <summary>
/// Builds the ACPI DMA Remapping Reporting table (VT-d spec rev 4.x, chapter 8): the header
/// (8.1), one DRHD (8.3) with INCLUDE_PCI_ALL and an IOAPIC device scope (8.3.1), and optionally
/// an ATSR (8.5) with ALL_PORTS. Linux disables interrupt remapping unless every MADT IOAPIC
/// appears in such a scope, and enables ATS on a device behind a root port only when an ATSR
/// covers that port (dmar_find_matched_atsr_unit; root-complex integrated devices need none).
/// </summary>
public static class DmarTable
{
    const int HeaderLength = 48;     // 36-byte ACPI header + HAW, flags, 10 reserved bytes (8.1)
    const int DrhdLength = 16;       // 8.3 before the device scopes
    const int IoApicScopeLength = 8; // 6 bytes + one (device, function) path entry (8.3.1)
    const int AtsrLength = 8;        // 8.5: type, length, flags, reserved, segment; no device scopes with ALL_PORTS

    /// <summary>DMAR flags (8.1).</summary>
    [Flags]
    public enum Flags : byte
    {
        None = 0,
        InterruptRemapping = 1 << 0,   // INTR_REMAP
        X2ApicOptOut = 1 << 1,         // X2APIC_OPT_OUT
        DmaControlOptIn = 1 << 2,      // DMA_CTRL_PLATFORM_OPT_IN_FLAG
    }

    /// <summary>Returns the table's bytes, checksummed.</summary>
    /// <param name="options">The unit: base address and host address width.</param>
    /// <param name="ioApicId">The IOAPIC's enumeration ID (its MADT IOAPIC ID).</param>
    /// <param name="ioApicSourceId">The requester id the IOAPIC's interrupt messages carry (bus &lt;&lt; 8 | dev &lt;&lt; 3 | fn).</param>
    /// <param name="includeAtsr">Append an ATSR (8.5) with ALL_PORTS: pass <c>options.DeviceTlb</c> when devices use ATS.</param>
    public static byte[] Build(VtdOptions options, byte ioApicId, ushort ioApicSourceId, Flags flags, bool includeAtsr = false)
    {
        int length = HeaderLength + DrhdLength + IoApicScopeLength + (includeAtsr ? AtsrLength : 0);
        var t = new byte[length];
        var s = t.AsSpan();
        // ACPI table header (ACPI 6.5, 5.2.6).
        Encoding.ASCII.GetBytes("DMAR").CopyTo(s);
        BinaryPrimitives.WriteUInt32LittleEndian(s[4..], (uint)length);
        s[8] = 1;                                            // revision
        Encoding.ASCII.GetBytes("SHARPV").CopyTo(s[10..]);   // OEM ID (6)
        Encoding.ASCII.GetBytes("SVDMAR  ").CopyTo(s[16..]); // OEM table ID (8)
        BinaryPrimitives.WriteUInt32LittleEndian(s[24..], 1);
        Encoding.ASCII.GetBytes("SHRP").CopyTo(s[28..]);     // creator ID
        BinaryPrimitives.WriteUInt32LittleEndian(s[32..], 1);
        // 8.1: Host Address Width holds HAW-1; flags; 10 reserved bytes.
        s[36] = (byte)(options.HostAddressWidth - 1);
        s[37] = (byte)flags;

        // 8.3 DRHD: type 0, length, flags (bit 0 INCLUDE_PCI_ALL), size (2^N 4 KiB pages of registers), segment, base.
        var d = s[HeaderLength..];
        BinaryPrimitives.WriteUInt16LittleEndian(d, 0);
        BinaryPrimitives.WriteUInt16LittleEndian(d[2..], (ushort)(DrhdLength + IoApicScopeLength));
        d[4] = 1;
        d[5] = (byte)Math.Log2(options.RegionSize / 4096);
        BinaryPrimitives.WriteUInt16LittleEndian(d[6..], 0);
        BinaryPrimitives.WriteUInt64LittleEndian(d[8..], options.BaseAddress);

        // 8.3.1 device scope: type 3 (IOAPIC), length, flags, reserved, enumeration ID, start bus, path.
        var scope = d[DrhdLength..];
        scope[0] = 3;
        scope[1] = IoApicScopeLength;
        scope[4] = ioApicId;
        scope[5] = (byte)(ioApicSourceId >> 8);
        scope[6] = (byte)((ioApicSourceId >> 3) & 0x1F);
        scope[7] = (byte)(ioApicSourceId & 7);

        if (includeAtsr)
        {
            // 8.5 ATSR: type 2, length, flags bit 0 ALL_PORTS (every root port of the segment supports ATS), segment 0.
            var atsr = scope[IoApicScopeLength..];
            BinaryPrimitives.WriteUInt16LittleEndian(atsr, 2);
            BinaryPrimitives.WriteUInt16LittleEndian(atsr[2..], AtsrLength);
            atsr[4] = 1;
            BinaryPrimitives.WriteUInt16LittleEndian(atsr[6..], 0);
        }

        byte sum = 0;
        foreach (byte b in t)
        {
            sum += b;
        }
        t[9] = (byte)(0 - sum);
        return t;
    }
}
