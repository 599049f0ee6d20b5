namespace SharpVisor.Devices.Iommu;

/// <summary>
/// Register offsets of a VT-d remapping hardware unit (Intel VT-d spec rev 4.x, 11.4, table
/// "Address mapping for remapping hardware registers"). The IOTLB registers and the fault
/// recording registers float at offsets given by ECAP.IRO and CAP.FRO.
/// </summary>
internal static class VtdReg
{
    public const int Ver = 0x00;        // 11.4.1 Version Register
    public const int Cap = 0x08;        // 11.4.2 Capability Register
    public const int Ecap = 0x10;       // 11.4.3 Extended Capability Register
    public const int Gcmd = 0x18;       // 11.4.4.1 Global Command Register (write only)
    public const int Gsts = 0x1C;       // 11.4.4.2 Global Status Register (read only)
    public const int Rtaddr = 0x20;     // 11.4.5 Root Table Address Register
    public const int Ccmd = 0x28;       // 11.4.6 Context Command Register
    public const int Fsts = 0x34;       // 11.4.9.2 Fault Status Register
    public const int Fectl = 0x38;      // 11.4.9.3 Fault Event Control Register
    public const int Fedata = 0x3C;     // 11.4.9.4 Fault Event Data Register
    public const int Feaddr = 0x40;     // 11.4.9.5 Fault Event Address Register
    public const int Feuaddr = 0x44;    // 11.4.9.6 Fault Event Upper Address Register
    public const int Pmen = 0x64;       // 11.4.12.1 Protected Memory Enable Register
    public const int Plmbase = 0x68;    // 11.4.12.2 Protected Low-Memory Base
    public const int Plmlimit = 0x6C;   // 11.4.12.3 Protected Low-Memory Limit
    public const int Phmbase = 0x70;    // 11.4.12.4 Protected High-Memory Base
    public const int Phmlimit = 0x78;   // 11.4.12.5 Protected High-Memory Limit
    public const int Iqh = 0x80;        // 11.4.10.1 Invalidation Queue Head
    public const int Iqt = 0x88;        // 11.4.10.2 Invalidation Queue Tail
    public const int Iqa = 0x90;        // 11.4.10.3 Invalidation Queue Address
    public const int Ics = 0x9C;        // 11.4.10.4 Invalidation Completion Status
    public const int Iectl = 0xA0;      // 11.4.10.5 Invalidation Event Control
    public const int Iedata = 0xA4;     // 11.4.10.6 Invalidation Event Data
    public const int Ieaddr = 0xA8;     // 11.4.10.7 Invalidation Event Address
    public const int Ieuaddr = 0xAC;    // 11.4.10.8 Invalidation Event Upper Address
    public const int Iqercd = 0xB0;     // 11.4.10.9 Invalidation Queue Error Record
    public const int Irta = 0xB8;       // 11.4.11.1 Interrupt Remapping Table Address

    /// <summary>End of the fixed register block this model implements; floating blocks must not overlap it.</summary>
    public const int FixedEnd = 0xC0;
}

/// <summary>GCMD/GSTS bits (11.4.4.1 / 11.4.4.2): the command bit and its status bit share a position.</summary>
internal static class VtdGcmd
{
    public const uint Te = 1u << 31;      // Translation Enable / TES
    public const uint Srtp = 1u << 30;    // Set Root Table Pointer (one-shot) / RTPS
    public const uint Sfl = 1u << 29;     // Set Fault Log (deprecated, CAP.AFL=0) / FLS
    public const uint Eafl = 1u << 28;    // Enable Advanced Fault Logging (CAP.AFL=0) / AFLS
    public const uint Wbf = 1u << 27;     // Write Buffer Flush (one-shot) / WBFS
    public const uint Qie = 1u << 26;     // Queued Invalidation Enable / QIES
    public const uint Ire = 1u << 25;     // Interrupt Remapping Enable / IRES
    public const uint Sirtp = 1u << 24;   // Set Interrupt Remap Table Pointer (one-shot) / IRTPS
    public const uint Cfi = 1u << 23;     // Compatibility Format Interrupt / CFIS
}

/// <summary>FSTS bits (11.4.9.2).</summary>
internal static class VtdFsts
{
    public const uint Pfo = 1u << 0;      // Primary Fault Overflow, RW1C
    public const uint Ppf = 1u << 1;      // Primary Pending Fault, RO (OR of the F bits)
    public const uint Afo = 1u << 2;      // Advanced Fault Overflow (CAP.AFL=0: reserved)
    public const uint Apf = 1u << 3;      // Advanced Pending Fault (CAP.AFL=0: reserved)
    public const uint Iqe = 1u << 4;      // Invalidation Queue Error, RW1C
    public const uint Ice = 1u << 5;      // Invalidation Completion Error, RW1C
    public const uint Ite = 1u << 6;      // Invalidation Time-out Error, RW1C
    public const int FriShift = 8;        // Fault Record Index, bits 15:8, RO
    public const uint Rw1cMask = Pfo | Iqe | Ice | Ite;
    /// <summary>Status fields whose being set suppresses a new fault event (11.4.9.3, FECTL.IP).</summary>
    public const uint EventConditions = Pfo | Ppf | Iqe | Ice | Ite;
}

/// <summary>Interrupt-event control bits shared by FECTL (11.4.9.3) and IECTL (11.4.10.5).</summary>
internal static class VtdEventCtl
{
    public const uint Im = 1u << 31;      // Interrupt Mask
    public const uint Ip = 1u << 30;      // Interrupt Pending, RO
}

/// <summary>
/// Fault reasons (VT-d spec rev 4.x, 7.1.3 "Fault conditions and remapping hardware behavior",
/// table of legacy-mode DMA remapping faults; 5.1.4.1 for interrupt remapping faults).
/// </summary>
public enum VtdFaultReason : byte
{
    None = 0x0,
    RootEntryNotPresent = 0x1,
    ContextEntryNotPresent = 0x2,
    ContextEntryInvalid = 0x3,
    AddressBeyondAgaw = 0x4,
    WriteNotPermitted = 0x5,
    ReadNotPermitted = 0x6,
    PagingEntryAccessError = 0x7,
    RootTableAccessError = 0x8,
    ContextTableAccessError = 0x9,
    RootEntryReserved = 0xA,
    ContextEntryReserved = 0xB,
    PagingEntryReserved = 0xC,
    TranslationTypeBlocked = 0xD,

    IrReservedInRequest = 0x20,
    IrIndexBeyondTable = 0x21,
    IrteNotPresent = 0x22,
    IrTableAccessError = 0x23,
    IrteReserved = 0x24,
    IrCompatibilityBlocked = 0x25,
    IrSourceIdMismatch = 0x26,
}

/// <summary>Invalidation granularities used by CCMD (11.4.6 CIRG/CAIG) and IOTLB (11.4.8.1 IIRG/IAIG).</summary>
internal static class VtdGranularity
{
    public const int Reserved = 0;
    public const int Global = 1;
    public const int Domain = 2;
    public const int DeviceOrPage = 3; // device-selective for the context cache, page-selective for the IOTLB
}
