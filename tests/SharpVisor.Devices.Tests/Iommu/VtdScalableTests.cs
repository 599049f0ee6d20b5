using SharpVisor.Core;
using SharpVisor.Devices.Iommu;
using static SharpVisor.Devices.Tests.Iommu.VtdFixture;
using static SharpVisor.Devices.Tests.Iommu.VtdScalableFixture;

namespace SharpVisor.Devices.Tests.Iommu;

/// <summary>Scalable-mode translation (VT-d spec 3.4.3, 3.6, 9.2, 9.4-9.7) as Linux 6.1 programs it with ECAP.SMTS.</summary>
public class VtdScalableTests
{
    const ushort Dev = 0x0010;      // 00:02.0
    const ushort Domain = 7;
    const ulong Iova = 0x1234_5000;
    const ulong Target = 0x60_0000;

    [Fact]
    public void CapabilitiesAdvertiseScalableModeAsLinuxChecksIt()
    {
        using var s = new VtdScalableFixture();
        ulong ecap = s.F.R64(0x10), cap = s.F.R64(0x08);
        Assert.Equal(1UL, (ecap >> 43) & 1);    // SMTS: Linux sm_supported()
        Assert.Equal(1UL, (ecap >> 47) & 1);    // FLTS: first_level_by_default()
        Assert.Equal(1UL, (ecap >> 46) & 1);    // SLTS
        Assert.Equal(1UL, (ecap >> 40) & 1);    // PASID
        Assert.Equal(19UL, (ecap >> 35) & 0x1F); // PSS: 20-bit PASIDs
        Assert.Equal(1UL, (ecap >> 2) & 1);     // DT
        Assert.Equal(0UL, (ecap >> 26) & 1);    // NEST not offered
        Assert.Equal(1UL, (cap >> 56) & 1);     // FL1GP
        Assert.Equal(1UL, (cap >> 60) & 1);     // FL5LP
        Assert.True((cap >> 16 & 0x3F) + 1 >= 48); // MGAW covers 4-level first-level tables
        using var legacy = new VtdScalableFixture(new VtdOptions { ScalableMode = false });
        Assert.Equal(0UL, legacy.F.R64(0x10) & ((1UL << 43) | (1UL << 47) | (1UL << 46) | (1UL << 40)));
        legacy.F.W64(Iqa, 0x40_0000 | (1UL << 11));
        Assert.Equal(0UL, legacy.F.R64(Iqa) & (1UL << 11));   // DW is reserved without SMTS
    }

    [Theory]
    [InlineData(4)]
    [InlineData(5)]
    public void FirstLevelDmaThroughRidPasidSetsAccessedAndDirty(int levels)
    {
        using var s = new VtdScalableFixture();
        ulong dir = s.SetContext(Dev, ridPasid: 0);
        ulong fl = s.SetFirstLevel(dir, 0, Domain, levels);
        s.MapFirstLevel(fl, levels, Iova, Target);
        s.EnableScalableTranslation();
        var dma = s.Unit.DmaSpaceFor(Dev);
        var back = new byte[3];
        Assert.Equal(DmaStatus.Ok, dma.Read(Iova + 0x10, back));
        var slots = s.FirstLevelSlots(fl, levels, Iova);
        Assert.Equal(levels, slots.Count);
        Assert.All(slots, slot => Assert.NotEqual(0UL, s.Ram.ReadU64(slot) & FlA));   // A in every entry used
        Assert.Equal(0UL, s.Ram.ReadU64(slots[^1]) & FlD);                            // a read leaves D clear
        Assert.Equal(DmaStatus.Ok, dma.Write(Iova + 0x10, [1, 2, 3]));
        Assert.Equal(new byte[] { 1, 2, 3 }, s.F.ReadRam(Target + 0x10, 3));
        Assert.NotEqual(0UL, s.Ram.ReadU64(slots[^1]) & FlD);                         // the write set D
        Assert.Equal(DmaStatus.Ok, dma.Write(Iova + 0x20, [4]));                      // D set: an IOTLB hit
        var c = s.Unit.Counters;
        Assert.Equal(2, c.FirstLevelWalks.Value);     // the read, then the write that had to set D
        Assert.Equal(1, c.IotlbHits4K.Value);
        Assert.Equal(1, c.PasidCacheMisses.Value);
        // The write that set D consulted the PASID cache; the last write hit the requester's
        // translation snapshot (same page, D set), which needs no PASID-cache lookup.
        Assert.Equal(1, c.PasidCacheHits.Value);
        Assert.Equal(0, c.SecondLevelWalks.Value);
        Assert.Equal(0UL, s.F.R32(Fsts));
    }

