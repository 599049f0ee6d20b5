using SharpVisor.Core;
using SharpVisor.Devices.Iommu;
using static SharpVisor.Devices.Tests.Iommu.VtdFixture;
using static SharpVisor.Devices.Tests.Iommu.VtdScalableFixture;

namespace SharpVisor.Devices.Tests.Iommu;

/// <summary>
/// Scalable-mode non-recoverable fault reasons not covered by VtdScalableTests, each checked
/// against the VT-d specification's table of scalable-mode fault conditions (chapter 7, 7.1.3;
/// condition codes SRTA.x, SCT.x, SPT.x, SSS.x, SGN.x and their reason encodings, appendix
/// "Non-Recoverable Fault Reason Encodings"). Each request is blocked, memory is unchanged and
/// one fault record names the source-id, address, direction and reason (what Linux's
/// dmar_fault/dmar_fault_do_one prints).
/// </summary>
public class VtdScalableFaultReasonTests
{
    const ushort Dev = 0x0010;
    const ushort UpperDev = 0x0090;        // devfn 0x90: the upper half of the scalable-mode root entry
    const ushort Domain = 5;
    const ulong Iova = 0x20_0000;
    const ulong Target = 0x60_0000;
    const ulong NoRam = 0x7000_0000;       // below the 39-bit HAW, not RAM (the fixture has 64 MiB)

    static void AssertFault(VtdScalableFixture s, IDmaSpace dma, ushort sid, VtdFaultReason reason, bool write = true)
    {
        s.F.Fill(Target, 16, 0xAA);
        var status = write ? dma.Write(Iova, new byte[16]) : dma.Read(Iova, new byte[16]);
        Assert.Equal(DmaStatus.Blocked, status);
        Assert.All(s.F.ReadRam(Target, 16), b => Assert.Equal(0xAA, b));
        var (low, high) = s.F.FaultRecord(0);
        Assert.True(F(high));
        Assert.Equal((int)reason, Reason(high));
        Assert.Equal(sid, (ushort)high);
        Assert.Equal(Iova, low);
        Assert.Equal(write ? 0UL : 1UL, (high >> 62) & 1);          // T: 0 write, 1 read (11.4.9.7)
        Assert.Equal(1, s.Unit.Counters.FaultsByReason(reason).Value);
        Assert.False(F(s.F.FaultRecord(1).High));                    // exactly one record
    }

    /// <summary>SRTA.4 (33h): non-zero reserved field in the upper 64 bits of a root entry whose UP is set.</summary>
    [Fact]
    public void RootEntryUpperHalfReservedIs0x33()
    {
        using var s = new VtdScalableFixture();
        ulong dir = s.SetContext(UpperDev);
        ulong fl = s.SetFirstLevel(dir, 0, Domain);
        s.MapFirstLevel(fl, 4, Iova, Target);
        ulong upper = RootTable + 8;
        s.Ram.WriteU64(upper, s.Ram.ReadU64(upper) | (1UL << 1));   // bit 65: reserved (9.2)
        s.EnableScalableTranslation();
        AssertFault(s, s.Unit.DmaSpaceFor(UpperDev), UpperDev, VtdFaultReason.SmRootEntryUpperReserved);
    }

    /// <summary>SRTA.5/6 (34h) for the upper half: UP clear while LP is set.</summary>
    [Fact]
    public void UpperHalfNotPresentIs0x34EvenWithTheLowerHalfPresent()
    {
        using var s = new VtdScalableFixture();
        ulong dir = s.SetContext(Dev);                       // LP set
        s.SetFirstLevel(dir, 0, Domain);
        s.EnableScalableTranslation();
        AssertFault(s, s.Unit.DmaSpaceFor(UpperDev), UpperDev, VtdFaultReason.SmRootEntryNotPresent, write: false);
    }

