using SharpVisor.Devices.Iommu;
using static SharpVisor.Devices.Tests.Iommu.VtdFixture;

namespace SharpVisor.Devices.Tests.Iommu;

/// <summary>
/// The register block against the spec's own tables (VT-d 4.x, 11.4: offsets and widths from
/// "Address Mapping for Remapping Hardware Registers", reset values and RW/RW1C fields from each
/// register's field table), for three configurations. Each row is checked on a fresh unit: the
/// reset value reads back, writing all ones sets exactly the RW bits (and leaves RW1C bits clear),
/// writing zeros clears exactly the RW bits.
/// </summary>
public class VtdRegisterFileTests
{
    /// <param name="AfterOnes">What reads back after writing all ones, when a write has an effect beyond storing bits.</param>
    /// <param name="AfterZeroes">What reads back after then writing zeros, when not the RO bits of <paramref name="AfterOnes"/>.</param>
    public sealed record Row(string Name, int Offset, int Width, ulong Reset, ulong Rw, ulong Rw1c = 0, ulong? AfterOnes = null, ulong? AfterZeroes = null)
    {
        public override string ToString() => Name;
    }

    static VtdOptions Config(string name) => name switch
    {
        "default" => new VtdOptions(),                               // HAW 39, SMTS, QI, IR, EIM, DT, 8 records at 0x220, IRO 0xF0
        "legacy" => new VtdOptions { ScalableMode = false, ExtendedInterruptMode = false, FaultRecordingRegisters = 2 },
        "pmr" => new VtdOptions { ProtectedMemoryRegions = true, HostAddressWidth = 46, FaultRecordingRegisters = 1 },
        _ => throw new ArgumentException(name),
    };

    /// <summary>The spec table, written out for each configuration (not derived from the model).</summary>
    static List<Row> Table(string config)
    {
        bool sm = config != "legacy", eim = config != "legacy", pmr = config == "pmr";
        ulong haw = config == "pmr" ? (1UL << 46) - 1 : (1UL << 39) - 1;
        ulong address = haw & ~0xFFFUL;
        var o = Config(config);
        var rows = new List<Row>
        {
            new("VER", 0x00, 32, 0x10, 0),
            new("CAP", 0x08, 64, o.CapabilityRegister(), 0),
            new("ECAP", 0x10, 64, o.ExtendedCapabilityRegister(), 0),
            new("GCMD", 0x18, 32, 0, 0, AfterOnes: 0),                  // write only: reads 0 whatever it started
            new("GSTS", 0x1C, 32, 0, 0),
            new("RTADDR", 0x20, 64, 0, address | (sm ? 0xC00UL : 0)),
            // ICC set with CIRG=11b runs a device-selective invalidation: ICC clears, CAIG reports 11b.
            new("CCMD", 0x28, 64, 0, 0xE000_0003_FFFF_FFFFUL, AfterOnes: 0x7800_0003_FFFF_FFFFUL),
            new("FSTS", 0x34, 32, 0, 0, Rw1c: 0x71),
            new("FECTL", 0x38, 32, 0x8000_0000, 0x8000_0000),
            new("FEDATA", 0x3C, 32, 0, 0xFFFF),
            new("FEADDR", 0x40, 32, 0, 0xFFFF_FFFC),
            new("FEUADDR", 0x44, 32, 0, eim ? 0xFFFF_FFFFUL : 0),
            new("IQH", 0x80, 64, 0, 0),
            new("IQT", 0x88, 64, 0, 0x7_FFF0),
            new("IQA", 0x90, 64, 0, address | (sm ? 0x800UL : 0) | 7),
            new("ICS", 0x9C, 32, 0, 0, Rw1c: 1),
            new("IECTL", 0xA0, 32, 0x8000_0000, 0x8000_0000),
            new("IEDATA", 0xA4, 32, 0, 0xFFFF),
            new("IEADDR", 0xA8, 32, 0, 0xFFFF_FFFC),
            new("IEUADDR", 0xAC, 32, 0, eim ? 0xFFFF_FFFFUL : 0),
            new("IQERCD", 0xB0, 64, 0, 0),
            new("IRTA", 0xB8, 64, 0, address | (eim ? 0x800UL : 0) | 0xF),
            new("IVA", 0xF0, 64, 0, 0xFFFF_FFFF_FFFF_F07FUL),
            // IVT set with IIRG=11b (page-selective, AM 0 from IVA): IVT clears, IAIG reports 11b.
            new("IOTLB", 0xF8, 64, 0, 0xB003_FFFFUL << 32, AfterOnes: 0x3603_FFFFUL << 32),
        };
        if (pmr)
        {
            // EPM RW; PRS (bit 0) follows it at once.
            rows.Add(new("PMEN", 0x64, 32, 0, 0x8000_0000, AfterOnes: 0x8000_0001, AfterZeroes: 0));
            rows.Add(new("PLMBASE", 0x68, 32, 0, 0xFFE0_0000));
            rows.Add(new("PLMLIMIT", 0x6C, 32, 0, 0xFFE0_0000));
            rows.Add(new("PHMBASE", 0x70, 64, 0, haw & ~0x1F_FFFFUL));
            rows.Add(new("PHMLIMIT", 0x78, 64, 0, haw & ~0x1F_FFFFUL));
        }
        for (int i = 0; i < o.FaultRecordingRegisters; i++)
        {
            rows.Add(new($"FRCD{i}.LO", 0x220 + 16 * i, 64, 0, 0));
            rows.Add(new($"FRCD{i}.HI", 0x228 + 16 * i, 64, 0, 0, Rw1c: 1UL << 63));
        }
        return rows;
    }

