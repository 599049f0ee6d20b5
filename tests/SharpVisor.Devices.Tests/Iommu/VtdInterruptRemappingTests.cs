using SharpVisor.Core;
using SharpVisor.Devices.Iommu;
using static SharpVisor.Devices.Tests.Iommu.VtdFixture;

namespace SharpVisor.Devices.Tests.Iommu;

public class VtdInterruptRemappingTests
{
    const ushort Dev = 0x0010;
    const ulong Table = 0x30_0000;
    const ulong Queue = 0x40_0000;

    /// <summary>IRTE (9.10): P, vector, fixed delivery, destination; SVT=01b SID check by default.</summary>
    static (ulong Lo, ulong Hi) Irte(byte vector, uint dest, ushort sid = Dev, int svt = 1, int sq = 0, bool logical = false, bool level = false)
        => (1UL | (logical ? 4UL : 0) | (level ? 16UL : 0) | ((ulong)vector << 16) | ((ulong)dest << 32),
            sid | ((ulong)(uint)sq << 16) | ((ulong)(uint)svt << 18));

    /// <summary>Remappable-format MSI address (5.1.2.2): handle 14:0 in 19:5, bit 4 format, bit 3 SHV, bit 2 handle 15.</summary>
    static ulong Remappable(int handle, bool shv = false)
        => 0xFEE0_0000UL | ((ulong)(handle & 0x7FFF) << 5) | (1UL << 4) | (shv ? 1UL << 3 : 0) | ((ulong)(handle >> 15) << 2);

    static VtdFixture Enabled(bool x2apic = true, int sizeField = 7)
    {
        var f = new VtdFixture();
        f.W64(Iqt, 0);
        f.W64(Iqa, Queue);
        f.Command(Qie);
        f.W64(Irta, Table | (x2apic ? 1UL << 11 : 0) | (uint)sizeField);
        f.Command(Sirtp);
        f.Command(Ire);
        f.W32(Fedata, 0x20);
        f.W32(Feaddr, 0xFEE0_0000);
        f.W32(Fectl, 0);
        return f;
    }

    static void SetIrte(VtdFixture f, int index, (ulong Lo, ulong Hi) e)
    {
        f.Ram.WriteU64(Table + (ulong)index * 16, e.Lo);
        f.Ram.WriteU64(Table + (ulong)index * 16 + 8, e.Hi);
    }

    static void AssertBlocked(VtdFixture f, VtdFaultReason reason, int index)
    {
        Assert.Empty(f.Apic.Delivered);
        var (low, high) = f.FaultRecord(0);
        Assert.True(F(high));
        Assert.Equal((int)reason, Reason(high));
        Assert.Equal((ulong)index, low >> 48);           // FI 63:48: the interrupt index
        Assert.Single(f.Events.Messages);
    }

    [Fact]
    public void RemappableMsiIsDeliveredPerIrteInX2ApicMode()
    {
        using var f = Enabled();
        SetIrte(f, 5, Irte(0x30, 0x1_2345, level: true, logical: true));
        f.Unit.InterruptRemapper.SendMsi(Remappable(5), 0, Dev);
        var irq = Assert.Single(f.Apic.Delivered);
        Assert.Equal(new ApicInterrupt(0x1_2345, true, ApicDeliveryMode.Fixed, 0x30, true), irq);
        Assert.Equal(1, f.Unit.Counters.InterruptsRemapped.Value);
    }

    [Fact]
    public void SubhandleIsAddedWhenShvIsSet()
    {
        using var f = Enabled();
        SetIrte(f, 5, Irte(0x31, 1));
        f.Unit.InterruptRemapper.SendMsi(Remappable(4, shv: true), 1, Dev);
        Assert.Equal(0x31, Assert.Single(f.Apic.Delivered).Vector);
    }

    [Fact]
    public void XApicModeTakesTheDestinationFromBits15To8()
    {
        using var f = Enabled(x2apic: false);
        SetIrte(f, 2, Irte(0x40, 0x0300));   // Linux IRTE_DEST: dest << 8 in xAPIC mode
        f.Unit.InterruptRemapper.SendMsi(Remappable(2), 0, Dev);
        Assert.Equal(3u, Assert.Single(f.Apic.Delivered).Destination);
    }

    [Fact]
    public void XApicModeTreatsUnusedDestinationBitsAsReserved()
    {
        using var f = Enabled(x2apic: false);
        SetIrte(f, 2, Irte(0x40, 0x1_0300));
        f.Unit.InterruptRemapper.SendMsi(Remappable(2), 0, Dev);
        AssertBlocked(f, VtdFaultReason.IrteReserved, 2);
    }

    [Fact]
    public void IndexBeyondTheTableIsBlocked()
    {
        using var f = Enabled(sizeField: 7);   // 256 entries
        f.Unit.InterruptRemapper.SendMsi(Remappable(300), 0, Dev);
        AssertBlocked(f, VtdFaultReason.IrIndexBeyondTable, 300);
    }

    [Fact]
    public void NotPresentIrteIsBlocked()
    {
        using var f = Enabled();
        f.Unit.InterruptRemapper.SendMsi(Remappable(9), 0, Dev);
        AssertBlocked(f, VtdFaultReason.IrteNotPresent, 9);
    }