    /// <summary>SCT.1 (40h): the scalable-mode context table cannot be read.</summary>
    [Fact]
    public void ContextTableOutsideMemoryIs0x40()
    {
        using var s = new VtdScalableFixture();
        s.Ram.WriteU64(RootTable, NoRam | 1);                // LP → a context table in no RAM
        s.EnableScalableTranslation();
        AssertFault(s, s.Unit.DmaSpaceFor(Dev), Dev, VtdFaultReason.SmContextTableAccessError);
    }

    /// <summary>SCT.5 (44h): a translated request while the context entry's DTE is 0.</summary>
    [Fact]
    public void TranslatedRequestWithDteClearIs0x44()
    {
        using var s = new VtdScalableFixture();
        ulong dir = s.SetContext(Dev, dte: false);
        s.SetFirstLevel(dir, 0, Domain);
        s.EnableScalableTranslation();
        s.F.Fill(Target, 4, 0xAA);
        Assert.Equal(DmaStatus.Blocked, s.Unit.TranslatedDmaWrite(Dev, Target, [1, 2, 3, 4]));
        Assert.All(s.F.ReadRam(Target, 4), b => Assert.Equal(0xAA, b));
        var (low, high) = s.F.FaultRecord(0);
        Assert.Equal((int)VtdFaultReason.SmDeviceTlbDisabled, Reason(high));
        Assert.Equal(Target, low);
        Assert.Equal(0UL, (high >> 62) & 1);                 // a write
    }

    /// <summary>SCT.6 (45h) for a request-with-PASID that would otherwise translate, on the read side.</summary>
    [Fact]
    public void RequestWithPasidWhilePasideClearIs0x45()
    {
        using var s = new VtdScalableFixture();
        ulong dir = s.SetContext(Dev, pasidEnable: false);
        ulong fl = s.SetFirstLevel(dir, 0, Domain);          // RID_PASID 0 works without PASIDE
        s.MapFirstLevel(fl, 4, Iova, Target);
        ulong fl2 = s.SetFirstLevel(dir, 2, Domain);
        s.MapFirstLevel(fl2, 4, Iova, Target);
        s.EnableScalableTranslation();
        Assert.Equal(DmaStatus.Ok, s.Unit.DmaSpaceFor(Dev).Read(Iova, new byte[4]));
        AssertFault(s, s.Unit.DmaSpaceFor(Dev, 2), Dev, VtdFaultReason.SmPasidDisabled, write: false);
        Assert.Equal(1UL, (s.F.FaultRecord(0).High >> 31) & 1);      // PP
        Assert.Equal(2UL, (s.F.FaultRecord(0).High >> 40) & 0xF_FFFF); // PV
    }

    /// <summary>SPT.6 (5Dh) for an untranslated execute request (the ATS path is in VtdScalableTests).</summary>
    [Fact]
    public void UntranslatedExecuteRequestWithEreClearIs0x5D()
    {
        using var s = new VtdScalableFixture();
        ulong dir = s.SetContext(Dev);
        ulong fl = s.SetFirstLevel(dir, 4, Domain, ere: false);
        s.MapFirstLevel(fl, 4, Iova, Target);
        s.EnableScalableTranslation();
        Assert.Equal(DmaStatus.Ok, s.Unit.DmaSpaceFor(Dev, 4).Read(Iova, new byte[4]));   // without ER: fine
        AssertFault(s, s.Unit.DmaSpaceFor(Dev, 4, execute: true), Dev, VtdFaultReason.PasidExecuteDisabled, write: false);
    }

    /// <summary>SSS.1 (78h): a scalable-mode second-level paging entry cannot be read.</summary>
    [Fact]
    public void SecondLevelTableOutsideMemoryIs0x78()
    {
        using var s = new VtdScalableFixture();
        ulong dir = s.SetContext(Dev);
        ulong sl = s.SetSecondLevel(dir, 0, Domain, levels: 4);
        s.Ram.WriteU64(sl + ((Iova >> 39) & 511) * 8, NoRam | 3);   // the PDPT is in no RAM
        s.EnableScalableTranslation();
        AssertFault(s, s.Unit.DmaSpaceFor(Dev), Dev, VtdFaultReason.SmSecondLevelAccessError);
    }