    [Fact]
    public void FirstLevelLargePagesAndExtendedAccessed()
    {
        using var s = new VtdScalableFixture();
        ulong dir = s.SetContext(Dev);
        ulong fl = s.SetFirstLevel(dir, 0, Domain, eafe: true);
        s.MapFirstLevel(fl, 4, 0x4000_0000, 0, leafLevel: 3);           // 1 GiB → 0
        s.MapFirstLevel(fl, 4, 0x8000_0000, 0x20_0000, leafLevel: 2);   // 2 MiB → 2 MiB
        s.EnableScalableTranslation();
        var dma = s.Unit.DmaSpaceFor(Dev);
        Assert.Equal(DmaStatus.Ok, dma.Write(0x4000_0000 + 0x123_4560, [7]));
        Assert.Equal(7, s.F.ReadRam(0x123_4560, 1)[0]);
        Assert.Equal(DmaStatus.Ok, dma.Write(0x8000_0000 + 0x1F_F000, [9]));
        Assert.Equal(9, s.F.ReadRam(0x3F_F000, 1)[0]);
        ulong leaf = s.FirstLevelSlots(fl, 4, 0x8000_0000)[^1];
        Assert.NotEqual(0UL, s.Ram.ReadU64(leaf) & (1UL << 10));          // EA with EAFE=1
        Assert.Equal(1, s.Unit.Counters.IotlbFills1G.Value);
        Assert.Equal(1, s.Unit.Counters.IotlbFills2M.Value);
    }

    [Fact]
    public void FirstLevel1GPageWithoutFl1gpIsReserved()
    {
        using var s = new VtdScalableFixture(new VtdOptions { FirstLevel1G = false });
        ulong dir = s.SetContext(Dev);
        ulong fl = s.SetFirstLevel(dir, 0, Domain);
        s.MapFirstLevel(fl, 4, 0x4000_0000, 0, leafLevel: 3);
        s.EnableScalableTranslation();
        AssertBlocked(s, 0x4000_0000, write: true, VtdFaultReason.FirstLevelReserved);
    }

    /// <summary>Requests without PASID are user requests: U/S=0 anywhere on the path faults (SGN.2, 0x81).</summary>
    [Fact]
    public void FirstLevelUserRequestToSupervisorPageFaults()
    {
        using var s = new VtdScalableFixture();
        ulong dir = s.SetContext(Dev);
        ulong fl = s.SetFirstLevel(dir, 0, Domain);
        s.MapFirstLevel(fl, 4, Iova, Target, leafFlags: FlP | FlRw);     // supervisor page
        s.EnableScalableTranslation();
        s.F.Fill(Target, 8, 0xAA);
        AssertBlocked(s, Iova, write: true, VtdFaultReason.SmPrivilegeViolation);
        Assert.All(s.F.ReadRam(Target, 8), b => Assert.Equal(0xAA, b));
        Assert.Equal(0UL, s.Ram.ReadU64(s.FirstLevelSlots(fl, 4, Iova)[^1]) & FlD);   // no dirty update on a fault
    }

