using SharpVisor.Core;
using SharpVisor.Devices.Iommu;
using static SharpVisor.Devices.Tests.Iommu.VtdFixture;

namespace SharpVisor.Devices.Tests.Iommu;

public class VtdRegisterTests
{
    /// <summary>QEMU's q35 intel-iommu (aw-bits=39) as Linux prints it: "cap d2008c22260206 ecap f00f4e".</summary>
    [Fact]
    public void QemuEquivalentOptionsGiveQemusCapabilityValues()
    {
        var qemuLike = new VtdOptions
        {
            SupportedAgaw = VtdAgaw.Levels3,
            FaultRecordingRegisters = 1,
            PageWalkCoherency = false,
            ExtendedInterruptMode = false,
            MaxGuestAddressWidth = 39,
            ScalableMode = false,      // QEMU's default: legacy mode only
        };
        using var f = new VtdFixture(qemuLike);
        Assert.Equal(0xd2008c22260206UL, f.R64(0x08));
        // QEMU with device-iotlb=on sets DT (bit 2); ATS is implemented, so the whole value matches.
        Assert.Equal(0xf00f4eUL, f.R64(0x10));
        Assert.Equal(0x10u, f.R32(0x00));
    }

    [Fact]
    public void CapabilityFieldsFollowOptions()
    {
        using var f = new VtdFixture(new VtdOptions { FaultRecordingRegisters = 4, CachingMode = true, MaxGuestAddressWidth = 48, Superpages1G = false });
        ulong cap = f.R64(0x08);
        Assert.Equal(3UL, (cap >> 40) & 0xFF);          // NFR = 4 - 1
        Assert.Equal(1UL, (cap >> 7) & 1);              // CM
        Assert.Equal(47UL, (cap >> 16) & 0x3F);         // MGAW = 48 - 1
        Assert.Equal(0b1110UL, (cap >> 8) & 0x1F);      // SAGAW: 3, 4 and 5 levels
        Assert.Equal(0b01UL, (cap >> 34) & 0xF);        // SLLPS: 2M only
        Assert.Equal(0x220UL, ((cap >> 24) & 0x3FF) * 16);
        Assert.Equal(4096UL, f.Unit.Options.RegionSize);
    }

    [Fact]
    public void InvalidOptionsAreUserErrors()
    {
        using var ram = new GuestMemory(1 << 20);
        Assert.Throws<UserErrorException>(() => new IntelIommu(new VtdOptions { SupportedAgaw = VtdAgaw.None }, ram, new RecordingMsiSink(), new RecordingApicBus()));
        Assert.Throws<UserErrorException>(() => new IntelIommu(new VtdOptions { FaultRecordingOffset = 0x30 }, ram, new RecordingMsiSink(), new RecordingApicBus()));
        Assert.Throws<UserErrorException>(() => new IntelIommu(new VtdOptions { IotlbSets = 3 }, ram, new RecordingMsiSink(), new RecordingApicBus()));
    }

    [Fact]
    public void ReadOnlyAndReservedRegistersIgnoreWrites()
    {
        using var f = new VtdFixture();
        ulong cap = f.R64(0x08), ecap = f.R64(0x10);
        f.W64(0x08, ~0UL);
        f.W64(0x10, 0);
        f.W32(0x04, 0xFFFF_FFFF);
        f.W32(0x1C, 0xFFFF_FFFF);   // GSTS is read only
        f.W32(0x50, 0xFFFF_FFFF);   // reserved
        Assert.Equal(cap, f.R64(0x08));
        Assert.Equal(ecap, f.R64(0x10));
        Assert.Equal(0u, f.R32(0x04));
        Assert.Equal(0u, f.R32(0x1C));
        Assert.Equal(0u, f.R32(0x50));
        Assert.Equal(0u, f.R32(Gcmd));              // write-only register reads 0
    }

    [Fact]
    public void RootTableAddressKeepsOnlyImplementedBits()
    {
        using var f = new VtdFixture(new VtdOptions { ScalableMode = false });
        f.W64(Rtaddr, 0xFFFF_FFFF_FFFF_FFFFUL);
        // TTM (11:10) is reserved without scalable mode; bits above HAW (39) are not implemented.
        Assert.Equal(0x7F_FFFF_F000UL, f.R64(Rtaddr));
        // With ECAP.SMTS, TTM is implemented (11.4.5).
        using var sm = new VtdFixture();
        sm.W64(Rtaddr, 0xFFFF_FFFF_FFFF_FFFFUL);
        Assert.Equal(0x7F_FFFF_FC00UL, sm.R64(Rtaddr));
    }

