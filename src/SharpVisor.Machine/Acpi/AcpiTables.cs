using System.Buffers.Binary;
using System.Text;
using SharpVisor.Core;
using SharpVisor.Machine.Boot;

namespace SharpVisor.Machine.Acpi;

/// <summary>The built tables: one blob for the ACPI region, the FACS for NVS, and where each table is.</summary>
public sealed class AcpiTableSet
{
    internal AcpiTableSet(AcpiRegion region, byte[] image, byte[] facs, ulong rsdpAddress, byte[] rsdp, IReadOnlyDictionary<string, ulong> tableAddresses)
    {
        Region = region;
        Image = image;
        Facs = facs;
        RsdpAddress = rsdpAddress;
        Rsdp = rsdp;
        TableAddresses = tableAddresses;
    }

    public AcpiRegion Region { get; }

    /// <summary>Bytes for [Region.Base, ...): RSDP, XSDT, RSDT and the tables.</summary>
    public byte[] Image { get; }

    /// <summary>The FACS, for Region.NvsBase.</summary>
    public byte[] Facs { get; }

    /// <summary>Address of the RSDP for boot_params.acpi_rsdp_addr / PVH rsdp_paddr.</summary>
    public ulong RsdpAddress { get; }

    public byte[] Rsdp { get; }

    /// <summary>The fallback RSDP copy in the BIOS area, where Linux scans when given no address (ACPI 6.4 5.2.5.1).</summary>
    public const ulong BiosRsdpCopy = BootLayout.BiosArea;

    /// <summary>Guest-physical address of each table by signature ("XSDT", "FACP", "DSDT", ...).</summary>
    public IReadOnlyDictionary<string, ulong> TableAddresses { get; }

    /// <summary>Writes the tables to guest RAM, plus the RSDP copy at 0xE0000.</summary>
    public void WriteTo(GuestMemory memory)
    {
        BootStructures.Write(memory, Region.Base, Image);
        BootStructures.Write(memory, Region.NvsBase, Facs);
        BootStructures.Write(memory, BiosRsdpCopy, Rsdp);
    }

    /// <summary>The bytes of one table (from <see cref="Image"/> or the FACS).</summary>
    public byte[] Table(string signature)
    {
        ulong address = TableAddresses[signature];
        if (signature == "FACS")
        {
            return Facs;
        }
        int offset = (int)(address - Region.Base);
        int length = (int)BinaryPrimitives.ReadUInt32LittleEndian(Image.AsSpan(offset + 4));
        return Image.AsSpan(offset, length).ToArray();
    }
}

/// <summary>
/// Builds the ACPI tables of a q35-like machine (ACPI 6.4 chapter 5): RSDP v2, XSDT (and RSDT),
/// FADT revision 6, FACS, DSDT, MADT, MCFG, HPET, plus caller-supplied extra tables.
/// </summary>
public static class AcpiTables
{
    public const string OemId = "SHRPVS";
    public const string OemTableId = "SHARPVSR";
    const string CreatorId = "SHVM";
    const int HeaderSize = 36;

    public static AcpiTableSet Build(AcpiMachineDescription d, AcpiRegion region)
    {
        if (d.CpuCount < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(d), "at least one CPU");
        }
        var ids = d.ApicIds ?? Enumerable.Range(0, d.CpuCount).Select(i => (uint)i).ToList();
        if (ids.Count != d.CpuCount)
        {
            throw new ArgumentException($"{ids.Count} APIC IDs for {d.CpuCount} CPUs", nameof(d));
        }

        // Fixed order in the region: RSDP, then tables at 16-byte aligned offsets.
        var image = new List<byte>();
        var addresses = new Dictionary<string, ulong>();
        ulong Place(string signature, byte[] table)
        {
            while (image.Count % 16 != 0)
            {
                image.Add(0);
            }
            ulong at = region.Base + (ulong)image.Count;
            addresses[signature] = at;
            image.AddRange(table);
            return at;
        }

