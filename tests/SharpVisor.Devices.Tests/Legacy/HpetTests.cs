using SharpVisor.Core;
using SharpVisor.Devices.Legacy;

namespace SharpVisor.Devices.Tests.Legacy;

public class HpetTests
{
    const ulong Id = 0x000, Period = 0x004, Cfg = 0x010, Status = 0x020, CounterLo = 0x0F0, CounterHi = 0x0F4;
    const ulong Enable = 1, Legacy = 2;
    const ulong TnLevel = 1 << 1, TnEnable = 1 << 2, TnPeriodic = 1 << 3, TnValSet = 1 << 6, Tn32Bit = 1 << 8;

    static ulong TCfg(int n) => 0x100 + 0x20 * (ulong)n;
    static ulong TCmp(int n) => 0x108 + 0x20 * (ulong)n;

    readonly VirtualTime _time = new();
    readonly RecordingIrqLine _irq0;
    readonly RecordingIrqLine _irq8;
    readonly Dictionary<int, RecordingIrqLine> _gsi = [];
    readonly List<bool> _legacyChanges = [];
    readonly Hpet _hpet;

    public HpetTests()
    {
        _irq0 = new RecordingIrqLine(_time.Clock);
        _irq8 = new RecordingIrqLine(_time.Clock);
        for (int i = 0; i < 24; i++)
        {
            _gsi[i] = new RecordingIrqLine(_time.Clock);
        }
        _hpet = new Hpet(_time.Timers, _irq0, _irq8, gsi => _gsi.GetValueOrDefault(gsi), on => _legacyChanges.Add(on));
    }

    uint Readl(ulong offset) => (uint)_hpet.MmioRead(offset, 4);
    void Writel(ulong offset, uint value) => _hpet.MmioWrite(offset, 4, value);
    ulong Counter => _hpet.MmioRead(CounterLo, 8);

    [Fact]
    public void CapabilitiesDescribeThreeTimers64BitLegacyCapableAt100MHz()
    {
        uint id = Readl(Id);
        Assert.Equal(0x8086u, id >> 16);
        Assert.Equal(2u, (id >> 8) & 0x1F); // number of timers - 1
        Assert.Equal(1u << 13, id & (1u << 13)); // 64-bit counter
        Assert.Equal(1u << 15, id & (1u << 15)); // legacy replacement capable
        Assert.Equal(1u, id & 0xFF);
        // Linux hpet_enable: period must be in 100000..100000000 fs.
        Assert.Equal(Hpet.PeriodFs, Readl(Period));
        Assert.Equal(0x00FF_0104u, Readl(TCfg(0) + 4));
        Assert.NotEqual(0u, Readl(TCfg(0)) & (1 << 4)); // periodic capable
    }

    [Fact]
    public void CounterIsHaltedUntilEnabledThenRunsAt100MHz()
    {
        _time.Advance(1_000_000);
        Assert.Equal(0ul, Counter);
        Writel(Cfg, (uint)Enable);
        _time.Advance(1_000_000);
        Assert.Equal(100_000ul, Counter);
        Writel(Cfg, 0);
        _time.Advance(1_000_000);
        Assert.Equal(100_000ul, Counter); // halting keeps the value
        Writel(Cfg, (uint)Enable);
        _time.Advance(10);
        Assert.Equal(100_001ul, Counter);
    }

    [Fact]
    public void CounterIsMonotonicAcross32BitHalves()
    {
        Writel(Cfg, (uint)Enable);
        ulong last = 0;
        for (int i = 0; i < 200; i++)
        {
            _time.Advance(7_777);
            // hpet_readl of the low half, as Linux's clocksource does.
            ulong value = Readl(CounterLo) | ((ulong)Readl(CounterHi) << 32);
            Assert.True(value > last);
            last = value;
        }
    }

    [Fact]
    public void CounterCanBeWrittenWhileHalted()
    {
        Writel(CounterLo, 0xFFFF_FFF0);
        Writel(CounterHi, 0x1);
        Assert.Equal(0x1_FFFF_FFF0ul, Counter);
        Writel(Cfg, (uint)Enable);
        _time.Advance(1000);
        Assert.Equal(0x2_0000_0054ul, Counter); // carries into the upper half
    }

    void LinuxLegacyPeriodic(uint delta)
    {
        // arch/x86/kernel/hpet.c hpet_enable_legacy_int + _hpet_set_periodic.
        Writel(Cfg, Readl(Cfg) | (uint)Legacy);
        Writel(Cfg, Readl(Cfg) & ~(uint)Enable);
        uint now = Readl(CounterLo);
        uint cmp = now + delta;
        uint cfg = Readl(TCfg(0));
        cfg |= (uint)(TnEnable | TnPeriodic | TnValSet | Tn32Bit);
        Writel(TCfg(0), cfg);
        Writel(TCmp(0), cmp);
        Writel(TCmp(0), delta);
        Writel(Cfg, Readl(Cfg) | (uint)Enable);
    }

