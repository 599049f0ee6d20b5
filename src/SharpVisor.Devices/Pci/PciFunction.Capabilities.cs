using SharpVisor.Core;

namespace SharpVisor.Devices.Pci;

public abstract partial class PciFunction
{
    const int FirstCapability = 0x40;
    const int FirstExtendedCapability = 0x100;

    int _nextCapability = FirstCapability;
    int _lastCapability;
    int _nextExtendedCapability = FirstExtendedCapability;
    int _lastExtendedCapability;
    int _pcieCapability;

    /// <summary>Offset of the PCI Express capability, 0 when there is none.</summary>
    public int PciExpressCapabilityOffset => _pcieCapability;

    /// <summary>
    /// Appends a conventional capability of <paramref name="length"/> bytes (rounded up to a dword)
    /// to the list that starts at the Capabilities Pointer (PCI 3.0, 6.7): byte 0 is the ID, byte 1
    /// the next pointer. Returns its offset; the caller fills the body with <see cref="InitConfig"/>.
    /// </summary>
    protected int AddCapability(byte id, int length)
    {
        EnsureNotAttached();
        length = (length + 3) & ~3;
        if (length < 4 || _nextCapability + length > PciConfig.ConventionalSize)
        {
            ThrowHelper.InvalidOperation($"{Name}: no room for a {length}-byte capability 0x{id:x2}");
        }
        int offset = _nextCapability;
        _config[offset] = id;
        _config[offset + 1] = 0;
        if (_lastCapability == 0)
        {
            _config[PciConfig.CapabilitiesPointer] = (byte)offset;
            _config[PciConfig.Status] |= (byte)PciStatus.CapabilitiesList;
        }
        else
        {
            _config[_lastCapability + 1] = (byte)offset;
        }
        _lastCapability = offset;
        _nextCapability += length;
        return offset;
    }

    /// <summary>
    /// Appends an extended capability (PCIe Base 4.0, 7.6.3): a dword header of ID (bits 15:0),
    /// version (19:16) and next offset (31:20), starting at 0x100. Needs the PCIe capability first,
    /// since only PCI Express functions have extended configuration space.
    /// </summary>
    protected int AddExtendedCapability(ushort id, byte version, int length)
    {
        EnsureNotAttached();
        if (_pcieCapability == 0)
        {
            ThrowHelper.InvalidOperation($"{Name}: extended capabilities need the PCI Express capability first");
        }
        length = (length + 3) & ~3;
        if (length < 4 || _nextExtendedCapability + length > PciConfig.ExtendedSize)
        {
            ThrowHelper.InvalidOperation($"{Name}: no room for a {length}-byte extended capability 0x{id:x4}");
        }
        int offset = _nextExtendedCapability;
        WriteRaw(offset, 4, id | (uint)(version & 0xF) << 16);
        if (_lastExtendedCapability != 0)
        {
            uint header = ReadRaw(_lastExtendedCapability, 4);
            WriteRaw(_lastExtendedCapability, 4, (header & 0x000F_FFFF) | (uint)offset << 20);
        }
        _lastExtendedCapability = offset;
        _nextExtendedCapability += length;
        return offset;
    }

    int _pmCapability;

    /// <summary>Offset of the Power Management capability, 0 when there is none.</summary>
    public int PowerManagementCapabilityOffset => _pmCapability;

    /// <summary>
    /// Adds the Power Management capability (PCI Bus Power Management Interface 1.2, section 3.2):
    /// version 3, D0 and D3hot only, no PME, No_Soft_Reset set (state survives D3hot → D0). In D3hot
    /// the function decodes no memory or I/O (section 5.3.1.4); writes of D1/D2, which it does not
    /// support, are discarded (section 3.2.4).
    /// </summary>
    protected int AddPowerManagementCapability()
    {
        int offset = AddCapability(PciCapabilityId.PowerManagement, 8);
        _pmCapability = offset;
        InitConfig(offset + 2, 2, 0x3);            // PMC: version 011b, nothing else supported
        InitConfig(offset + 4, 2, 1u << 3, 0x3);   // PMCSR: PowerState RW, No_Soft_Reset
        return offset;
    }

    /// <summary>True while the function is in D3hot (Power Management capability present).</summary>
    public bool InD3Hot
    {
        get { lock (_configLock) { return InD3HotLocked; } }
    }

    bool InD3HotLocked => _pmCapability != 0 && (_config[_pmCapability + 4] & 3) == 3;

    /// <summary>
    /// Adds the PCI Express capability, version 2 (PCIe Base 4.0, 7.5.3): a x1 link at 2.5 GT/s,
    /// 128-byte maximum payload, no ASPM, no FLR. Having it gives the function 4 KiB of
    /// configuration space (Linux's pci_cfg_space_size reads 0x100 only for PCIe functions).
    /// </summary>
    protected int AddPciExpressCapability(PciExpressDeviceType type = PciExpressDeviceType.Endpoint)
    {
        int offset = AddCapability(PciCapabilityId.PciExpress, 0x3C);
        _pcieCapability = offset;
        // 7.5.3.2 PCI Express Capabilities: version 2, device/port type.
        InitConfig(offset + 0x02, 2, 2u | (uint)type << 4);
        // 7.5.3.3 Device Capabilities: max payload 128 B (000b), no phantom functions, no extended
        // tags, unlimited L0s/L1 acceptable latency (111b each), role-based error reporting (bit 15,
        // mandatory since PCIe 1.1).
        InitConfig(offset + 0x04, 4, 7u << 6 | 7u << 9 | 1u << 15);
        // 7.5.3.4 Device Control: error reporting enables (3:0), relaxed ordering (4), max payload
        // (7:5), extended tag (8), no snoop (11), max read request (14:12) are software-set. Reset
        // values: relaxed ordering and no snoop enabled, max read request 512 B (010b).
        InitConfig(offset + 0x08, 2, 1u << 4 | 1u << 11 | 2u << 12, 0x79FF);
        // 7.5.3.5 Device Status: the four error-detected bits are RW1C.
        InitConfig(offset + 0x0A, 2, 0);
        _writeOneToClear[offset + 0x0A] = 0x0F;
        bool hasLink = type != PciExpressDeviceType.RootComplexIntegratedEndpoint;
        if (hasLink)
        {
            // 7.5.3.6 Link Capabilities: max speed 2.5 GT/s (vector bit 0 → 1), max width x1, no ASPM.
            InitConfig(offset + 0x0C, 4, 1u | 1u << 4);
            // 7.5.3.7 Link Control: read completion boundary (3), common clock (6), extended synch (7).
            InitConfig(offset + 0x10, 2, 0, 1u << 3 | 1u << 6 | 1u << 7);
            // 7.5.3.8 Link Status: current speed 2.5 GT/s, negotiated width x1, slot clock (12).
            InitConfig(offset + 0x12, 2, 1u | 1u << 4 | 1u << 12);
            // 7.5.3.18 Link Capabilities 2: supported speeds vector, bit 1 = 2.5 GT/s.
            InitConfig(offset + 0x2C, 4, 1u << 1);
            // 7.5.3.19 Link Control 2: target link speed 2.5 GT/s.
            InitConfig(offset + 0x30, 2, 1u);
        }
        return offset;
    }
}