    /// <summary>SSS.2 (7Ah): non-zero reserved field in a scalable-mode second-level paging entry.</summary>
    [Theory]
    [InlineData(false)]    // output address beyond the host address width
    [InlineData(true)]     // SNP without ECAP.SC
    public void SecondLevelReservedFieldIs0x7A(bool snoop)
    {
        using var s = new VtdScalableFixture(new VtdOptions { SnoopControl = false });
        ulong dir = s.SetContext(Dev);
        ulong sl = s.SetSecondLevel(dir, 0, Domain, levels: 4);
        ulong leaf = s.F.Map(sl, 4, Iova, Target);
        s.Ram.WriteU64(leaf, s.Ram.ReadU64(leaf) | (snoop ? 1UL << 11 : 1UL << 45));
        s.EnableScalableTranslation();
        AssertFault(s, s.Unit.DmaSpaceFor(Dev), Dev, VtdFaultReason.SmSecondLevelReserved, write: false);
    }

    /// <summary>SGN.3 (82h): an execute request to a first-level page with XD set (ERE set).</summary>
    [Fact]
    public void ExecuteRequestToAnXdPageIs0x82()
    {
        using var s = new VtdScalableFixture();
        ulong dir = s.SetContext(Dev);
        ulong fl = s.SetFirstLevel(dir, 3, Domain, ere: true);
        s.MapFirstLevel(fl, 4, Iova, Target, leafFlags: FlP | FlRw | FlUs | FlXd);
        s.MapFirstLevel(fl, 4, Iova + 0x1000, Target + 0x1000);
        s.EnableScalableTranslation();
        var exec = s.Unit.DmaSpaceFor(Dev, 3, execute: true);
        Assert.Equal(DmaStatus.Ok, exec.Read(Iova + 0x1000, new byte[4]));              // no XD: fine
        Assert.Equal(DmaStatus.Ok, s.Unit.DmaSpaceFor(Dev, 3).Read(Iova, new byte[4])); // no ER: fine
        AssertFault(s, exec, Dev, VtdFaultReason.SmExecuteViolation, write: false);
    }

    /// <summary>SGN.4 (83h): an input address beyond the second-level address width (AW 39 bits, 3 levels).</summary>
    [Fact]
    public void SecondLevelAddressBeyondThreeLevelWidthIs0x83()
    {
        using var s = new VtdScalableFixture();
        ulong dir = s.SetContext(Dev);
        s.SetSecondLevel(dir, 0, Domain, levels: 3);        // AW 39 bits
        s.EnableScalableTranslation();
        var dma = s.Unit.DmaSpaceFor(Dev);
        Assert.Equal(DmaStatus.Blocked, dma.Read(1UL << 39, new byte[4]));
        Assert.Equal((int)VtdFaultReason.SmAddressBeyondWidth, Reason(s.F.FaultRecord(0).High));
        Assert.Equal(1UL << 39, s.F.FaultRecord(0).Low);
    }

    /// <summary>SGN.5 (84h): a read of a second-level page whose R is clear (W alone set).</summary>
    [Fact]
    public void ReadOfAWriteOnlySecondLevelPageIs0x84()
    {
        using var s = new VtdScalableFixture();
        ulong dir = s.SetContext(Dev);
        ulong sl = s.SetSecondLevel(dir, 0, Domain, levels: 4);
        s.F.Map(sl, 4, Iova, Target, read: false, write: true);
        s.EnableScalableTranslation();
        Assert.Equal(DmaStatus.Ok, s.Unit.DmaSpaceFor(Dev).Write(Iova + 0x100, [7]));
        AssertFault(s, s.Unit.DmaSpaceFor(Dev), Dev, VtdFaultReason.SmReadNotPermitted, write: false);
    }
}