    [Fact]
    public void LegacyPeriodicTimer0GivesHzInterruptsOnIrq0()
    {
        LinuxLegacyPeriodic(400_000); // HZ = 250
        Assert.Equal([true], _legacyChanges);
        _time.RunUntil(1_000_000_000);
        Assert.Equal(250, _irq0.RisingEdges);
        for (int k = 0; k < 250; k++)
        {
            Assert.Equal(4_000_000L * (k + 1), _irq0.EdgeTimesNs[k]);
        }
        Assert.Equal(0, _irq8.RisingEdges);
        Assert.All(_gsi.Values, l => Assert.Equal(0, l.RisingEdges));
    }

    [Fact]
    public void PeriodicComparatorAdvancesByThePeriod()
    {
        LinuxLegacyPeriodic(1000);
        _time.RunUntil(10_500); // between the first and second expiry
        Assert.Equal(2000u, Readl(TCmp(0)));
    }

    [Fact]
    public void OneShotOnTimer1FiresOnceOnIrq8InLegacyMode()
    {
        // hpet_clkevt_set_next_event: cnt = counter + delta; write comparator.
        Writel(Cfg, (uint)(Enable | Legacy));
        Writel(TCfg(1), (uint)(TnEnable | Tn32Bit));
        _time.Advance(5_000);
        uint cnt = Readl(CounterLo) + 50_000;
        Writel(TCmp(1), cnt);
        _time.Advance(10_000_000);
        Assert.Equal(1, _irq8.RisingEdges);
        Assert.Equal(5_000 + 500_000, _irq8.EdgeTimesNs[0]);
        Assert.Equal(0, _irq0.RisingEdges);
    }

    [Fact]
    public void ReprogrammingTheComparatorInALoopFiresOnlyForTheLastValue()
    {
        Writel(Cfg, (uint)(Enable | Legacy));
        Writel(TCfg(1), (uint)(TnEnable | Tn32Bit));
        for (int i = 0; i < 10_000; i++)
        {
            Writel(TCmp(1), i % 2 == 0 ? 100u : 1_000_000u);
        }
        _time.RunUntil(100_000_000);
        Assert.Equal(1, _irq8.RisingEdges);
        Assert.Equal(10_000_000, _irq8.EdgeTimesNs[0]);
    }

    [Fact]
    public void ThirtyTwoBitOneShotFiresAgainAfterTheCounterWraps()
    {
        Writel(Cfg, (uint)(Enable | Legacy));
        Writel(TCfg(1), (uint)(TnEnable | Tn32Bit));
        Writel(TCmp(1), 1000);
        _time.RunUntil(1_000_000);
        Assert.Equal(1, _irq8.RisingEdges);
        _time.RunUntil(10 * (1L << 32) + 10_000);
        Assert.Equal(2, _irq8.RisingEdges);
    }

    [Fact]
    public void SixtyFourBitComparatorInThePastNeverFires()
    {
        Writel(Cfg, (uint)Enable);
        _time.Advance(1_000_000);
        Writel(TCfg(2), (uint)TnEnable | (20u << 9));
        _hpet.MmioWrite(TCmp(2), 8, 5); // long gone
        _time.Advance(1_000_000_000);
        Assert.Equal(0, _gsi[20].RisingEdges);
    }

    [Fact]
    public void LevelTriggeredTimerHoldsItsIoApicLineUntilStatusIsCleared()
    {
        Writel(Cfg, (uint)Enable);
        Writel(TCfg(2), (uint)(TnEnable | TnLevel) | (20u << 9));
        _hpet.MmioWrite(TCmp(2), 8, 1000);
        _time.RunUntil(10_000);
        Assert.True(_gsi[20].Level);
        Assert.Equal(4u, Readl(Status));
        Writel(Status, 4);
        Assert.False(_gsi[20].Level);
        Assert.Equal(0u, Readl(Status));
    }

    [Fact]
    public void DisabledLevelTimerStillSetsStatus()
    {
        Writel(Cfg, (uint)Enable);
        Writel(TCfg(2), (uint)TnLevel | (20u << 9));
        _hpet.MmioWrite(TCmp(2), 8, 1000);
        _time.RunUntil(10_000);
        Assert.Equal(4u, Readl(Status));
        Assert.False(_gsi[20].Level);
    }

    [Fact]
    public void RouteOutsideTheCapabilityIsDroppedAndCounted()
    {
        Writel(Cfg, (uint)Enable);
        Writel(TCfg(2), (uint)TnEnable | (5u << 9));
        _hpet.MmioWrite(TCmp(2), 8, 1000);
        _time.RunUntil(10_000);
        Assert.Equal(0, _gsi[5].RisingEdges);
        Assert.Equal(1, _hpet.InvalidRoutes.Value);
    }

