using SharpVisor.Core;

namespace SharpVisor.Devices.Iommu;

/// <summary>Adjusted guest address widths a unit supports (CAP.SAGAW, VT-d spec 11.4.2 bits 12:8).</summary>
[Flags]
public enum VtdAgaw
{
    None = 0,
    /// <summary>SAGAW bit 1: 39-bit AGAW, 3-level second-level tables.</summary>
    Levels3 = 1 << 1,
    /// <summary>SAGAW bit 2: 48-bit AGAW, 4-level tables.</summary>
    Levels4 = 1 << 2,
    /// <summary>SAGAW bit 3: 57-bit AGAW, 5-level tables.</summary>
    Levels5 = 1 << 3,
}

/// <summary>
/// Per-machine configuration of one VT-d remapping unit. Every switch maps to a CAP/ECAP field
/// (VT-d spec 11.4.2, 11.4.3); only features this model implements can be advertised.
/// </summary>
public sealed record VtdOptions
{
    /// <summary>MMIO base of the register block (the DRHD Register Base Address). q35 puts it at 0xFED90000.</summary>
    public ulong BaseAddress { get; init; } = 0xFED9_0000;

    /// <summary>VER register (11.4.1): major in bits 7:4, minor in 3:0. QEMU reports 1.0.</summary>
    public byte Version { get; init; } = 0x10;

    /// <summary>Host address width (DMAR HAW field): output addresses (page-table pointers, pages) above it are reserved bits.</summary>
    public int HostAddressWidth { get; init; } = 39;

    /// <summary>CAP.MGAW (bits 21:16 hold width-1): the largest input (DMA) address width.</summary>
    /// <remarks>48 by default: Linux 6.1 builds first-level tables with 4 or 5 levels only
    /// (domain_setup_first_level), so a first-level-capable unit needs MGAW of at least 48.</remarks>
    public int MaxGuestAddressWidth { get; init; } = 48;

    /// <summary>CAP.SAGAW: the page-table depths the unit walks.</summary>
    public VtdAgaw SupportedAgaw { get; init; } = VtdAgaw.Levels3 | VtdAgaw.Levels4 | VtdAgaw.Levels5;

    /// <summary>CAP.ND (bits 2:0): 4 + 2*ND domain-id bits. 6 means 16-bit domain ids.</summary>
    public int NumberOfDomainsField { get; init; } = 6;

    /// <summary>CAP.NFR+1: number of fault recording registers (1..256).</summary>
    public int FaultRecordingRegisters { get; init; } = 8;

    /// <summary>Byte offset of the fault recording registers (CAP.FRO holds offset/16).</summary>
    public int FaultRecordingOffset { get; init; } = 0x220;

    /// <summary>Byte offset of the IVA/IOTLB register pair (ECAP.IRO holds offset/16).</summary>
    public int IotlbRegisterOffset { get; init; } = 0xF0;

    /// <summary>CAP.CM: caching mode; not-present entries are never cached and software flushes on not-present→present.</summary>
    public bool CachingMode { get; init; }

    /// <summary>CAP.RWBF: software must flush the write buffer (GCMD.WBF) after updating tables.</summary>
    public bool RequiredWriteBufferFlush { get; init; }

    /// <summary>CAP.PSI and CAP.MAMV: page-selective IOTLB invalidation with an address mask up to this value.</summary>
    public bool PageSelectiveInvalidation { get; init; } = true;
    public int MaxAddressMaskValue { get; init; } = 18;

    /// <summary>CAP.SLLPS bit 0 (2 MiB) and bit 1 (1 GiB) second-level superpages.</summary>
    public bool Superpages2M { get; init; } = true;
    public bool Superpages1G { get; init; } = true;

    /// <summary>CAP.PLMR/PHMR: protected low/high memory regions.</summary>
    public bool ProtectedMemoryRegions { get; init; }

    /// <summary>ECAP.QI: queued invalidation.</summary>
    public bool QueuedInvalidation { get; init; } = true;

    /// <summary>ECAP.PT: pass-through context entries (TT=10b).</summary>
    public bool PassThrough { get; init; } = true;