    [Fact]
    public void SupervisorRequestsNeedSreAndHonourWpe()
    {
        using var s = new VtdScalableFixture();
        ulong dir = s.SetContext(Dev);
        ulong fl = s.SetFirstLevel(dir, 5, Domain, sre: true, wpe: false);
        s.MapFirstLevel(fl, 4, Iova, Target, leafFlags: FlP);            // supervisor, read-only
        ulong fl6 = s.SetFirstLevel(dir, 6, Domain, sre: true, wpe: true);
        s.MapFirstLevel(fl6, 4, Iova, Target, leafFlags: FlP);
        s.SetFirstLevel(dir, 7, Domain, sre: false);
        s.EnableScalableTranslation();
        // WPE=0: a supervisor may write a read-only page (like CR0.WP=0).
        Assert.Equal(DmaStatus.Ok, s.Unit.DmaSpaceFor(Dev, 5, privileged: true).Write(Iova, [1]));
        Assert.Equal(1, s.F.ReadRam(Target, 1)[0]);
        // WPE=1: it may not.
        Assert.Equal(DmaStatus.Blocked, s.Unit.DmaSpaceFor(Dev, 6, privileged: true).Write(Iova, [2]));
        Assert.Equal((int)VtdFaultReason.SmWriteNotPermitted, Reason(s.F.FaultRecord(0).High));
        // SRE=0: supervisor requests are refused at the PASID entry (SPT.5).
        Assert.Equal(DmaStatus.Blocked, s.Unit.DmaSpaceFor(Dev, 7, privileged: true).Read(Iova, new byte[1]));
        var (_, high) = s.F.FaultRecord(1);
        Assert.Equal((int)VtdFaultReason.PasidSupervisorDisabled, Reason(high));
        Assert.Equal(1UL, (high >> 31) & 1);                    // PP: the request had a PASID
        Assert.Equal(7UL, (high >> 40) & 0xF_FFFF);             // PV (Linux dma_frcd_pasid_value)
        Assert.Equal(1, s.F.ReadRam(Target, 1)[0]);
    }

    [Fact]
    public void FirstLevelReadOnlyPageRefusesUserWrites()
    {
        using var s = new VtdScalableFixture();
        ulong dir = s.SetContext(Dev);
        ulong fl = s.SetFirstLevel(dir, 0, Domain);
        // The leaf allows writes but the PML4E does not: R/W is the AND along the walk.
        s.MapFirstLevel(fl, 4, Iova, Target, upperFlags: FlP | FlUs);
        s.EnableScalableTranslation();
        s.F.Fill(Target, 8, 0xAA);
        Assert.Equal(DmaStatus.Ok, s.Unit.DmaSpaceFor(Dev).Read(Iova, new byte[4]));
        AssertBlocked(s, Iova, write: true, VtdFaultReason.SmWriteNotPermitted);
        Assert.All(s.F.ReadRam(Target, 8), b => Assert.Equal(0xAA, b));
    }

    [Fact]
    public void ExecuteRequestsNeedEreAndNoXd()
    {
        using var s = new VtdScalableFixture();
        ulong dir = s.SetContext(Dev, dte: true);    // DTE=1: translation requests allowed
        ulong fl = s.SetFirstLevel(dir, 3, Domain, ere: true);
        s.MapFirstLevel(fl, 4, 0x1000, 0x61_0000);
        s.MapFirstLevel(fl, 4, 0x2000, 0x62_0000, leafFlags: FlP | FlRw | FlUs | FlXd);
        s.SetFirstLevel(dir, 4, Domain, ere: false);
        s.EnableScalableTranslation();
        var x = s.Unit.AtsTranslate(Dev, 3, 0x1000, write: false, execute: true);
        Assert.Equal(AtsPermissions.Read | AtsPermissions.Execute, x.Permissions & (AtsPermissions.Read | AtsPermissions.Execute));
        var xd = s.Unit.AtsTranslate(Dev, 3, 0x2000, write: false, execute: true);
        Assert.Equal(AtsStatus.Success, xd.Status);
        Assert.Equal(AtsPermissions.Read, xd.Permissions & (AtsPermissions.Read | AtsPermissions.Execute));  // XD: no Exe
        var noEre = s.Unit.AtsTranslate(Dev, 4, 0x1000, write: false, execute: true);
        Assert.Equal(AtsStatus.UnsupportedRequest, noEre.Status);
        Assert.Equal((int)VtdFaultReason.PasidExecuteDisabled, Reason(s.F.FaultRecord(0).High));
    }

