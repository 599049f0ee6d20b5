namespace SharpVisor.Devices.Pci;

/// <summary>
/// Offsets of the type 0 configuration header (PCI Local Bus Specification 3.0, section 6.1,
/// figure 6-1; PCI Express Base Specification 4.0, section 7.5.1).
/// </summary>
public static class PciConfig
{
    public const int VendorId = 0x00;
    public const int DeviceId = 0x02;
    public const int Command = 0x04;
    public const int Status = 0x06;
    public const int RevisionId = 0x08;
    /// <summary>Class code: programming interface at 0x09, sub-class at 0x0A, base class at 0x0B.</summary>
    public const int ClassCode = 0x09;
    public const int CacheLineSize = 0x0C;
    public const int HeaderType = 0x0E;
    public const int Bar0 = 0x10;
    public const int SubsystemVendorId = 0x2C;
    public const int SubsystemId = 0x2E;
    public const int ExpansionRom = 0x30;
    public const int CapabilitiesPointer = 0x34;
    public const int InterruptLine = 0x3C;
    public const int InterruptPin = 0x3D;

    /// <summary>Header type bit 7: the device has more than one function (PCI 3.0, 6.2.1).</summary>
    public const byte HeaderTypeMultiFunction = 0x80;

    /// <summary>Conventional configuration space (the part 0xCF8/0xCFC can reach).</summary>
    public const int ConventionalSize = 256;
    /// <summary>PCI Express extended configuration space per function (reached through ECAM).</summary>
    public const int ExtendedSize = 4096;
    public const int BarCount = 6;
}

/// <summary>Command register bits (PCI 3.0, 6.2.2, figure 6-2).</summary>
[Flags]
public enum PciCommand : ushort
{
    None = 0,
    IoSpace = 1 << 0,
    MemorySpace = 1 << 1,
    BusMaster = 1 << 2,
    ParityErrorResponse = 1 << 6,
    SerrEnable = 1 << 8,
    /// <summary>Interrupt Disable: the function may not assert INTx (PCI 3.0, 6.2.2).</summary>
    InterruptDisable = 1 << 10,
}

/// <summary>Status register bits (PCI 3.0, 6.2.3, figure 6-3).</summary>
[Flags]
public enum PciStatus : ushort
{
    None = 0,
    /// <summary>The function's INTx condition, whatever Interrupt Disable says (read-only).</summary>
    InterruptStatus = 1 << 3,
    /// <summary>A capability list starts at the Capabilities Pointer (read-only).</summary>
    CapabilitiesList = 1 << 4,
    MasterDataParityError = 1 << 8,
    SignaledTargetAbort = 1 << 11,
    ReceivedTargetAbort = 1 << 12,
    ReceivedMasterAbort = 1 << 13,
    SignaledSystemError = 1 << 14,
    DetectedParityError = 1 << 15,
    /// <summary>The error bits software clears by writing 1 (RW1C).</summary>
    WriteOneToClear = MasterDataParityError | SignaledTargetAbort | ReceivedTargetAbort | ReceivedMasterAbort
        | SignaledSystemError | DetectedParityError,
}

/// <summary>Capability IDs (PCI Code and ID Assignment Specification 1.11, sections 2 and 3).</summary>
public static class PciCapabilityId
{
    public const byte PowerManagement = 0x01;
    public const byte Msi = 0x05;
    public const byte VendorSpecific = 0x09;
    public const byte PciExpress = 0x10;
    public const byte MsiX = 0x11;

    // Extended capabilities (16-bit IDs at 0x100+).
    public const ushort ExtendedAdvancedErrorReporting = 0x0001;
    public const ushort ExtendedVendorSpecific = 0x000B;
    /// <summary>Address Translation Services (PCIe Base 4.0, 10.5.1).</summary>
    public const ushort ExtendedAts = 0x000F;
}

/// <summary>What a Base Address Register decodes (PCI 3.0, 6.2.5.1).</summary>
public enum PciBarKind
{
    /// <summary>Not implemented: the register reads 0 and ignores writes.</summary>
    None,
    /// <summary>I/O space; bit 0 reads 1.</summary>
    Io,
    /// <summary>32-bit memory space (type 00b).</summary>
    Memory32,
    /// <summary>64-bit memory space (type 10b); the next BAR holds the upper 32 address bits.</summary>
    Memory64,
}

/// <summary>Device/port type field of the PCI Express Capabilities register (PCIe Base 4.0, 7.5.3.2).</summary>
public enum PciExpressDeviceType : byte
{
    Endpoint = 0x0,
    LegacyEndpoint = 0x1,
    RootComplexIntegratedEndpoint = 0x9,
}