    public static TheoryData<string, Row> Registers()
    {
        var data = new TheoryData<string, Row>();
        foreach (string config in new[] { "default", "legacy", "pmr" })
        {
            foreach (var row in Table(config))
            {
                data.Add(config, row);
            }
        }
        return data;
    }

    static ulong Read(VtdFixture f, Row r) => r.Width == 64 ? f.R64(r.Offset) : f.R32(r.Offset);

    static void Write(VtdFixture f, Row r, ulong value)
    {
        if (r.Width == 64) f.W64(r.Offset, value); else f.W32(r.Offset, (uint)value);
    }

    [Theory]
    [MemberData(nameof(Registers))]
    public void ResetValueWriteMaskAndWriteOneToClearMatchTheSpec(string config, Row r)
    {
        using var f = new VtdFixture(Config(config));
        ulong ones = r.Width == 64 ? ~0UL : 0xFFFF_FFFFUL;
        Assert.Equal(r.Reset, Read(f, r));
        Write(f, r, ones);
        ulong afterOnes = r.AfterOnes ?? ((r.Reset & ~r.Rw & ~r.Rw1c) | r.Rw);
        Assert.Equal(afterOnes, Read(f, r));
        Write(f, r, 0);
        Assert.Equal(r.AfterZeroes ?? (afterOnes & ~r.Rw), Read(f, r));
        if (r.Name != "GCMD")
        {
            // Only GCMD's all-ones has something to count: SFL/EAFL while CAP.AFL=0.
            Assert.Equal(0, f.Unit.Counters.GuestRegisterErrors.Value);
        }
    }

    [Theory]
    [InlineData("default")]
    [InlineData("legacy")]
    [InlineData("pmr")]
    public void EveryOtherOffsetIsReservedReadsZeroAndCountsWrites(string config)
    {
        var options = Config(config);
        using var f = new VtdFixture(options);
        var covered = new HashSet<int>();
        foreach (var r in Table(config))
        {
            for (int d = 0; d < r.Width / 32; d++) covered.Add(r.Offset + 4 * d);
        }
        int reserved = 0;
        for (int offset = 0; offset < (int)options.RegionSize; offset += 4)
        {
            if (covered.Contains(offset)) continue;
            f.W32(offset, 0xFFFF_FFFF);
            Assert.Equal(0u, f.R32(offset));
            reserved++;
        }
        Assert.Equal(reserved, f.Unit.Counters.GuestRegisterErrors.Value);
        // And nothing a reserved write did reached a register.
        foreach (var r in Table(config)) Assert.Equal(r.Reset, Read(f, r));
    }

    [Fact]
    public void FaultStatusBitsClearOnlyWhenWrittenOne()
    {
        using var f = new VtdFixture(new VtdOptions { FaultRecordingRegisters = 1 });
        f.EnableTranslation();
        var dma = f.Unit.DmaSpaceFor(0x0010);
        dma.Read(0x1000, new byte[4]);               // no root entry: fault recorded in FRCD0
        dma.Read(0x2000, new byte[4]);               // a different fault with the only record in use: PFO
        const uint Pfo = 1, Ppf = 2;
        Assert.Equal(Pfo | Ppf, f.R32(Fsts));
        f.W32(Fsts, 0);                              // RW1C: zeros change nothing
        Assert.Equal(Pfo | Ppf, f.R32(Fsts));
        f.W32(Fsts, 0xFFFF_FFFF);                    // PFO clears; PPF is RO and follows F
        Assert.Equal(Ppf, f.R32(Fsts));
        f.W64(f.Fro + 8, 0);                         // F written 0: kept
        Assert.True(F(f.FaultRecord(0).High));
        f.W64(f.Fro + 8, ~0UL);                      // F written 1: cleared, the rest of the record is RO
        var (low, high) = f.FaultRecord(0);
        Assert.False(F(high));
        Assert.Equal(0x1000UL, low);
        Assert.Equal(0x0010UL, high & 0xFFFF);
        Assert.Equal(0u, f.R32(Fsts));
    }

    [Fact]
    public void CompletionStatusClearsOnlyWhenWrittenOne()
    {
        using var f = new VtdFixture();
        const ulong Queue = 0x40_0000;
        f.W64(Iqa, Queue);
        f.Command(Qie);
        f.Ram.WriteU64(Queue, 5UL | (1UL << 4));     // invalidation wait, IF=1
        f.W64(Iqt, 16);
        Assert.Equal(1u, f.R32(Ics));
        Assert.Equal(1u << 30 | 1u << 31, f.R32(Iectl)); // masked: the event is pending (IP)
        f.W32(Ics, 0);
        Assert.Equal(1u, f.R32(Ics));
        f.W32(Ics, 0xFFFF_FFFF);
        Assert.Equal(0u, f.R32(Ics));
        Assert.Equal(1u << 31, f.R32(Iectl));        // serviced: IP cleared, nothing sent
        f.W32(Iectl, 0);
        Assert.Empty(f.Events.Messages);
    }
}