    [Fact]
    public void FirstLevelAddressesMustBeCanonical()
    {
        using var s = new VtdScalableFixture();
        ulong dir = s.SetContext(Dev);
        s.SetFirstLevel(dir, 0, Domain, levels: 4);
        s.EnableScalableTranslation();
        AssertBlocked(s, 1UL << 47, write: false, VtdFaultReason.SmNonCanonical);
    }

    [Fact]
    public void SecondLevelAndPassThroughPasidEntries()
    {
        using var s = new VtdScalableFixture();
        ulong dir = s.SetContext(Dev, ridPasid: 1);
        ulong sl = s.SetSecondLevel(dir, 1, Domain, levels: 4);
        s.F.Map(sl, 4, Iova, Target);
        s.F.Map(sl, 4, Iova + 0x1000, Target + 0x1000, read: true, write: false);
        const ushort Dev2 = 0x0018;
        ulong dir2 = s.SetContext(Dev2);
        s.SetPassThrough(dir2, 0, 1);
        s.EnableScalableTranslation();
        var dma = s.Unit.DmaSpaceFor(Dev);
        Assert.Equal(DmaStatus.Ok, dma.Write(Iova + 8, [5]));
        Assert.Equal(5, s.F.ReadRam(Target + 8, 1)[0]);
        Assert.Equal(1, s.Unit.Counters.SecondLevelWalks.Value);
        Assert.Equal(DmaStatus.Ok, s.Unit.DmaSpaceFor(Dev2).Write(0x70_0000, [6]));   // PGTT=100b: identity
        Assert.Equal(6, s.F.ReadRam(0x70_0000, 1)[0]);
        Assert.Equal(1, s.Unit.Counters.PassThroughDma.Value);
        // Scalable-mode second-level faults use the SGN/SSS reasons.
        Assert.Equal(DmaStatus.Blocked, dma.Write(Iova + 0x1000, [1]));
        Assert.Equal((int)VtdFaultReason.SmWriteNotPermitted, Reason(s.F.FaultRecord(0).High));
        Assert.Equal(DmaStatus.Blocked, dma.Read(Iova + 0x5000, new byte[1]));      // not mapped: R=W=0
        Assert.Equal((int)VtdFaultReason.SmReadNotPermitted, Reason(s.F.FaultRecord(1).High));
        Assert.Equal(DmaStatus.Blocked, dma.Read(1UL << 50, new byte[1]));          // beyond 48-bit AW
        Assert.Equal((int)VtdFaultReason.SmAddressBeyondWidth, Reason(s.F.FaultRecord(2).High));
        Assert.Equal(0UL, s.F.FaultRecord(2).High & (1UL << 31));                  // no PASID in the request
    }