    [Fact]
    public void FpdSuppressesTheNotPresentFault()
    {
        using var f = Enabled();
        SetIrte(f, 9, (2UL, 0UL));            // FPD, not present
        f.Unit.InterruptRemapper.SendMsi(Remappable(9), 0, Dev);
        Assert.Empty(f.Apic.Delivered);
        Assert.False(F(f.FaultRecord(0).High));
        Assert.Equal(1, f.Unit.Counters.FaultsSuppressedByFpd.Value);
    }

    [Theory]
    [InlineData(1UL << 12, 0UL)]      // reserved 14:12
    [InlineData(1UL << 15, 0UL)]      // IM (posted) without posted-interrupt support
    [InlineData(3UL << 5, 0UL)]       // delivery mode 011b
    [InlineData(0UL, 1UL << 20)]      // reserved high bits
    [InlineData(0UL, 3UL << 18)]      // SVT 11b
    public void ReservedIrteFieldsBlock(ulong extraLo, ulong extraHi)
    {
        using var f = Enabled();
        var e = Irte(0x30, 1, svt: 0);
        SetIrte(f, 1, (e.Lo | extraLo, e.Hi | extraHi));
        f.Unit.InterruptRemapper.SendMsi(Remappable(1), 0, Dev);
        AssertBlocked(f, VtdFaultReason.IrteReserved, 1);
    }

    [Fact]
    public void SpoofedSourceIdIsBlocked()
    {
        using var f = Enabled();
        SetIrte(f, 1, Irte(0x30, 1, sid: Dev));
        f.Unit.InterruptRemapper.SendMsi(Remappable(1), 0, 0x0018);   // 00:03.0 uses 00:02.0's entry
        AssertBlocked(f, VtdFaultReason.IrSourceIdMismatch, 1);
    }

    [Fact]
    public void SourceQualifierAndBusRangeVerification()
    {
        using var f = Enabled();
        SetIrte(f, 1, Irte(0x31, 1, sid: 0x0010, sq: 3));          // any function of 00:02
        SetIrte(f, 2, Irte(0x32, 1, sid: 0x0204, svt: 2));         // buses 2..4
        f.Unit.InterruptRemapper.SendMsi(Remappable(1), 0, 0x0017);
        f.Unit.InterruptRemapper.SendMsi(Remappable(2), 0, 0x0308);
        Assert.Equal(2, f.Apic.Delivered.Count);
        f.Unit.InterruptRemapper.SendMsi(Remappable(2), 0, 0x0508);
        Assert.Equal(2, f.Apic.Delivered.Count);
        Assert.Equal((int)VtdFaultReason.IrSourceIdMismatch, Reason(f.FaultRecord(0).High));
    }

    [Fact]
    public void CompatibilityFormatIsBlockedUnlessCfiIsSet()
    {
        using var f = Enabled();
        f.Unit.InterruptRemapper.SendMsi(0xFEE0_1000, 0x51, Dev);
        AssertBlocked(f, VtdFaultReason.IrCompatibilityBlocked, 0);
        f.Command(Cfi);
        f.Unit.InterruptRemapper.SendMsi(0xFEE0_1000, 0x51, Dev);
        var irq = Assert.Single(f.Apic.Delivered);
        Assert.Equal((0x51, 1u), (irq.Vector, irq.Destination));
    }

    [Fact]
    public void WithRemappingDisabledMessagesPassUnchanged()
    {
        using var f = new VtdFixture();
        f.Unit.InterruptRemapper.SendMsi(0xFEE0_1000, 0x52, Dev);
        Assert.Equal(0x52, Assert.Single(f.Apic.Delivered).Vector);
    }

    [Fact]
    public void TableOutsideRamIsAnAccessFault()
    {
        using var f = new VtdFixture();
        f.W64(Irta, 0x7000_0000 | 7);
        f.Command(Sirtp);
        f.Command(Ire);
        f.Unit.InterruptRemapper.SendMsi(Remappable(3), 0, Dev);
        Assert.Empty(f.Apic.Delivered);
        Assert.Equal((int)VtdFaultReason.IrTableAccessError, Reason(f.FaultRecord(0).High));
    }

    [Fact]
    public void InterruptEntryCacheHoldsTheOldEntryUntilInvalidated()
    {
        using var f = Enabled();
        SetIrte(f, 4, Irte(0x30, 1));
        f.Unit.InterruptRemapper.SendMsi(Remappable(4), 0, Dev);
        SetIrte(f, 4, Irte(0x60, 1));
        f.Unit.InterruptRemapper.SendMsi(Remappable(4), 0, Dev);
        Assert.Equal(0x30, f.Apic.Delivered[1].Vector);
        // Index-selective invalidation of index 4 (6.5.2.7), as Linux qi_flush_iec does.
        f.Ram.WriteU64(Queue, 4UL | (1UL << 4) | (4UL << 32));
        f.Ram.WriteU64(Queue + 8, 0);
        f.W64(Iqt, 16);
        f.Unit.InterruptRemapper.SendMsi(Remappable(4), 0, Dev);
        Assert.Equal(0x60, f.Apic.Delivered[2].Vector);
    }

    [Fact]
    public void DeviceDmaWriteToTheInterruptRangeIsRemapped()
    {
        using var f = Enabled();
        SetIrte(f, 6, Irte(0x33, 2));
        Assert.Equal(DmaStatus.Ok, f.Unit.DmaSpaceFor(Dev).Write(Remappable(6), BitConverter.GetBytes(0u)));
        Assert.Equal(0x33, Assert.Single(f.Apic.Delivered).Vector);
    }
}