    [Fact]
    public void PeriodZeroFiresOnceInsteadOfStorming()
    {
        Writel(TCfg(0), (uint)(TnEnable | TnPeriodic | TnValSet));
        _hpet.MmioWrite(TCmp(0), 8, 100); // comparator (VAL_SET) and accumulator
        _hpet.MmioWrite(TCmp(0), 8, 0);   // second write without VAL_SET: period 0
        Writel(Cfg, (uint)(Enable | Legacy));
        _time.RunUntil(1_000_000);
        Assert.Equal(1, _irq0.RisingEdges);
        Assert.Equal(1, _hpet.ZeroPeriods.Value);
    }

    [Fact]
    public void TinyPeriodIsRateLimited()
    {
        LinuxLegacyPeriodic(1);
        _time.RunUntil(1_000_000);
        Assert.InRange(_irq0.RisingEdges, 50, 1 + (int)(1_000_000 / Hpet.MinPeriodNs));
        Assert.True(_hpet.CoalescedPeriods.Value > 0);
    }

    [Fact]
    public void LeavingLegacyModeReportsItAndReroutes()
    {
        Writel(Cfg, (uint)(Enable | Legacy));
        Writel(Cfg, (uint)Enable);
        Assert.Equal([true, false], _legacyChanges);
        Writel(TCfg(0), (uint)TnEnable | (2u << 9)); // IOAPIC input 2 is in the capability
        _hpet.MmioWrite(TCmp(0), 8, 1000);
        _time.RunUntil(100_000);
        Assert.Equal(1, _gsi[2].RisingEdges);
        Assert.Equal(0, _irq0.RisingEdges);
    }

    [Fact]
    public void ThirtyTwoBitModeHidesTheUpperComparatorHalf()
    {
        _hpet.MmioWrite(TCmp(1), 8, 0x1234_5678_9ABC_DEF0);
        Writel(TCfg(1), (uint)Tn32Bit);
        Assert.Equal(0x9ABC_DEF0u, Readl(TCmp(1)));
        Assert.Equal(0u, Readl(TCmp(1) + 4));
    }

    [Fact]
    public void FsbEnableIsNotOfferedAndCapabilityBitsAreReadOnly()
    {
        Writel(TCfg(0), 0xFFFF_FFFF);
        uint cfg = Readl(TCfg(0));
        Assert.Equal(0u, cfg & (1u << 14)); // FSB enable
        Assert.Equal(0u, cfg & (1u << 15)); // FSB capability
        Assert.Equal(0x00FF_0104u, Readl(TCfg(0) + 4));
    }
    /// <summary>
    /// Issue 16, defect 1: six register writes from a hostile guest (found by a probe) made a
    /// comparator deadline overflow to a negative time, and the timer callback re-armed itself in
    /// the past forever, hanging the timer thread and vCPU 0. Every deadline must stay in range.
    /// </summary>
    [Fact]
    public void OverflowingComparatorDeadlineDoesNotHangTheTimerQueue()
    {
        _hpet.MmioWrite(0xF7, 1, 0xD7);
        _hpet.MmioWrite(0x105, 2, 0xFFFF);
        _hpet.MmioWrite(0x100, 4, 0x5240_E359);
        _hpet.MmioWrite(0x10, 8, 0x8177_DCB5_C0C5_9943);
        _hpet.MmioWrite(0xEE, 8, 0xB449_D12D_A23A_1098);
        _hpet.MmioWrite(0x100, 8, 0x70);
        TimerStorm.AssertTerminates(() => _time.Advance(1_000_000));
        Assert.True(_time.Timers.NextDeadlineNs > _time.NowNs, "a timer is armed in the past");
    }

    /// <summary>
    /// Random register writes (every offset, width and value) interleaved with time: the timer queue
    /// always drains and time always advances. The seed is printed by the failure message.
    /// </summary>
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public void RandomRegisterWritesNeverStallTime(int seed)
    {
        var random = new Random(seed);
        for (int i = 0; i < 2000; i++)
        {
            int size = 1 << random.Next(4);
            ulong offset = (ulong)random.Next((int)Hpet.RegionSize) & ~((ulong)size - 1);
            // Bias towards the registers that matter: config, counter and the timers.
            if (random.Next(2) == 0)
            {
                offset = (ulong)(new[] { 0x10, 0xF0, 0x100, 0x108, 0x120, 0x128, 0x140, 0x148 }[random.Next(8)]);
                size = 8;
            }
            _hpet.MmioWrite(offset, size, (ulong)random.NextInt64() ^ ((ulong)random.NextInt64() << 1));
            long step = random.Next(3) switch { 0 => 0, 1 => random.Next(1000), _ => random.Next(10_000_000) };
            TimerStorm.AssertTerminates(() => _time.Advance(step), $"seed {seed}, write {i}");
        }
    }
}
