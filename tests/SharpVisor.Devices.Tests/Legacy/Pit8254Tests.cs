using SharpVisor.Devices.Legacy;

namespace SharpVisor.Devices.Tests.Legacy;

public class Pit8254Tests
{
    const double Hz = 1_193_182;

    readonly VirtualTime _time = new();
    readonly RecordingIrqLine _irq0;
    readonly Pit8254 _pit;

    public Pit8254Tests()
    {
        _irq0 = new RecordingIrqLine(_time.Clock);
        _pit = new Pit8254(_time.Timers, _irq0);
        // Quiesce the BIOS-style mode 3 on channel 0 so tests count only their own edges.
        Control(0x30);
    }

    void Control(uint v) => _pit.PortWrite(3, 1, v);
    void Counter(ushort ch, uint v) => _pit.PortWrite(ch, 1, v);
    uint Read(ushort ch) => _pit.PortRead(ch, 1);
    uint Port61 => _pit.Port61.PortRead(0, 1);
    static long Tick(long ns) => (long)Math.Floor(ns * Hz / 1e9);
    static long NsOfTick(long tick) => (long)Math.Ceiling(tick * 1e9 / Hz);

    [Fact]
    public void Channel2OutRisesExactlyAfterTheCalibrationCount()
    {
        // arch/x86/kernel/tsc.c pit_calibrate_tsc(latch = 1193182 / 100, 10 ms).
        _time.Advance(12_345);
        const int latch = 11931;
        _pit.Port61.PortWrite(0, 1, (Port61 & ~0x02u) | 0x01);
        Control(0xB0);
        Counter(2, latch & 0xFF);
        Counter(2, latch >> 8);
        long edgeNs = NsOfTick(Tick(12_345) + latch);
        Assert.Equal(0u, Port61 & 0x20);
        _time.RunUntil(edgeNs - 1);
        Assert.Equal(0u, Port61 & 0x20);
        _time.RunUntil(edgeNs);
        Assert.Equal(0x20u, Port61 & 0x20);
        _time.Advance(100_000_000);
        Assert.Equal(0x20u, Port61 & 0x20); // mode 0 OUT stays high
    }

    [Fact]
    public void QuickCalibrationSeesTheMsbCountDown()
    {
        // quick_pit_calibrate: mode 0 from 0xffff, reads LSB then MSB of the live counter.
        _pit.Port61.PortWrite(0, 1, 0x01);
        Control(0xB0);
        Counter(2, 0xFF);
        Counter(2, 0xFF);
        for (int k = 0; k < 20; k++)
        {
            _time.RunUntil(NsOfTick(256L * k + 128));
            _ = Read(2);
            Assert.Equal((uint)(0xFF - k), Read(2));
        }
    }

    [Fact]
    public void LatchedCountDoesNotMoveUntilRead()
    {
        Control(0x34);
        Counter(0, 0x00);
        Counter(0, 0x10); // 4096
        _time.RunUntil(NsOfTick(100));
        Control(0x00); // latch channel 0
        _time.Advance(1_000_000);
        uint lo = Read(0), hi = Read(0);
        Assert.Equal(4096u - 100, lo | (hi << 8));
        // After the latch is consumed reads are live again.
        lo = Read(0);
        hi = Read(0);
        Assert.NotEqual(4096u - 100, lo | (hi << 8));
    }

    [Fact]
    public void SecondLatchBeforeReadIsIgnored()
    {
        Control(0x34);
        Counter(0, 0x00);
        Counter(0, 0x10);
        _time.RunUntil(NsOfTick(10));
        Control(0x00);
        _time.RunUntil(NsOfTick(50));
        Control(0x00);
        uint value = Read(0) | (Read(0) << 8);
        Assert.Equal(4096u - 10, value);
    }

    [Fact]
    public void ReadBackStatusShowsOutNullCountAndMode()
    {
        Control(0x34); // channel 0, lo/hi, mode 2
        Control(0xE2); // read-back: status only, channel 0
        Assert.Equal(0x80u | 0x40 | 0x30 | 0x04, Read(0));
        Counter(0, 0x10);
        Counter(0, 0x00);
        Control(0xE2);
        Assert.Equal(0x80u | 0x30 | 0x04, Read(0)); // count loaded: null count clear
        Control(0xC2); // status and count
        Assert.Equal(0x80u | 0x30 | 0x04, Read(0));
        Assert.Equal(0x10u, Read(0));
        Assert.Equal(0x00u, Read(0));
    }

    [Fact]
    public void Mode2GivesHzInterruptsOnIrq0()
    {
        // i8253 clockevent periodic: outb(0x34), LATCH = (1193182 + HZ/2) / HZ lo, hi.
        const int latch = (1193182 + 125) / 250;
        Control(0x34);
        Counter(0, latch & 0xFF);
        Counter(0, latch >> 8);
        _time.RunUntil(1_000_000_000);
        Assert.Equal((int)(Hz / latch), _irq0.RisingEdges);
        for (int k = 0; k < _irq0.EdgeTimesNs.Count; k++)
        {
            Assert.Equal(NsOfTick((long)latch * (k + 1)), _irq0.EdgeTimesNs[k]);
        }
    }