        const int rsdpSize = 36;
        image.AddRange(new byte[rsdpSize]); // filled in last
        ulong facs = region.NvsBase;
        addresses["FACS"] = facs;
        ulong dsdt = Place("DSDT", Dsdt(d));
        ulong fadt = Place("FACP", Fadt(d, facs, dsdt));
        var entries = new List<ulong>
        {
            fadt,
            Place("APIC", Madt(d, ids)),
            Place("MCFG", Mcfg(d)),
        };
        if (d.HpetAddress is uint hpet)
        {
            entries.Add(Place("HPET", Hpet(d, hpet)));
        }
        foreach (byte[] extra in d.ExtraTables)
        {
            string signature = ValidateExtra(extra);
            byte[] copy = (byte[])extra.Clone();
            SetChecksum(copy, 9);
            entries.Add(Place(signature, copy));
        }
        ulong xsdt = Place("XSDT", Xsdt(entries));
        ulong rsdt = Place("RSDT", Rsdt(entries));
        byte[] rsdp = Rsdp(rsdt, xsdt);
        byte[] blob = image.ToArray();
        rsdp.CopyTo(blob, 0);
        if ((ulong)blob.Length > region.TablesSize)
        {
            throw new UserErrorException($"ACPI tables take {blob.Length} bytes, more than the {region.TablesSize}-byte ACPI region");
        }
        return new AcpiTableSet(region, blob, Facs(), region.Base, rsdp, addresses);
    }

    static string ValidateExtra(byte[] table)
    {
        if (table.Length < HeaderSize || BinaryPrimitives.ReadUInt32LittleEndian(table.AsSpan(4)) != table.Length)
        {
            throw new ArgumentException("an extra ACPI table must start with a header whose length field equals its size");
        }
        string signature = Encoding.ASCII.GetString(table, 0, 4);
        if (!signature.All(c => char.IsAsciiLetterUpper(c) || char.IsAsciiDigit(c) || c == '_'))
        {
            throw new ArgumentException($"invalid ACPI table signature '{signature}'");
        }
        return signature;
    }

    /// <summary>Makes the bytes of <paramref name="data"/> sum to 0 mod 256 by setting the byte at <paramref name="at"/>.</summary>
    public static void SetChecksum(Span<byte> data, int at)
    {
        data[at] = 0;
        data[at] = (byte)(0 - Sum(data));
    }

    public static byte Sum(ReadOnlySpan<byte> data)
    {
        byte sum = 0;
        foreach (byte b in data)
        {
            sum += b;
        }
        return sum;
    }

    // System Description Table Header, ACPI 6.4 5.2.6 table 5.4.
    static byte[] Table(string signature, byte revision, byte[] body)
    {
        var t = new byte[HeaderSize + body.Length];
        var s = t.AsSpan();
        Encoding.ASCII.GetBytes(signature, s);
        BinaryPrimitives.WriteUInt32LittleEndian(s[4..], (uint)t.Length);
        s[8] = revision;
        Encoding.ASCII.GetBytes(OemId, s[10..]);
        Encoding.ASCII.GetBytes(OemTableId, s[16..]);
        BinaryPrimitives.WriteUInt32LittleEndian(s[24..], 1);   // OEM revision
        Encoding.ASCII.GetBytes(CreatorId, s[28..]);
        BinaryPrimitives.WriteUInt32LittleEndian(s[32..], 1);   // creator revision
        body.CopyTo(s[HeaderSize..]);
        SetChecksum(t, 9);
        return t;
    }

    // RSDP, ACPI 6.4 5.2.5.3 table 5.3: checksum covers the first 20 bytes, extended checksum all 36.
    static byte[] Rsdp(ulong rsdt, ulong xsdt)
    {
        var r = new byte[36];
        var s = r.AsSpan();
        Encoding.ASCII.GetBytes("RSD PTR ", s);
        Encoding.ASCII.GetBytes(OemId, s[9..]);
        s[15] = 2; // revision 2: ACPI 2.0+ with XSDT
        BinaryPrimitives.WriteUInt32LittleEndian(s[16..], (uint)rsdt);
        BinaryPrimitives.WriteUInt32LittleEndian(s[20..], 36);
        BinaryPrimitives.WriteUInt64LittleEndian(s[24..], xsdt);
        SetChecksum(s[..20], 8);
        SetChecksum(s, 32);
        return r;
    }

    static byte[] Xsdt(List<ulong> entries) => Table("XSDT", 1, entries.SelectMany(BitConverter.GetBytes).ToArray());

    static byte[] Rsdt(List<ulong> entries) => Table("RSDT", 1, entries.SelectMany(e => BitConverter.GetBytes((uint)e)).ToArray());

    // FACS, ACPI 6.4 5.2.10 table 5.14: 64 bytes, no checksum, version 2.
    static byte[] Facs()
    {
        var f = new byte[64];
        Encoding.ASCII.GetBytes("FACS", f);
        BinaryPrimitives.WriteUInt32LittleEndian(f.AsSpan(4), 64);
        f[32] = 2;
        return f;
    }

    // Generic Address Structure, ACPI 6.4 5.2.3.2 table 5.1.
    static void Gas(Span<byte> at, byte spaceId, byte bitWidth, byte accessSize, ulong address)
    {
        at[0] = spaceId;
        at[1] = bitWidth;
        at[2] = 0;
        at[3] = accessSize;
        BinaryPrimitives.WriteUInt64LittleEndian(at[4..], address);
    }

    const byte SystemIo = 1;
    const byte SystemMemory = 0;

    // FADT revision 6 (ACPI 6.4 5.2.9 table 5.9), 276 bytes. Offsets below are from the table start.
    static byte[] Fadt(AcpiMachineDescription d, ulong facs, ulong dsdt)
    {
        var body = new byte[276 - HeaderSize];
        var t = body.AsSpan();
        int O(int tableOffset) => tableOffset - HeaderSize;
        ushort pm1aEvt = d.PmIoBase, pm1aCnt = (ushort)(d.PmIoBase + 4), pmTmr = (ushort)(d.PmIoBase + 8), gpe0 = (ushort)(d.PmIoBase + 0x20);
        const byte gpe0Length = 16; // ICH9 GPE0_STS + GPE0_EN, 8 bytes each
        // FIRMWARE_CTRL (36) stays 0: X_FIRMWARE_CTRL holds the FACS and the spec wants only one set.
        BinaryPrimitives.WriteUInt32LittleEndian(t[O(40)..], (uint)dsdt);
        t[O(45)] = 0;                                                  // Preferred_PM_Profile: unspecified
        BinaryPrimitives.WriteUInt16LittleEndian(t[O(46)..], d.SciIrq); // SCI_INT
        // SMI_CMD (48), ACPI_ENABLE/DISABLE: 0 — no SMM; the platform starts in ACPI mode (SCI_EN = 1).
        BinaryPrimitives.WriteUInt32LittleEndian(t[O(56)..], pm1aEvt);
        BinaryPrimitives.WriteUInt32LittleEndian(t[O(64)..], pm1aCnt);
        BinaryPrimitives.WriteUInt32LittleEndian(t[O(76)..], pmTmr);
        BinaryPrimitives.WriteUInt32LittleEndian(t[O(80)..], gpe0);
        t[O(88)] = 4;          // PM1_EVT_LEN
        t[O(89)] = 2;          // PM1_CNT_LEN
        t[O(91)] = 4;          // PM_TMR_LEN
        t[O(92)] = gpe0Length; // GPE0_BLK_LEN
        BinaryPrimitives.WriteUInt16LittleEndian(t[O(96)..], 0x0FFF);  // P_LVL2_LAT > 100: C2 not supported
        BinaryPrimitives.WriteUInt16LittleEndian(t[O(98)..], 0xFFFF);  // P_LVL3_LAT > 1000: C3 not supported
        t[O(108)] = d.RtcCenturyIndex;                                 // CENTURY
        // IAPC_BOOT_ARCH (5.2.9.3 table 5.11): bit 1 8042 present, bit 2 VGA not present.
        BinaryPrimitives.WriteUInt16LittleEndian(t[O(109)..], 0x0002 | 0x0004);
        // Flags (table 5.10): WBINVD(0), PROC_C1(2), SLP_BUTTON(5, no fixed sleep button),
        // RTC_S4(7), TMR_VAL_EXT(8), RESET_REG_SUP(10), USE_PLATFORM_CLOCK(15).
        uint flags = 1u << 0 | 1u << 2 | 1u << 5 | 1u << 7 | 1u << 10 | 1u << 15;
        if (d.PmTimer32Bit)
        {
            flags |= 1u << 8;
        }
        BinaryPrimitives.WriteUInt32LittleEndian(t[O(112)..], flags);
        Gas(t[O(116)..], SystemIo, 8, 1, d.ResetPort);                 // RESET_REG
        t[O(128)] = d.ResetValue;                                      // RESET_VALUE
        t[O(131)] = 0;                                                 // FADT minor version
        BinaryPrimitives.WriteUInt64LittleEndian(t[O(132)..], facs);   // X_FIRMWARE_CTRL
        BinaryPrimitives.WriteUInt64LittleEndian(t[O(140)..], dsdt);   // X_DSDT
        Gas(t[O(148)..], SystemIo, 32, 2, pm1aEvt);                    // X_PM1a_EVT_BLK
        Gas(t[O(172)..], SystemIo, 16, 2, pm1aCnt);                    // X_PM1a_CNT_BLK
        Gas(t[O(208)..], SystemIo, 32, 3, pmTmr);                      // X_PM_TMR_BLK
        Gas(t[O(220)..], SystemIo, gpe0Length * 8, 1, gpe0);           // X_GPE0_BLK
        return Table("FACP", 6, body);
    }

    // MADT, ACPI 6.4 5.2.12 (revision 4 = ACPI 6.0 layout).
    static byte[] Madt(AcpiMachineDescription d, IReadOnlyList<uint> apicIds)
    {
        var b = new List<byte>();
        b.AddRange(BitConverter.GetBytes(d.LocalApicAddress));
        b.AddRange(BitConverter.GetBytes(1u)); // PCAT_COMPAT: dual 8259s are present (must be masked)
        bool anyX2 = false;
        for (int i = 0; i < apicIds.Count; i++)
        {
            uint id = apicIds[i];
            if (id < 0xFF)
            {
                // Processor Local APIC (5.2.12.2): type 0, length 8, UID, APIC ID, flags (Enabled).
                b.AddRange([0, 8, (byte)i, (byte)id, .. BitConverter.GetBytes(1u)]);
            }
            else
            {
                // Processor Local x2APIC (5.2.12.12): type 9, length 16.
                anyX2 = true;
                b.AddRange([9, 16, 0, 0, .. BitConverter.GetBytes(id), .. BitConverter.GetBytes(1u), .. BitConverter.GetBytes((uint)i)]);
            }
        }
        // I/O APIC (5.2.12.3): type 1, length 12.
        b.AddRange([1, 12, d.IoApicId, 0, .. BitConverter.GetBytes(d.IoApicAddress), .. BitConverter.GetBytes(d.IoApicGsiBase)]);
        // Interrupt Source Overrides (5.2.12.5): type 2, length 10, bus 0 (ISA), source, GSI, MPS INTI flags
        // (bits 1:0 polarity 01 = active high, 11 = active low; bits 3:2 trigger 01 = edge, 11 = level).
        b.AddRange([2, 10, 0, 0, .. BitConverter.GetBytes(d.IoApicGsiBase + 2), .. BitConverter.GetBytes((ushort)0x0005)]);    // PIT IRQ0 -> GSI2, edge high
        b.AddRange([2, 10, 0, d.SciIrq, .. BitConverter.GetBytes(d.IoApicGsiBase + d.SciIrq), .. BitConverter.GetBytes((ushort)0x000D)]); // SCI: level, active high
        // Local APIC NMI (5.2.12.7): all processors (UID 0xFF), LINT1, edge/high as the PC wires it.
        b.AddRange([4, 6, 0xFF, .. BitConverter.GetBytes((ushort)0x0005), 1]);
        if (anyX2)
        {
            // Local x2APIC NMI (5.2.12.13): all processors (UID 0xFFFFFFFF), LINT1.
            b.AddRange([0x0A, 12, .. BitConverter.GetBytes((ushort)0x0005), .. BitConverter.GetBytes(uint.MaxValue), 1, 0, 0, 0]);
        }
        return Table("APIC", 4, b.ToArray());
    }

    // MCFG, PCI Firmware Specification 3.2 4.1.2: reserved u64, then base/segment/start bus/end bus entries.
    static byte[] Mcfg(AcpiMachineDescription d)
    {
        var b = new byte[8 + 16];
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(8), d.EcamBase);
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(16), 0); // PCI segment group
        b[18] = d.EcamStartBus;
        b[19] = d.EcamEndBus;
        return Table("MCFG", 1, b);
    }

    // HPET description table, IA-PC HPET spec 1.0a 3.2.4 table 3.
    static byte[] Hpet(AcpiMachineDescription d, uint address)
    {
        var b = new byte[56 - HeaderSize];
        var s = b.AsSpan();
        BinaryPrimitives.WriteUInt32LittleEndian(s, d.HpetEventTimerBlockId);
        Gas(s[4..], SystemMemory, 64, 0, address);
        s[16] = 0;                                                  // HPET number
        BinaryPrimitives.WriteUInt16LittleEndian(s[17..], 0x80);    // minimum clock tick in periodic mode
        s[19] = 0;                                                  // page protection: none
        return Table("HPET", 1, b);
    }

    static byte[] Dsdt(AcpiMachineDescription d) => Table("DSDT", 2, DsdtBody(d));

    /// <summary>The DSDT's AML (revision 2: 64-bit integers).</summary>
    internal static byte[] DsdtBody(AcpiMachineDescription d)
    {
        var crs = new ResourceTemplate()
            .WordWindow(AddressSpaceType.BusNumber, d.EcamStartBus, d.EcamEndBus)
            .Io(0x0CF8, 0x0CF8, 1, 8) // the host bridge's own config ports
            .WordWindow(AddressSpaceType.Io, 0x0000, 0x0CF7)
            .WordWindow(AddressSpaceType.Io, 0x0D00, 0xFFFF)
            .DWordWindow(AddressSpaceType.Memory, d.Pci32WindowBase, d.Pci32WindowLimit);
        if (d.Pci64WindowSize != 0)
        {
            crs.QWordWindow(AddressSpaceType.Memory, d.Pci64WindowBase, d.Pci64WindowBase + d.Pci64WindowSize - 1);
        }
        var pci = new List<byte[]>
        {
            // PCI Express root bridge: _HID PNP0A08, compatible with PCI PNP0A03 (PCI Firmware spec 3.2 4.5).
            Aml.Name("_HID", Aml.EisaId("PNP0A08")),
            Aml.Name("_CID", Aml.EisaId("PNP0A03")),
            Aml.Name("_SEG", Aml.Integer(0)),
            Aml.Name("_BBN", Aml.Integer(d.EcamStartBus)),
            Aml.Name("_UID", Aml.Integer(0)),
            Aml.Name("_CRS", crs.ToAml()),
        };
        if (d.PciIntxGsiBase is uint gsiBase)
        {
            // _PRT (ACPI 6.4 6.2.13): {address (device << 16 | 0xFFFF), pin, source 0, GSI}.
            var routes = new List<byte[]>();
            for (uint device = 0; device < 32; device++)
            {
                for (uint pin = 0; pin < 4; pin++)
                {
                    routes.Add(Aml.Package(Aml.Integer(device << 16 | 0xFFFF), Aml.Integer(pin), Aml.Integer(0), Aml.Integer(gsiBase + (device + pin) % 4)));
                }
            }
            pci.Add(Aml.Name("_PRT", Aml.Package([.. routes])));
        }
        var sb = new List<byte[]> { Aml.Device("PCI0", [.. pci]) };
        if (d.Com1Port is ushort com1)
        {
            sb.Add(Aml.Device("COM1",
                Aml.Name("_HID", Aml.EisaId("PNP0501")), // 16550A-compatible COM port
                Aml.Name("_UID", Aml.Integer(1)),
                Aml.Name("_CRS", new ResourceTemplate().Io(com1, com1, 1, 8).IrqNoFlags(d.Com1Irq).ToAml())));
        }
        if (d.HasRtc)
        {
            sb.Add(Aml.Device("RTC",
                Aml.Name("_HID", Aml.EisaId("PNP0B00")), // AT real-time clock
                Aml.Name("_CRS", new ResourceTemplate().Io(0x70, 0x70, 1, 8).IrqNoFlags(8).ToAml())));
        }
        if (d.HpetAddress is uint hpet)
        {
            sb.Add(Aml.Device("HPET",
                Aml.Name("_HID", Aml.EisaId("PNP0103")),
                Aml.Name("_UID", Aml.Integer(0)),
                Aml.Name("_CRS", new ResourceTemplate().Memory32Fixed(false, hpet, 0x400).ToAml())));
        }
        return Aml.List(
            Aml.Scope("\\_SB", [.. sb]),
            // \_S5 (ACPI 6.4 7.4.2): SLP_TYP values for PM1a/PM1b_CNT; the platform treats SLP_TYP 0 +
            // SLP_EN as soft-off, so Linux's poweroff writes 0x2000 to PM1a_CNT.
            Aml.Name("\\_S5", Aml.Package(Aml.Integer(0), Aml.Integer(0), Aml.Integer(0), Aml.Integer(0))),
            // \_PIC (5.8.1): the OS reports its interrupt model (0 PIC, 1 APIC); remembered in PICF.
            Aml.Name("PICF", Aml.Integer(0)),
            Aml.Method("\\_PIC", 1, false, Aml.Store(Aml.Arg(0), Aml.Reference("PICF"))));
    }
}
