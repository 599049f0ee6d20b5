using SharpVisor.Devices.Legacy;
using static SharpVisor.Devices.Tests.Persistence.StateRoundTrip;

namespace SharpVisor.Devices.Tests.Persistence;

public class HpetStateTests
{
    const ulong Cfg = 0x010, Status = 0x020, Counter = 0x0F0;
    const ulong Enable = 1, Legacy = 2;
    const ulong TnLevel = 1 << 1, TnEnable = 1 << 2, TnPeriodic = 1 << 3, TnValSet = 1 << 6, Tn32Bit = 1 << 8;

    static ulong TCfg(int n) => 0x100 + 0x20 * (ulong)n;
    static ulong TCmp(int n) => 0x108 + 0x20 * (ulong)n;
    static ulong Route(int gsi) => (ulong)gsi << 9;

    static Hpet Build(Rig rig) => new(rig.Timers, rig.Line("legacy0"), rig.Line("legacy8"),
        gsi => rig.Line($"gsi{gsi}"), on => rig.Log($"legacy {on}"));

    static void W(Hpet h, ulong offset, ulong value) => h.MmioWrite(offset, 8, value);

    /// <summary>
    /// Timer 0 periodic every 1 ms to GSI 2, timer 1 level-triggered to GSI 20 and already fired
    /// (its line held), timer 2 a 32-bit one-shot; the main counter was written and is running.
    /// </summary>
    static void Drive(Hpet h, Rig rig)
    {
        rig.Advance(5_000);
        W(h, Counter, 0xFFFF_FFF0_0000_0000);
        W(h, TCfg(0), TnEnable | TnPeriodic | TnValSet | Route(2));
        W(h, TCmp(0), 0xFFFF_FFF0_0000_0000 + 100_000);
        W(h, TCmp(0), 100_000);
        W(h, TCfg(1), TnEnable | TnLevel | Route(20));
        W(h, TCmp(1), 0xFFFF_FFF0_0000_0000 + 150_000);
        W(h, TCfg(2), TnEnable | Tn32Bit | Route(23));
        W(h, TCmp(2), 12_345_678);
        W(h, 0x130, 0xFEE0_0000_0000_0041);
        W(h, Cfg, Enable);
        rig.Advance(3_500_000);
        rig.SkipWithoutTimers(600_000);
    }

    static void After(Hpet h, Rig rig, List<string> reads)
    {
        void ReadAll(string when)
            => reads.Add($"{when} cfg{h.MmioRead(Cfg, 8):x} sts{h.MmioRead(Status, 8):x} ctr{h.MmioRead(Counter, 8):x}"
                + $" t0 {h.MmioRead(TCfg(0), 8):x}/{h.MmioRead(TCmp(0), 8):x} t1 {h.MmioRead(TCfg(1), 8):x}/{h.MmioRead(TCmp(1), 8):x}"
                + $" t2 {h.MmioRead(TCfg(2), 8):x}/{h.MmioRead(TCmp(2), 8):x} fsb {h.MmioRead(0x110, 8):x}/{h.MmioRead(0x130, 8):x}");
        ReadAll("start");
        rig.Advance(2_000_000);
        ReadAll("2ms");
        W(h, Status, 2);
        rig.Advance(150_000_000);
        ReadAll("152ms");
        W(h, Cfg, Enable | Legacy);
        rig.Advance(3_000_000);
        ReadAll("legacy");
        W(h, Cfg, 0);
        rig.Advance(1_000_000);
        ReadAll("halted");
    }

    [Fact]
    public void RestoredHpetCountsComparesAndInterruptsAsTheOriginal()
        => Check<Hpet, Hpet.State>(Build, Drive, After);

    [Fact]
    public void RestoredHpetInLegacyModeDrivesTheLegacyLines()
        => Check<Hpet, Hpet.State>(Build, (h, rig) =>
        {
            W(h, TCfg(0), TnEnable | TnPeriodic | TnValSet);
            W(h, TCmp(0), 50_000);
            W(h, TCmp(0), 50_000);
            W(h, TCfg(1), TnEnable | TnLevel);
            W(h, TCmp(1), 70_000);
            W(h, Cfg, Enable | Legacy);
            rig.Advance(1_000_000);
        }, After);

    [Fact]
    public void RestoredHpetKeepsTheMinimumSpacingOfAFastPeriodicTimer()
        => Check<Hpet, Hpet.State>(Build, (h, rig) =>
        {
            W(h, TCfg(0), TnEnable | TnPeriodic | TnValSet | Route(2));
            W(h, TCmp(0), 100);
            W(h, TCmp(0), 100); // 1 us: clamped to one interrupt per 10 us
            W(h, Cfg, Enable);
            rig.Advance(35_000);
        }, (h, rig, reads) =>
        {
            W(h, TCfg(0), TnEnable | TnPeriodic | Route(2)); // re-plans from the last firing
            rig.Advance(100_000);
            reads.Add($"ctr {h.MmioRead(Counter, 8):x} cmp {h.MmioRead(TCmp(0), 8):x}");
        });

    [Fact]
    public void OutOfRangeFieldsAreRefusedAndChangeNothing()
    {
        var rig = new Rig();
        var h = Build(rig);
        var fresh = h.SaveState();
        Drive(h, rig);
        Hpet.State WithTimer(int i, Hpet.TimerState t)
        {
            var timers = (Hpet.TimerState[])fresh.Timers.Clone();
            timers[i] = t;
            return fresh with { Timers = timers };
        }
        Refused(h, rig, fresh with { Version = 2 }, "version 2");
        Refused(h, rig, fresh with { Config = 4 }, "Config");
        Refused(h, rig, fresh with { InterruptStatus = 8 }, "InterruptStatus");
        Refused(h, rig, fresh with { EnableTick = rig.NowNs }, "EnableTick");
        Refused(h, rig, fresh with { Timers = [] }, "Timers");
        Refused(h, rig, WithTimer(0, fresh.Timers[0] with { Config = 1 << 14 }), "Timers[0].Config");
        Refused(h, rig, WithTimer(1, fresh.Timers[1] with { Config = Tn32Bit }), "Timers[1].Comparator");
        Refused(h, rig, WithTimer(2, fresh.Timers[2] with { Config = Tn32Bit, Comparator = 0, Period = 1UL << 32 }), "Timers[2].Period");
        Refused(h, rig, WithTimer(0, fresh.Timers[0] with { FireTick = -2 }), "Timers[0].FireTick");
        Refused(h, rig, WithTimer(1, fresh.Timers[1] with { LastFireNs = rig.NowNs + 1 }), "Timers[1].LastFireNs");
        Refused(h, rig, WithTimer(2, fresh.Timers[2] with { TimerDeadlineNs = -7 }), "Timers[2].TimerDeadlineNs");
    }
}
