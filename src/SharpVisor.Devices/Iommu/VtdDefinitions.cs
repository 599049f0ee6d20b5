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

    // ---- Scalable-mode DMA remapping faults (7.1.3, scalable-mode table; condition codes in comments) ----
    /// <summary>SRTA.1: reading the scalable-mode root table failed.</summary>
    SmRootTableAccessError = 0x30,
    /// <summary>SRTA.2: RTADDR.TTM holds a value the unit does not support (QEMU: VTD_FR_RTADDR_INV_TTM).</summary>
    SmRootTableTypeInvalid = 0x31,
    /// <summary>SRTA.3: non-zero reserved field in the lower half (LP/LCTP) of a scalable-mode root entry.</summary>
    SmRootEntryLowerReserved = 0x32,
    /// <summary>SRTA.4: non-zero reserved field in the upper half (UP/UCTP) of a scalable-mode root entry.</summary>
    SmRootEntryUpperReserved = 0x33,
    /// <summary>SRTA.5/6: the present bit (LP for devfn 0-127, UP for 128-255) is clear.</summary>
    SmRootEntryNotPresent = 0x34,
    /// <summary>SCT.1: reading the scalable-mode context table failed.</summary>
    SmContextTableAccessError = 0x40,
    /// <summary>SCT.2: the present bit of the scalable-mode context entry is clear.</summary>
    SmContextEntryNotPresent = 0x41,
    /// <summary>SCT.3: non-zero reserved field in a present scalable-mode context entry.</summary>
    SmContextEntryReserved = 0x42,
    /// <summary>SCT.4: invalid programming of a present scalable-mode context entry.</summary>
    SmContextEntryInvalid = 0x43,
    /// <summary>SCT.5: translation request or translated request while DTE is 0.</summary>
    SmDeviceTlbDisabled = 0x44,
    /// <summary>SCT.6: request-with-PASID while PASIDE is 0.</summary>
    SmPasidDisabled = 0x45,
    /// <summary>SCT.7: request PASID beyond the PASID directory size (PDTS).</summary>
    SmPasidBeyondDirectory = 0x46,
    /// <summary>SCT.8: page request while PRE is 0 (QEMU: VTD_FR_SM_PRE_ABS).</summary>
    SmPageRequestDisabled = 0x47,
    /// <summary>SPD.1: reading the PASID directory entry failed.</summary>
    PasidDirectoryAccessError = 0x50,
    /// <summary>SPD.2: the present bit of the PASID directory entry is clear.</summary>
    PasidDirectoryEntryNotPresent = 0x51,
    /// <summary>SPD.3: non-zero reserved field in a present PASID directory entry.</summary>
    PasidDirectoryEntryReserved = 0x52,
    /// <summary>SPT.1: reading the PASID table entry failed.</summary>
    PasidTableAccessError = 0x58,
    /// <summary>SPT.2: the present bit of the PASID table entry is clear.</summary>
    PasidEntryNotPresent = 0x59,
    /// <summary>SPT.3: non-zero reserved field in a present PASID table entry.</summary>
    PasidEntryReserved = 0x5A,
    /// <summary>SPT.4: invalid programming of a PASID table entry (PGTT not supported, AW/FLPM not supported...).</summary>
    PasidEntryInvalid = 0x5B,
    /// <summary>SPT.5: supervisor request while SRE is 0 in the PASID entry.</summary>
    PasidSupervisorDisabled = 0x5C,
    /// <summary>SPT.6: execute request while ERE is 0 in the PASID entry.</summary>
    PasidExecuteDisabled = 0x5D,
    /// <summary>SFS.1: reading a first-level paging entry failed.</summary>
    FirstLevelAccessError = 0x70,
    /// <summary>SFS.2: the present bit of a first-level paging entry is clear.</summary>
    FirstLevelNotPresent = 0x71,
    /// <summary>SFS.3: non-zero reserved field in a present first-level paging entry.</summary>
    FirstLevelReserved = 0x72,
    /// <summary>SFS.4: the first-level table pointer (FLPTR) in the PASID entry is invalid.</summary>
    FirstLevelPointerInvalid = 0x73,
    /// <summary>SSS.1: reading a second-level paging entry failed (scalable mode).</summary>
    SmSecondLevelAccessError = 0x78,
    /// <summary>SSS.2: non-zero reserved field in a second-level paging entry (scalable mode).</summary>
    SmSecondLevelReserved = 0x7A,
    /// <summary>SGN.1: first-level input address is not canonical (QEMU: VTD_FR_FS_NON_CANONICAL).</summary>
    SmNonCanonical = 0x80,
    /// <summary>SGN.2: user request to a supervisor page (U/S clear) (QEMU: VTD_FR_FS_PAGING_ENTRY_US).</summary>
    SmPrivilegeViolation = 0x81,
    /// <summary>SGN.3: execute request to an execute-disabled (XD) page.</summary>
    SmExecuteViolation = 0x82,
    /// <summary>SGN.4: input address beyond the address width of the translation (AW / first-level paging mode).</summary>
    SmAddressBeyondWidth = 0x83,
    /// <summary>SGN.5: read request without read permission (second-level R=0 or not present).</summary>
    SmReadNotPermitted = 0x84,
    /// <summary>SGN.6: write request without write permission (QEMU: VTD_FR_SM_WRITE).</summary>
    SmWriteNotPermitted = 0x85,
    /// <summary>SGN.8: output address in the interrupt address range (QEMU: VTD_FR_SM_INTERRUPT_ADDR).</summary>
    SmInterruptAddress = 0x87,
    /// <summary>SFS.10: the atomic Accessed/Dirty update of a first-level entry failed (QEMU: VTD_FR_FS_BIT_UPDATE_FAILED).</summary>
    FirstLevelBitUpdateFailed = 0x91,
}

/// <summary>Invalidation granularities used by CCMD (11.4.6 CIRG/CAIG) and IOTLB (11.4.8.1 IIRG/IAIG).</summary>
internal static class VtdGranularity
{
    public const int Reserved = 0;
    public const int Global = 1;
    public const int Domain = 2;
    public const int DeviceOrPage = 3; // device-selective for the context cache, page-selective for the IOTLB
}
