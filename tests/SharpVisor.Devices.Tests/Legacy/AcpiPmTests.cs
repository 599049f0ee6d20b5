using SharpVisor.Devices.Legacy;

namespace SharpVisor.Devices.Tests.Legacy;

public class AcpiPmTests
{
    const ushort Pm1Sts = 0x00, Pm1En = 0x02, Pm1Cnt = 0x04, PmTmr = 0x08, Gpe0 = 0x20;

    readonly VirtualTime _time = new();
    readonly RecordingIrqLine _sci = new();
    int _powerOffs;
    readonly AcpiPm _pm;

    public AcpiPmTests() => _pm = new AcpiPm(_time.Timers, _sci, () => _powerOffs++);

    [Fact]
    public void TimerRunsAt3579545HzFromTheVirtualClock()
    {
        // Linux's acpi_pm clocksource reads PM_TMR with 32-bit inl and masks 24 bits.
        _time.Advance(1_000_000);
        uint t0 = _pm.PortRead(PmTmr, 4);
        _time.Advance(1_000_000_000);
        uint t1 = _pm.PortRead(PmTmr, 4);
        Assert.Equal(3_579_545u, (t1 - t0) & 0xFF_FFFF);
        Assert.False(_pm.TimerIs32Bit);
    }

    [Fact]
    public void TimerIs24BitsWide()
    {
        // 2^24 ticks is about 4.687 s; just after that the counter has wrapped.
        long wrapNs = (long)Math.Ceiling((1L << 24) * 1e9 / AcpiPm.TimerHz);
        _time.RunUntil(wrapNs + 1_000);
        uint value = _pm.PortRead(PmTmr, 4);
        Assert.True(value < 100, $"expected a wrapped 24-bit counter, got {value}");
        Assert.Equal(0u, value & 0xFF00_0000);
    }

    [Fact]
    public void TimerIsMonotonicBetweenWraps()
    {
        uint last = 0;
        for (int i = 0; i < 100; i++)
        {
            _time.Advance(12_345);
            uint now = _pm.PortRead(PmTmr, 4);
            Assert.True(now > last);
            last = now;
        }
    }

    [Fact]
    public void SleepEnableWithS5TypePowersOff()
    {
        // ACPICA acpi_hw_legacy_sleep: write SLP_TYP, then SLP_TYP | SLP_EN.
        uint cnt = _pm.PortRead(Pm1Cnt, 2);
        cnt = (cnt & ~(7u << 10)) | (7u << 10);
        _pm.PortWrite(Pm1Cnt, 2, cnt);
        Assert.Equal(0, _powerOffs);
        _pm.PortWrite(Pm1Cnt, 2, cnt | (1u << 13));
        Assert.Equal(1, _powerOffs);
    }

    [Fact]
    public void OtherSleepTypesWakeAtOnceInsteadOfPoweringOff()
    {
        _pm.PortWrite(Pm1Cnt, 2, 1u | (5u << 10) | (1u << 13));
        Assert.Equal(0, _powerOffs);
        Assert.Equal(1, _pm.UnsupportedSleepRequests.Value);
        Assert.NotEqual(0u, _pm.PortRead(Pm1Sts, 2) & 0x8000); // WAK_STS ends the guest's wait loop
        Assert.Equal(0u, _pm.PortRead(Pm1Cnt, 2) & (1u << 13)); // SLP_EN reads 0
    }

    [Fact]
    public void SciEnIsSetAtResetAndSlpTypReadsBack()
    {
        Assert.Equal(1u, _pm.PortRead(Pm1Cnt, 2) & 1);
        _pm.PortWrite(Pm1Cnt, 2, 1u | (3u << 10));
        Assert.Equal(1u | (3u << 10), _pm.PortRead(Pm1Cnt, 2));
    }

    [Fact]
    public void PowerButtonRaisesSciOnlyWhenEnabledAndClearsOnWriteOne()
    {
        _pm.PressPowerButton();
        Assert.False(_sci.Level);
        Assert.Equal(0x100u, _pm.PortRead(Pm1Sts, 2) & 0x100);
        _pm.PortWrite(Pm1En, 2, 0x100);
        Assert.True(_sci.Level);
        _pm.PortWrite(Pm1Sts, 2, 0x100);
        Assert.False(_sci.Level);
        Assert.Equal(0u, _pm.PortRead(Pm1Sts, 2) & 0x100);
    }

    [Fact]
    public void NoSciWhileSciEnIsClear()
    {
        _pm.PortWrite(Pm1Cnt, 2, 0);
        _pm.PortWrite(Pm1En, 2, 0x100);
        _pm.PressPowerButton();
        Assert.False(_sci.Level);
        _pm.PortWrite(Pm1Cnt, 2, 1);
        Assert.True(_sci.Level);
    }

    [Fact]
    public void TimerOverflowSetsTmrStsAndRaisesSciWhenEnabled()
    {
        _pm.PortWrite(Pm1En, 2, 1); // TMR_EN
        Assert.False(_sci.Level);
        long toggleNs = (long)Math.Ceiling((1L << 23) * 1e9 / AcpiPm.TimerHz);
        _time.RunUntil(toggleNs - 1_000);
        Assert.False(_sci.Level);
        Assert.Equal(0u, _pm.PortRead(Pm1Sts, 2) & 1);
        _time.RunUntil(toggleNs + 1_000);
        Assert.True(_sci.Level);
        Assert.Equal(1u, _pm.PortRead(Pm1Sts, 2) & 1);
        _pm.PortWrite(Pm1Sts, 2, 1);
        Assert.False(_sci.Level);
    }

    [Fact]
    public void Gpe0StatusReadsZeroAndEnableReadsBack()
    {
        for (ushort i = 0; i < 8; i++)
        {
            Assert.Equal(0u, _pm.PortRead((ushort)(Gpe0 + i), 1));
        }
        _pm.PortWrite(Gpe0 + 8, 1, 0x5A);
        Assert.Equal(0x5Au, _pm.PortRead(Gpe0 + 8, 1));
    }

    [Fact]
    public void UnknownRegistersAreCountedNotFatal()
    {
        Assert.Equal(0u, _pm.PortRead(0x50, 4));
        _pm.PortWrite(0x50, 4, 0xFFFF_FFFF);
        Assert.True(_pm.UnknownRegisterAccesses.Value >= 2);
    }
}