    [Fact]
    public void GlobalCommandStatusHandshake()
    {
        using var f = new VtdFixture();
        Assert.Equal(0u, f.R32(Gsts));
        f.W64(Rtaddr, RootTable);
        f.Command(Srtp);
        Assert.Equal(Srtp, f.R32(Gsts) & Srtp);     // RTPS
        f.Command(Te);
        Assert.Equal(Te, f.R32(Gsts) & Te);
        f.Command(Wbf);
        Assert.Equal(0u, f.R32(Gsts) & Wbf);        // WBFS: the flush completes at once
        Assert.Equal(1, f.Unit.Counters.WriteBufferFlushes.Value);
        f.Command(Qie);
        Assert.Equal(Qie, f.R32(Gsts) & Qie);
        f.W64(Irta, 0x30_0000 | 7);
        f.Command(Sirtp);
        Assert.Equal(Sirtp, f.R32(Gsts) & Sirtp);
        f.Command(Ire);
        f.Command(Cfi);
        Assert.Equal(Te | Qie | Ire | Cfi, f.R32(Gsts) & (Te | Qie | Ire | Cfi));
        f.Command(Te, on: false);
        Assert.Equal(0u, f.R32(Gsts) & Te);
        Assert.Equal(Qie | Ire | Cfi, f.R32(Gsts) & (Qie | Ire | Cfi));
    }

    [Fact]
    public void FeaturesNotAdvertisedCannotBeEnabled()
    {
        using var f = new VtdFixture(new VtdOptions { QueuedInvalidation = false, InterruptRemapping = false, ExtendedInterruptMode = false, ScalableMode = false });
        f.W32(Gcmd, Qie | Ire | Cfi | Sirtp);
        Assert.Equal(0u, f.R32(Gsts));
        f.W64(Iqa, 0x40_0000);
        Assert.Equal(0UL, f.R64(Iqa));              // the QI registers are reserved without ECAP.QI
    }

    [Fact]
    public void FaultEventRegistersKeepOnlyTheirFields()
    {
        using var f = new VtdFixture();
        Assert.Equal(1u << 31, f.R32(Fectl));       // IM resets to 1 (11.4.9.3)
        f.W32(Fedata, 0xFFFF_FFFF);
        f.W32(Feaddr, 0xFFFF_FFFF);
        f.W32(Fectl, 0x7FFF_FFFF);                  // IP is read-only
        Assert.Equal(0xFFFFu, f.R32(Fedata));
        Assert.Equal(0xFFFF_FFFCu, f.R32(Feaddr));
        Assert.Equal(0u, f.R32(Fectl));
    }

    [Fact]
    public void NarrowAndMisalignedAccessesAreIgnoredAndCounted()
    {
        using var f = new VtdFixture();
        f.Unit.MmioWrite(0x18, 1, 0xFF);
        f.Unit.MmioWrite(0x1A, 4, 0xFFFF_FFFF);
        f.Unit.MmioWrite(0x5000, 4, 0xFFFF_FFFF);
        Assert.Equal(0u, f.R32(Gsts));
        Assert.Equal(3, f.Unit.Counters.GuestRegisterErrors.Value);
        Assert.Equal(0x10UL, f.Unit.MmioRead(0, 1));
    }

    [Fact]
    public void RandomRegisterWritesNeverThrow()
    {
        using var f = new VtdFixture(new VtdOptions { FaultRecordingRegisters = 2 });
        var rng = new Random(12345);
        var dma = f.Unit.DmaSpaceFor(0x0010);
        var buf = new byte[64];
        for (int i = 0; i < 4000; i++)
        {
            int offset = rng.Next(0, 0x300) & ~3;
            ulong value = (ulong)rng.NextInt64();
            // Keep the queue and tables inside RAM half the time so deeper paths run too.
            if (rng.Next(2) == 0) value &= 0x3FF_FFFF;
            f.Unit.MmioWrite((ulong)offset, rng.Next(2) == 0 ? 4 : 8, value);
            f.Unit.MmioRead((ulong)offset, 4);
            if (i % 16 == 0)
            {
                dma.Write((ulong)rng.NextInt64(0, 1L << 40), buf);
                dma.Read((ulong)rng.NextInt64(0, 1L << 30), buf);
                f.Unit.InterruptRemapper.SendMsi(0xFEE0_0010 | ((ulong)rng.Next(0, 1 << 15) << 5), (uint)rng.Next(), 0x10);
            }
        }
    }
}
