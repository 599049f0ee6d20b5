using SharpVisor.Core;
using SharpVisor.Devices.Iommu;
using static SharpVisor.Devices.Tests.Iommu.VtdFixture;

namespace SharpVisor.Devices.Tests.Iommu;

public class VtdCacheTests
{
    const ushort Dev = 0x0010;
    const ushort Domain = 7;
    const ulong Iova = 0x4000;
    const ulong OldPage = 0x70_0000, NewPage = 0x71_0000;

    static (VtdFixture F, ulong Leaf) Mapped(VtdOptions? options = null)
    {
        var f = new VtdFixture(options);
        ulong slpt = f.SetContext(Dev, Domain, 4);
        ulong leaf = f.Map(slpt, 4, Iova, OldPage);
        f.EnableTranslation();
        Assert.Equal(DmaStatus.Ok, f.Unit.DmaSpaceFor(Dev).Write(Iova, [1]));   // fills the IOTLB
        f.Ram.WriteU64(leaf, NewPage | 3);                                     // remap, no flush yet
        return (f, leaf);
    }

    static byte WriteAndSee(VtdFixture f, byte value)
    {
        Assert.Equal(DmaStatus.Ok, f.Unit.DmaSpaceFor(Dev).Write(Iova, [value]));
        return f.ReadRam(NewPage, 1)[0] == value ? (byte)1 : f.ReadRam(OldPage, 1)[0] == value ? (byte)0 : (byte)0xFF;
    }

    /// <summary>IOTLB register (11.4.8.1): IVT 63, IIRG 61:60, DID 47:32.</summary>
    static ulong IotlbCommand(int granularity, ushort did) => (1UL << 63) | ((ulong)granularity << 60) | ((ulong)did << 32);

    [Fact]
    public void StaleTranslationPersistsUntilPageInvalidation()
    {
        var (f, _) = Mapped();
        using var _f = f;
        Assert.Equal(0, WriteAndSee(f, 2));          // cached: still the old page
        f.W64(f.Iro, Iova);                            // IVA: address, AM=0
        f.W64(f.Iro + 8, IotlbCommand(3, Domain));
        ulong reg = f.R64(f.Iro + 8);
        Assert.Equal(0UL, reg >> 63);                  // IVT cleared on completion
        Assert.Equal(3UL, (reg >> 57) & 3);            // IAIG: page-selective performed
        Assert.Equal(1, WriteAndSee(f, 3));
        Assert.Equal(1, f.Unit.Counters.IotlbInvPage.Value);
    }