    /// <summary>ECAP.SC: snoop control (the SNP bit of leaf entries is honoured rather than reserved).</summary>
    public bool SnoopControl { get; init; }

    /// <summary>ECAP.C: page-walk coherency. True here: walks read guest RAM directly, so no clflush is needed.</summary>
    public bool PageWalkCoherency { get; init; } = true;

    /// <summary>ECAP.IR: interrupt remapping.</summary>
    public bool InterruptRemapping { get; init; } = true;

    /// <summary>ECAP.EIM: extended (x2APIC, 32-bit destination) interrupt mode. Needs <see cref="InterruptRemapping"/>.</summary>
    public bool ExtendedInterruptMode { get; init; } = true;

    /// <summary>ECAP.SMTS (bit 43): scalable-mode translation (RTADDR.TTM=01b, 256-bit context entries, PASID tables, 256-bit descriptors).</summary>
    public bool ScalableMode { get; init; } = true;

    // FLTS, SLTS, PASID, FL1GP and FL5LP are advertised only with ScalableMode (they are scalable-mode features).

    /// <summary>ECAP.FLTS (bit 47): first-level (IA-32e format) translation in PASID entries (PGTT=001b).</summary>
    public bool FirstLevelTranslation { get; init; } = true;

    /// <summary>ECAP.SLTS (bit 46): second-level translation in PASID entries (PGTT=010b).</summary>
    public bool SecondLevelTranslation { get; init; } = true;

    /// <summary>ECAP.PASID (bit 40) and PSS (bits 39:35 = width-1): PASID width in bits; 0 means no PASID support.</summary>
    public int PasidBits { get; init; } = 20;

    /// <summary>CAP.FL1GP (bit 56): 1 GiB first-level pages.</summary>
    public bool FirstLevel1G { get; init; } = true;

    /// <summary>CAP.FL5LP (bit 60): 5-level first-level paging (PASID entry FLPM=01b).</summary>
    public bool FirstLevel5Level { get; init; } = true;

    /// <summary>ECAP.DT (bit 2): device-TLBs (PCIe ATS): translation requests, translated requests, device-TLB invalidation.</summary>
    public bool DeviceTlb { get; init; } = true;

    /// <summary>
    /// How long (virtual time) an invalidation wait descriptor waits for device-TLB invalidation
    /// completions before the unit reports an Invalidation Time-out Error (6.5.2.10, FSTS.ITE).
    /// </summary>
    public long DeviceTlbInvalidationTimeoutNs { get; init; } = 10_000_000;

    /// <summary>PASID-cache geometry (6.2.2): sets (a power of two) × ways.</summary>
    public int PasidCacheSets { get; init; } = 16;
    public int PasidCacheWays { get; init; } = 4;

    /// <summary>IOTLB geometry: sets (a power of two) × ways.</summary>
    public int IotlbSets { get; init; } = 64;
    public int IotlbWays { get; init; } = 8;

    /// <summary>Context-cache geometry: sets (a power of two) × ways.</summary>
    public int ContextCacheSets { get; init; } = 16;
    public int ContextCacheWays { get; init; } = 4;

    /// <summary>
    /// Paging-structure caches (6.2.4): cached non-leaf entries (PDE, PDPE, PML4E, PML5E of first-
    /// and second-level tables) let a walk after an IOTLB miss start below the deepest cached
    /// level. Off, every walk starts at the top (what QEMU does).
    /// </summary>
    public bool PagingStructureCaches { get; init; } = true;

    /// <summary>Paging-structure-cache geometry (one cache tagged by level): sets (a power of two) × ways.</summary>
    public int PagingStructureCacheSets { get; init; } = 16;
    public int PagingStructureCacheWays { get; init; } = 4;

    /// <summary>Interrupt entry cache geometry (entries, direct mapped by handle).</summary>
    public int InterruptEntryCacheEntries { get; init; } = 64;

    /// <summary>Size of the MMIO region: the 4 KiB page(s) covering the fixed, IOTLB and fault recording registers.</summary>
    public ulong RegionSize
    {
        get
        {
            int end = Math.Max(VtdReg.FixedEnd, Math.Max(IotlbRegisterOffset + 16, FaultRecordingOffset + 16 * FaultRecordingRegisters));
            return (ulong)((end + 4095) & ~4095);
        }
    }