    [Fact]
    public void Mode0OneShotInterruptsOnce()
    {
        // i8253 clockevent oneshot: outb(0x30) then the delta lo, hi.
        Control(0x30);
        Counter(0, 1000 & 0xFF);
        Counter(0, 1000 >> 8);
        _time.RunUntil(100_000_000);
        Assert.Equal(1, _irq0.RisingEdges);
        Assert.Equal(NsOfTick(1000), _irq0.EdgeTimesNs[0]);
    }

    [Fact]
    public void ReprogrammingInALoopFiresOnlyForTheLastCount()
    {
        for (int i = 0; i < 10_000; i++)
        {
            Control(0x30);
            int count = i % 2 == 0 ? 60_000 : 50;
            Counter(0, (uint)(count & 0xFF));
            Counter(0, (uint)(count >> 8));
        }
        // The last program (i = 9999) is 50 ticks; earlier deadlines must not fire.
        _time.RunUntil(100_000_000);
        Assert.Equal(1, _irq0.RisingEdges);
        Assert.Equal(NsOfTick(50), _irq0.EdgeTimesNs[0]);
    }

    [Fact]
    public void CountZeroMeans65536()
    {
        Control(0x34);
        Counter(0, 0);
        Counter(0, 0);
        _time.RunUntil(1_000_000_000);
        Assert.Equal((int)(Hz / 65536), _irq0.RisingEdges);
    }

    [Fact]
    public void TinyPeriodsAreRateLimitedNotAStorm()
    {
        Control(0x34);
        Counter(0, 2);
        Counter(0, 0);
        _time.RunUntil(1_000_000);
        Assert.InRange(_irq0.RisingEdges, 50, 1 + (int)(1_000_000 / Pit8254.MinIrqIntervalNs));
        Assert.True(_pit.CoalescedIrqs.Value > 0);
        // The counter itself still runs at full rate.
        Control(0x00);
        uint count = Read(0) | (Read(0) << 8);
        Assert.InRange(count, 1u, 2u);
    }

    [Fact]
    public void Mode2CountOfOneIsTreatedAsTwo()
    {
        Control(0x34);
        Counter(0, 1);
        Counter(0, 0);
        Assert.Equal(1, _pit.IllegalCounts.Value);
        _time.RunUntil(1_000_000);
        Assert.True(_irq0.RisingEdges > 0);
    }

    [Fact]
    public void Mode3IsASquareWaveOnOut2()
    {
        _pit.Port61.PortWrite(0, 1, 0x01);
        Control(0xB6); // channel 2, lo/hi, mode 3
        Counter(2, 1000 & 0xFF);
        Counter(2, 1000 >> 8);
        _time.RunUntil(NsOfTick(499));
        Assert.Equal(0x20u, Port61 & 0x20);
        _time.RunUntil(NsOfTick(500));
        Assert.Equal(0u, Port61 & 0x20);
        _time.RunUntil(NsOfTick(999));
        Assert.Equal(0u, Port61 & 0x20);
        _time.RunUntil(NsOfTick(1000));
        Assert.Equal(0x20u, Port61 & 0x20);
    }

    [Fact]
    public void GateLowPausesMode0()
    {
        _pit.Port61.PortWrite(0, 1, 0x01);
        Control(0xB0);
        Counter(2, 0x00);
        Counter(2, 0x10);
        _time.RunUntil(NsOfTick(100));
        _pit.Port61.PortWrite(0, 1, 0x00);
        _time.Advance(10_000_000);
        Control(0x80);
        Assert.Equal(4096u - 100, Read(2) | (Read(2) << 8));
        long resumedTick = Tick(_time.NowNs);
        _pit.Port61.PortWrite(0, 1, 0x01);
        _time.RunUntil(NsOfTick(resumedTick + 50));
        Control(0x80);
        Assert.Equal(4096u - 150, Read(2) | (Read(2) << 8));
    }

    [Fact]
    public void DisconnectedIrq0GivesNoEdges()
    {
        _pit.Irq0Connected = false;
        Control(0x34);
        Counter(0, 0x00);
        Counter(0, 0x10);
        _time.RunUntil(100_000_000);
        Assert.Equal(0, _irq0.RisingEdges);
        _pit.Irq0Connected = true;
        _time.Advance(100_000_000);
        Assert.True(_irq0.RisingEdges > 0);
    }

    [Fact]
    public void BcdCountsInDecimal()
    {
        _pit.Port61.PortWrite(0, 1, 0x01);
        Control(0xB1); // channel 2, lo/hi, mode 0, BCD
        Counter(2, 0x00);
        Counter(2, 0x10); // 1000 decimal
        _time.RunUntil(NsOfTick(10));
        Control(0x80);
        Assert.Equal(0x0990u, Read(2) | (Read(2) << 8));
    }

    [Fact]
    public void UnlatchedLoHiReadsAlternate()
    {
        Control(0x30);
        Counter(0, 0x34);
        Counter(0, 0x12);
        Assert.Equal(0x34u, Read(0));
        Assert.Equal(0x12u, Read(0));
        Assert.Equal(0x34u, Read(0));
    }

    [Fact]
    public void RefreshToggleFlips()
    {
        uint a = Port61 & 0x10;
        _time.Advance(15_085);
        uint b = Port61 & 0x10;
        Assert.NotEqual(a, b);
    }

    [Fact]
    public void ControlRegisterReadIsCountedNotFatal()
    {
        Assert.Equal(0xFFu, Read(3));
        Assert.Equal(1, _pit.BadAccesses.Value);
    }
}