    /// <summary>Every scalable-mode structure fault, each on a fresh unit: blocked, memory unchanged, the right reason.</summary>
    [Theory]
    [InlineData(0x31)]
    [InlineData(0x32)]
    [InlineData(0x34)]
    [InlineData(0x41)]
    [InlineData(0x42)]
    [InlineData(0x43)]
    [InlineData(0x45)]
    [InlineData(0x46)]
    [InlineData(0x50)]
    [InlineData(0x51)]
    [InlineData(0x52)]
    [InlineData(0x59)]
    [InlineData(0x5A)]
    [InlineData(0x5B)]
    [InlineData(0x70)]
    [InlineData(0x71)]
    [InlineData(0x72)]
    [InlineData(0x73)]
    public void EachScalableStructureFaultBlocksAndRecords(int expected)
    {
        using var s = new VtdScalableFixture(new VtdOptions { FirstLevel5Level = expected != 0x5B });
        var dma = s.Unit.DmaSpaceFor(Dev);
        ulong dir, fl;
        ulong rtaddrTtm = 1;
        switch (expected)
        {
            case 0x31:
                rtaddrTtm = 2;                                         // TTM=10b is reserved
                break;
            case 0x32:
                s.Ram.WriteU64(RootTable, s.F.AllocTable() | 1 | 0x20);  // reserved bit 5 of the lower half
                break;
            case 0x34:
                s.ContextTable(0x80);                                  // only UP set; Dev is in the lower half
                break;
            case 0x41:
                s.ContextTable(Dev);
                break;
            case 0x42:
                s.WriteContextRaw(Dev, s.F.AllocTable() | 1 | 0x20, 0);     // bit 5 reserved
                break;
            case 0x43:
                s.WriteContextRaw(Dev, s.F.AllocTable() | 1 | 8, 1UL << 20); // RID_PRIV without support
                break;
            case 0x45:
                dir = s.SetContext(Dev, pasidEnable: false);
                s.SetFirstLevel(dir, 9, Domain);
                dma = s.Unit.DmaSpaceFor(Dev, 9);
                break;
            case 0x46:
                s.SetContext(Dev, pdts: 0);                            // 128 directory entries: PASIDs < 8192
                dma = s.Unit.DmaSpaceFor(Dev, 0x2000);
                break;
            case 0x50:
                s.SetContext(Dev, directory: 0x7000_0000);             // PASID directory in no RAM
                break;
            case 0x51:
                s.SetContext(Dev);                                     // empty directory
                break;
            case 0x52:
                dir = s.SetContext(Dev);
                s.Ram.WriteU64(dir, s.F.AllocTable() | 1 | 0x10);      // reserved bit 4
                break;
            case 0x59:
                dir = s.SetContext(Dev);
                s.PasidEntrySlot(dir, 0);                              // table present, entry not
                break;
            case 0x5A:
                dir = s.SetContext(Dev);
                s.WritePasidEntry(dir, 0, (1UL << 6) | 1, Domain, s.F.AllocTable(), 0, 1);   // q4 reserved
                break;
            case 0x5B:
                dir = s.SetContext(Dev);
                s.SetFirstLevel(dir, 0, Domain, levels: 5);            // FLPM=01b without FL5LP
                break;
            case 0x70:
                dir = s.SetContext(Dev);
                fl = s.SetFirstLevel(dir, 0, Domain);
                s.Ram.WriteU64(fl + ((Iova >> 39) & 511) * 8, 0x7000_0000 | FlP | FlRw | FlUs);  // next table in no RAM
                break;
            case 0x71:
                dir = s.SetContext(Dev);
                s.SetFirstLevel(dir, 0, Domain);                       // empty first-level table
                break;
            case 0x72:
                dir = s.SetContext(Dev);
                fl = s.SetFirstLevel(dir, 0, Domain);
                s.MapFirstLevel(fl, 4, Iova, 1UL << 45);               // output beyond the 39-bit HAW
                break;
            case 0x73:
                dir = s.SetContext(Dev);
                s.WritePasidEntry(dir, 0, (1UL << 6) | 1, Domain, 0x7000_0000);   // FLPTR in no RAM
                break;
        }
        s.F.W64(Rtaddr, RootTable | (rtaddrTtm << 10));
        s.F.Command(Srtp);
        s.F.Command(Te);
        s.F.Fill(Target, 16, 0xAA);
        Assert.Equal(DmaStatus.Blocked, dma.Write(Iova, new byte[16]));
        Assert.All(s.F.ReadRam(Target, 16), b => Assert.Equal(0xAA, b));
        var (low, high) = s.F.FaultRecord(0);
        Assert.True(F(high));
        Assert.Equal(expected, Reason(high));
        Assert.Equal(Dev, (ushort)high);
        Assert.Equal(Iova, low);
        Assert.Equal(1, s.Unit.Counters.FaultsByReason((VtdFaultReason)expected).Value);
    }

    [Fact]
    public void NestedTranslationIsReportedAsAnInvalidPasidEntry()
    {
        using var s = new VtdScalableFixture();
        ulong dir = s.SetContext(Dev);
        s.WritePasidEntry(dir, 0, s.F.AllocTable() | (3UL << 6) | (2UL << 2) | 1, Domain, s.F.AllocTable());
        s.EnableScalableTranslation();
        AssertBlocked(s, Iova, write: false, VtdFaultReason.PasidEntryInvalid);
    }