    /// <summary>Rejects configurations no real unit could have (user errors, reported as one line).</summary>
    public void Validate()
    {
        static void Check(bool ok, string message)
        {
            if (!ok)
            {
                throw new UserErrorException($"VT-d options: {message}");
            }
        }
        Check(BaseAddress % 4096 == 0, "the register base must be 4 KiB aligned");
        Check(HostAddressWidth is >= 32 and <= 52, "the host address width must be 32..52 bits");
        Check(MaxGuestAddressWidth is >= 32 and <= 64, "MGAW must be 32..64 bits");
        Check((SupportedAgaw & ~(VtdAgaw.Levels3 | VtdAgaw.Levels4 | VtdAgaw.Levels5)) == 0 && SupportedAgaw != 0,
            "SAGAW must name at least one of 3, 4 or 5 levels (Linux refuses a zero SAGAW)");
        Check(NumberOfDomainsField is >= 0 and <= 6, "ND must be 0..6");
        Check(FaultRecordingRegisters is >= 1 and <= 256, "the number of fault recording registers must be 1..256");
        Check(FaultRecordingOffset % 16 == 0 && FaultRecordingOffset / 16 <= 0x3FF, "FRO must be 16-byte aligned and below 16 KiB");
        Check(IotlbRegisterOffset % 16 == 0 && IotlbRegisterOffset / 16 <= 0x3FF, "IRO must be 16-byte aligned and below 16 KiB");
        Check(IotlbRegisterOffset >= VtdReg.FixedEnd && FaultRecordingOffset >= VtdReg.FixedEnd, "IRO/FRO must not overlap the fixed registers (0x00-0xBF)");
        int fEnd = FaultRecordingOffset + 16 * FaultRecordingRegisters;
        Check(IotlbRegisterOffset + 16 <= FaultRecordingOffset || IotlbRegisterOffset >= fEnd, "the IOTLB registers overlap the fault recording registers");
        Check(MaxAddressMaskValue is >= 0 and <= 63, "MAMV must be 0..63");
        Check(IotlbSets > 0 && (IotlbSets & (IotlbSets - 1)) == 0 && IotlbWays is >= 1 and <= 64, "the IOTLB needs a power-of-two set count and 1..64 ways");
        Check(ContextCacheSets > 0 && (ContextCacheSets & (ContextCacheSets - 1)) == 0 && ContextCacheWays is >= 1 and <= 64,
            "the context cache needs a power-of-two set count and 1..64 ways");
        Check(PagingStructureCacheSets > 0 && (PagingStructureCacheSets & (PagingStructureCacheSets - 1)) == 0 && PagingStructureCacheWays is >= 1 and <= 64,
            "the paging-structure cache needs a power-of-two set count and 1..64 ways");
        Check(InterruptEntryCacheEntries > 0 && (InterruptEntryCacheEntries & (InterruptEntryCacheEntries - 1)) == 0, "the interrupt entry cache needs a power-of-two size");
        Check(!ExtendedInterruptMode || InterruptRemapping, "EIM needs interrupt remapping");
        Check(!InterruptRemapping || QueuedInvalidation, "interrupt remapping needs queued invalidation (spec 11.4.3, ECAP.IR)");
        Check(!ScalableMode || QueuedInvalidation, "scalable mode needs queued invalidation (its caches are invalidated with 256-bit descriptors, 6.5.2)");
        Check(!ScalableMode || FirstLevelTranslation || SecondLevelTranslation || PassThrough, "scalable mode needs first-level, second-level or pass-through translation");
        Check(!ScalableMode || !FirstLevelTranslation || MaxGuestAddressWidth >= 48, "first-level translation needs MGAW >= 48 (4-level IA-32e paging)");
        Check(PasidBits is >= 0 and <= 20, "the PASID width must be 0..20 bits");
        Check(!ScalableMode || PasidBits > 0, "scalable mode needs PASID support (RID_PASID names a PASID entry)");
        Check(DeviceTlbInvalidationTimeoutNs > 0, "the device-TLB invalidation timeout must be positive");
        Check(PasidCacheSets > 0 && (PasidCacheSets & (PasidCacheSets - 1)) == 0 && PasidCacheWays is >= 1 and <= 64,
            "the PASID cache needs a power-of-two set count and 1..64 ways");
    }