    [Fact]
    public void PageInvalidationOfAnotherDomainOrPageKeepsTheEntry()
    {
        var (f, _) = Mapped();
        using var _f = f;
        f.W64(f.Iro, Iova);
        f.W64(f.Iro + 8, IotlbCommand(3, Domain + 1));
        Assert.Equal(0, WriteAndSee(f, 2));
        f.W64(f.Iro, Iova + 0x1000);
        f.W64(f.Iro + 8, IotlbCommand(3, Domain));
        Assert.Equal(0, WriteAndSee(f, 3));
        // AM=2 covers the 16 KiB aligned block 0x4000-0x7FFF, which holds the IOVA.
        f.W64(f.Iro, (Iova + 0x3000) | 2);
        f.W64(f.Iro + 8, IotlbCommand(3, Domain));
        Assert.Equal(1, WriteAndSee(f, 4));
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void GlobalAndDomainIotlbInvalidation(int granularity)
    {
        var (f, _) = Mapped();
        using var _f = f;
        f.W64(f.Iro + 8, IotlbCommand(granularity, Domain));
        Assert.Equal((ulong)granularity, (f.R64(f.Iro + 8) >> 57) & 3);
        Assert.Equal(1, WriteAndSee(f, 2));
    }

    [Fact]
    public void ContextCacheIsRealAndDeviceSelectiveInvalidationWorks()
    {
        using var f = new VtdFixture();
        ulong slpt = f.SetContext(Dev, Domain, 4);
        f.Map(slpt, 4, Iova, OldPage);
        f.EnableTranslation();
        var dma = f.Unit.DmaSpaceFor(Dev);
        Assert.Equal(DmaStatus.Ok, dma.Write(Iova, [1]));
        // Software clears the context entry but does not invalidate: the cached entry still serves.
        f.WriteContextRaw(Dev, 0, 0);
        Assert.Equal(DmaStatus.Ok, dma.Write(Iova, [2]));
        // CCMD (11.4.6): ICC 63, CIRG 62:61 = device (11b), FM 33:32, SID 31:16, DID 15:0.
        f.W64(Ccmd, (1UL << 63) | (3UL << 61) | ((ulong)Dev << 16) | Domain);
        ulong ccmd = f.R64(Ccmd);
        Assert.Equal(0UL, ccmd >> 63);
        Assert.Equal(3UL, (ccmd >> 59) & 3);           // CAIG
        f.W64(f.Iro + 8, IotlbCommand(2, Domain));      // software flushes the domain's IOTLB too
        Assert.Equal(DmaStatus.Blocked, dma.Write(Iova, [3]));
        Assert.Equal((int)VtdFaultReason.ContextEntryNotPresent, Reason(f.FaultRecord(0).High));
        Assert.Equal(2, f.ReadRam(OldPage, 1)[0]);
        Assert.Equal(1, f.Unit.Counters.ContextInvDevice.Value);
    }

    [Fact]
    public void ReservedGranularityIsRejected()
    {
        using var f = new VtdFixture();
        f.W64(Ccmd, 1UL << 63);
        Assert.Equal(0UL, f.R64(Ccmd) >> 59);           // ICC clear, CAIG=0: not performed
        f.W64(f.Iro + 8, 1UL << 63);
        Assert.Equal(0UL, (f.R64(f.Iro + 8) >> 57) & 7);
        Assert.Equal(2, f.Unit.Counters.GuestRegisterErrors.Value);
    }

    [Fact]
    public void IotlbIsBoundedWithLruReplacement()
    {
        var options = new VtdOptions { IotlbSets = 2, IotlbWays = 2 };
        using var f = new VtdFixture(options);
        ulong slpt = f.SetContext(Dev, Domain, 4);
        for (ulong p = 0; p < 64; p++) f.Map(slpt, 4, p << 12, 0x100_0000 + (p << 12));
        f.EnableTranslation();
        var dma = f.Unit.DmaSpaceFor(Dev);
        for (ulong p = 0; p < 64; p++) Assert.Equal(DmaStatus.Ok, dma.Write(p << 12, [1]));
        Assert.Equal(4, f.Unit.IotlbCount);
        Assert.Equal(60, f.Unit.Counters.IotlbEvictions.Value);
        Assert.Equal(64, f.Unit.Counters.IotlbMisses.Value);
        // The most recently used translation is still there.
        long hits = f.Unit.Counters.IotlbHits4K.Value;
        dma.Write(63UL << 12, [1]);
        Assert.Equal(hits + 1, f.Unit.Counters.IotlbHits4K.Value);
    }

    [Fact]
    public void ContextCacheIsBounded()
    {
        using var f = new VtdFixture(new VtdOptions { ContextCacheSets = 1, ContextCacheWays = 2 });
        for (ushort d = 0; d < 8; d++) f.SetContext((ushort)(0x10 + d), 1, 4, tt: 2);
        f.EnableTranslation();
        for (ushort d = 0; d < 8; d++) f.Unit.DmaSpaceFor((ushort)(0x10 + d)).Write(0x1000, [1]);
        Assert.Equal(2, f.Unit.ContextCacheCount);
        Assert.Equal(6, f.Unit.Counters.ContextCacheEvictions.Value);
    }

    [Fact]
    public void CachingModeNeverCachesNotPresentEntries()
    {
        using var f = new VtdFixture(new VtdOptions { CachingMode = true });
        ulong slpt = f.SetContext(Dev, Domain, 4);
        f.EnableTranslation();
        var dma = f.Unit.DmaSpaceFor(Dev);
        Assert.Equal(DmaStatus.Blocked, dma.Write(Iova, [1]));
        // not-present → present: visible without any invalidation.
        f.Map(slpt, 4, Iova, OldPage);
        Assert.Equal(DmaStatus.Ok, dma.Write(Iova, [9]));
        Assert.Equal(9, f.ReadRam(OldPage, 1)[0]);
    }

    [Fact]
    public void WithoutPsiSupportPageInvalidationIsWidenedToDomain()
    {
        var (f, _) = Mapped(new VtdOptions { PageSelectiveInvalidation = false });
        using var _f = f;
        f.W64(f.Iro, Iova + 0x10_0000);               // a different page
        f.W64(f.Iro + 8, IotlbCommand(3, Domain));
        Assert.Equal(2UL, (f.R64(f.Iro + 8) >> 57) & 3);  // IAIG reports domain-selective
        Assert.Equal(1, WriteAndSee(f, 2));
    }
}