    [Fact]
    public void FpdInThePasidEntrySuppressesItsFaults()
    {
        using var s = new VtdScalableFixture();
        ulong dir = s.SetContext(Dev);
        s.WritePasidEntry(dir, 0, (1UL << 6) | 2 | 1, Domain, s.F.AllocTable());   // FPD=1, empty FL table
        s.EnableScalableTranslation();
        Assert.Equal(DmaStatus.Blocked, s.Unit.DmaSpaceFor(Dev).Read(Iova, new byte[1]));
        Assert.False(F(s.F.FaultRecord(0).High));
        Assert.Equal(1, s.Unit.Counters.FaultsSuppressedByFpd.Value);
    }

    [Fact]
    public void LegacyModeStillWorksWhenScalableModeIsAdvertised()
    {
        // intel_iommu=sm_off: Linux writes RTADDR with TTM=00b and 128-bit context entries.
        using var f = new VtdFixture();
        ulong slpt = f.SetContext(Dev, Domain, 4);
        f.Map(slpt, 4, Iova, Target);
        f.EnableTranslation();
        Assert.Equal(DmaStatus.Ok, f.Unit.DmaSpaceFor(Dev).Write(Iova, [3]));
        Assert.Equal(3, f.ReadRam(Target, 1)[0]);
    }

    // ---- PASID cache and PASID-based IOTLB invalidation (6.5.2.2, 6.5.2.4) ----

    [Theory]
    [InlineData(0)]     // domain-selective
    [InlineData(1)]     // PASID-selective
    [InlineData(3)]     // global
    public void PasidCacheKeepsTheOldEntryUntilInvalidated(int granularity)
    {
        using var s = new VtdScalableFixture();
        s.EnableWideQueue();
        ulong dir = s.SetContext(Dev);
        ulong fl = s.SetFirstLevel(dir, 0, Domain);
        s.MapFirstLevel(fl, 4, Iova, Target);
        s.EnableScalableTranslation();
        var dma = s.Unit.DmaSpaceFor(Dev);
        Assert.Equal(DmaStatus.Ok, dma.Read(Iova, new byte[1]));
        // Software clears the PASID entry; the cached copy is still used...
        s.WritePasidEntry(dir, 0);
        s.Run(1, (IotlbDesc(1, 0), 0));   // even with the IOTLB flushed, the PASID cache holds
        Assert.Equal(DmaStatus.Ok, dma.Read(Iova, new byte[1]));
        // ...until a PASID-cache invalidation names it (a wrong DID does not).
        Assert.True(s.Run(2, (PasidCacheDesc(granularity == 3 ? 3 : granularity, Domain + 1, 0), 0)));
        if (granularity != 3)
        {
            Assert.Equal(DmaStatus.Ok, dma.Read(Iova, new byte[1]));
            Assert.True(s.Run(3, (PasidCacheDesc(granularity, Domain, 0), 0)));
        }
        Assert.Equal(DmaStatus.Blocked, dma.Read(Iova, new byte[1]));
        Assert.Equal((int)VtdFaultReason.PasidEntryNotPresent, Reason(s.F.FaultRecord(0).High));
        Assert.Equal(0u, s.F.R32(Fsts) & (1u << 4));
    }