    /// <summary>The Capability Register value (11.4.2).</summary>
    public ulong CapabilityRegister()
    {
        ulong cap = (ulong)NumberOfDomainsField;                        // ND, bits 2:0
        if (RequiredWriteBufferFlush) cap |= 1UL << 4;                  // RWBF
        if (ProtectedMemoryRegions) cap |= (1UL << 5) | (1UL << 6);     // PLMR, PHMR
        if (CachingMode) cap |= 1UL << 7;                               // CM
        cap |= (ulong)SupportedAgaw << 8;                               // SAGAW, bits 12:8
        cap |= (ulong)(MaxGuestAddressWidth - 1) << 16;                 // MGAW, bits 21:16
        cap |= (ulong)(FaultRecordingOffset / 16) << 24;                // FRO, bits 33:24
        if (Superpages2M) cap |= 1UL << 34;                             // SLLPS bit 0: 2 MiB
        if (Superpages1G) cap |= 1UL << 35;                             // SLLPS bit 1: 1 GiB
        if (PageSelectiveInvalidation)
        {
            cap |= 1UL << 39;                                           // PSI
            cap |= (ulong)MaxAddressMaskValue << 48;                    // MAMV, bits 53:48
        }
        cap |= (ulong)(FaultRecordingRegisters - 1) << 40;              // NFR, bits 47:40
        if (ScalableMode && FirstLevelTranslation)
        {
            if (FirstLevel1G) cap |= 1UL << 56;                         // FL1GP
            if (FirstLevel5Level) cap |= 1UL << 60;                     // FL5LP
        }
        // DWD/DRD (bits 54/55): write/read draining. Requests complete synchronously here, so
        // draining is implied; advertising them lets drivers set DW/DR, which we accept.
        cap |= (1UL << 54) | (1UL << 55);
        return cap;
    }

    /// <summary>The Extended Capability Register value (11.4.3).</summary>
    public ulong ExtendedCapabilityRegister()
    {
        ulong ecap = 0;
        if (PageWalkCoherency) ecap |= 1UL << 0;                        // C
        if (QueuedInvalidation) ecap |= 1UL << 1;                       // QI
        if (DeviceTlb) ecap |= 1UL << 2;                                // DT: device-TLBs (ATS)
        if (InterruptRemapping) ecap |= 1UL << 3;                       // IR
        if (ExtendedInterruptMode) ecap |= 1UL << 4;                    // EIM
        if (PassThrough) ecap |= 1UL << 6;                              // PT
        if (SnoopControl) ecap |= 1UL << 7;                             // SC
        ecap |= (ulong)(IotlbRegisterOffset / 16) << 8;                 // IRO, bits 17:8
        if (InterruptRemapping) ecap |= 0xFUL << 20;                    // MHMV (bits 23:20): any IEC index mask is honoured
        if (ScalableMode)
        {
            // Requests with PASID may carry the supervisor (SRS, bit 31) and execute (ERS, bit 30)
            // attributes; both are honoured by first-level translation.
            ecap |= (1UL << 30) | (1UL << 31);
            ecap |= 1UL << 40;                                          // PASID
            ecap |= (ulong)(PasidBits - 1) << 35;                       // PSS, bits 39:35
            ecap |= 1UL << 43;                                          // SMTS
            if (SecondLevelTranslation) ecap |= 1UL << 46;              // SLTS
            if (FirstLevelTranslation) ecap |= 1UL << 47;               // FLTS
            if (PageWalkCoherency) ecap |= 1UL << 48;                   // SMPWC: PASID/first-level walks are coherent too
        }
        // NEST (26), PRS (29), PDS, VCS stay clear: nested translation and page requests are not
        // implemented; a PASID entry asking for nested translation is reported as invalid (SPT.4).
        return ecap;
    }

    /// <summary>Domain-id width implied by CAP.ND (11.4.2).</summary>
    public int DomainIdBits => 4 + 2 * NumberOfDomainsField;
}