    [Fact]
    public void PasidIotlbInvalidationIsPageAndPasidSelective()
    {
        using var s = new VtdScalableFixture();
        s.EnableWideQueue();
        ulong dir = s.SetContext(Dev);
        ulong fl1 = s.SetFirstLevel(dir, 1, Domain);
        ulong fl2 = s.SetFirstLevel(dir, 2, Domain);
        ulong leaf1 = s.MapFirstLevel(fl1, 4, Iova, Target);
        ulong leaf1b = s.MapFirstLevel(fl1, 4, Iova + 0x10_0000, Target + 0x1000);
        ulong leaf2 = s.MapFirstLevel(fl2, 4, Iova, Target + 0x2000);
        s.EnableScalableTranslation();
        var p1 = s.Unit.DmaSpaceFor(Dev, 1);
        var p2 = s.Unit.DmaSpaceFor(Dev, 2);
        foreach (var (d, a) in new[] { (p1, Iova), (p1, Iova + 0x10_0000), (p2, Iova) })
        {
            Assert.Equal(DmaStatus.Ok, d.Read(a, new byte[1]));
        }
        s.Ram.WriteU64(leaf1, 0);
        s.Ram.WriteU64(leaf1b, 0);
        s.Ram.WriteU64(leaf2, 0);
        // Page-selective within PASID 1 (G=11b, AM=0): only that page of that PASID goes.
        Assert.True(s.Run(1, (PasidIotlbDesc(3, Domain, 1), Iova)));
        Assert.Equal(DmaStatus.Blocked, p1.Read(Iova, new byte[1]));
        Assert.Equal(DmaStatus.Ok, p1.Read(Iova + 0x10_0000, new byte[1]));
        Assert.Equal(DmaStatus.Ok, p2.Read(Iova, new byte[1]));
        // PASID-selective (G=10b): the rest of PASID 1, PASID 2 still cached.
        Assert.True(s.Run(2, (PasidIotlbDesc(2, Domain, 1), 0)));
        Assert.Equal(DmaStatus.Blocked, p1.Read(Iova + 0x10_0000, new byte[1]));
        Assert.Equal(DmaStatus.Ok, p2.Read(Iova, new byte[1]));
        Assert.Equal(1, s.Unit.Counters.PasidIotlbInvPage.Value);
        Assert.Equal(1, s.Unit.Counters.PasidIotlbInvPasid.Value);
        // The scalable IOTLB invalidation (type 2, domain-selective) drops PASID 2 too.
        Assert.True(s.Run(3, (IotlbDesc(2, Domain), 0)));
        Assert.Equal(DmaStatus.Blocked, p2.Read(Iova, new byte[1]));
    }

    [Fact]
    public void ScalableContextInvalidationDropsContextAndPasidEntries()
    {
        using var s = new VtdScalableFixture();
        s.EnableWideQueue();
        ulong dir = s.SetContext(Dev);
        ulong fl = s.SetFirstLevel(dir, 0, Domain);
        s.MapFirstLevel(fl, 4, Iova, Target);
        s.EnableScalableTranslation();
        Assert.Equal(DmaStatus.Ok, s.Unit.DmaSpaceFor(Dev).Read(Iova, new byte[1]));
        Assert.Equal(1, s.Unit.ContextCacheCount);
        Assert.Equal(1, s.Unit.PasidCacheCount);
        Assert.True(s.Run(1, (ContextDesc(3, 0, Dev), 0)));    // device-selective
        Assert.Equal(0, s.Unit.ContextCacheCount);
        Assert.Equal(0, s.Unit.PasidCacheCount);
    }

    [Fact]
    public void WideQueueRejectsMalformedDescriptors()
    {
        using var s = new VtdScalableFixture();
        s.EnableWideQueue();
        Assert.True(s.Run(1));                                   // a bare 256-bit wait works
        Assert.Equal(s.Tail, s.F.R64(Iqh));
        s.Put(Wait(2), StatusAddr, 0, 1);                        // bits 255:192 must be zero
        s.Submit();
        Assert.NotEqual(0u, s.F.R32(Fsts) & (1u << 4));          // IQE
        Assert.Equal(s.Tail - 32, s.F.R64(Iqh));                 // IQH stays on the bad descriptor
        Assert.Equal(1, s.Unit.Counters.QueueErrors.Value);

        using var t = new VtdScalableFixture();
        t.EnableWideQueue();
        t.Put(PasidCacheDesc(2, Domain));                        // G=10b is reserved
        t.Submit();
        Assert.NotEqual(0u, t.F.R32(Fsts) & (1u << 4));

        using var u = new VtdScalableFixture();
        u.EnableWideQueue();
        u.F.W64(Iqt, 0x10);                                      // QT bit 4 is reserved with DW=1
        Assert.NotEqual(0u, u.F.R32(Fsts) & (1u << 4));
    }

    [Fact]
    public void PasidCacheIsBounded()
    {
        using var s = new VtdScalableFixture(new VtdOptions { PasidCacheSets = 2, PasidCacheWays = 2 });
        ulong dir = s.SetContext(Dev);
        for (uint p = 0; p < 16; p++)
        {
            s.SetPassThrough(dir, p, Domain);
        }
        s.EnableScalableTranslation();
        for (uint p = 0; p < 16; p++)
        {
            Assert.Equal(DmaStatus.Ok, s.Unit.DmaSpaceFor(Dev, p).Read(0x1000, new byte[1]));
        }
        Assert.True(s.Unit.PasidCacheCount <= 4);
        Assert.True(s.Unit.Counters.PasidCacheEvictions.Value >= 12);
    }

    static void AssertBlocked(VtdScalableFixture s, ulong address, bool write, VtdFaultReason reason)
    {
        var dma = s.Unit.DmaSpaceFor(Dev);
        var status = write ? dma.Write(address, new byte[8]) : dma.Read(address, new byte[8]);
        Assert.Equal(DmaStatus.Blocked, status);
        var (low, high) = s.F.FaultRecord(0);
        Assert.True(F(high));
        Assert.Equal((int)reason, Reason(high));
        Assert.Equal(address & ~0xFFFUL, low);
        Assert.Equal(write ? 0UL : 1UL, (high >> 62) & 1);
    }
}

/// <summary>The order Linux 6.1 (intel_iommu=on, scalable mode by default) programs a unit in, end to end.</summary>
public class VtdScalableLinuxSequenceTests
{
    [Fact]
    public void ScalableModeBootMapUnmapAndFault()
    {
        const ushort Dev = 0x0018;       // 00:03.0
        const ushort Did = 1;
        using var s = new VtdScalableFixture();
        // dmar_enable_qi: 256-bit descriptors because ECAP.SMTS.
        s.EnableWideQueue();
        // iommu_set_root_entry: RTADDR | DMA_RTADDR_SMT, SRTP, then the global flushes.
        s.F.W64(Rtaddr, RootTable | (1UL << 10));
        s.F.Command(Srtp);
        Assert.True(s.Run(1, (ContextDesc(1), 0), (PasidCacheDesc(3, 0), 0), (IotlbDesc(1, 0), 0)));
        // domain_context_mapping_one + intel_pasid_setup_first_level for a DMA domain on RID_PASID 0.
        ulong dir = s.SetContext(Dev, ridPasid: 0, dte: true);
        ulong fl = s.SetFirstLevel(dir, 0, Did, levels: 5);
        ulong leaf = s.MapFirstLevel(fl, 5, 0xFFFF_F000, 0x50_0000);  // Linux allocates IOVAs from the top down
        s.F.Command(Te);
        var dma = s.Unit.DmaSpaceFor(Dev);
        Assert.Equal(DmaStatus.Ok, dma.Write(0xFFFF_F800, [0x5A]));
        Assert.Equal(0x5A, s.F.ReadRam(0x50_0800, 1)[0]);
        // Unmap (strict): clear the PTE, qi_flush_piotlb PSI on RID_PASID, device-TLB flush, wait.
        s.Ram.WriteU64(leaf, 0);
        Assert.True(s.Run(2, (PasidIotlbDesc(3, Did, 0), 0xFFFF_F000), (DeviceTlbDesc(Dev), 0xFFFF_F000)));
        Assert.Equal(DmaStatus.Blocked, dma.Write(0xFFFF_F800, [0x66]));
        Assert.Equal(0x5A, s.F.ReadRam(0x50_0800, 1)[0]);
        var (low, high) = s.F.FaultRecord(0);
        Assert.Equal((int)VtdFaultReason.FirstLevelNotPresent, Reason(high));
        Assert.Equal(0xFFFF_F000UL, low);
        Assert.Equal(0u, s.F.R32(Fsts) & (1u << 4));            // no queue error along the way
    }
}
