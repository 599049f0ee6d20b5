using SharpVisor.Core;

namespace SharpVisor.Core.Tests;

public class TimerQueueTests
{
    [Fact]
    public void RearmingInALoopKeepsOneEntryAndFiresOnceAtTheLastDeadline()
    {
        var clock = new VirtualClock(ClockMode.Deterministic);
        var q = new TimerQueue(clock);
        int fired = 0;
        var t = q.Create("t", () => fired++);
        for (int i = 0; i < 10_000; i++)
        {
            t.ArmAt(1_000 + i);
        }
        Assert.Equal(1, q.Count);
        clock.SkipTo(10_998);
        Assert.Equal(0, q.RunExpired());
        clock.SkipTo(10_999);
        Assert.Equal(1, q.RunExpired());
        Assert.Equal(1, fired);
        Assert.Equal(0, q.Count);
    }

    [Fact]
    public void CancelledTimersNeverFireAndLeaveNoEntry()
    {
        var clock = new VirtualClock(ClockMode.Deterministic);
        var q = new TimerQueue(clock);
        bool fired = false;
        var t = q.Create("t", () => fired = true);
        t.ArmAt(100);
        t.Cancel();
        Assert.Equal(0, q.Count);
        clock.SkipTo(1000);
        q.RunExpired();
        Assert.False(fired);
    }

    /// <summary>
    /// A callback that re-arms its own timer in the past (as the HPET did for an overflowing
    /// comparator, issue 16 defect 1) fires once per pass and then waits <see cref="TimerQueue.MinRearmNs"/>:
    /// the pass ends, time moves on, and the firings are counted.
    /// </summary>
    [Fact]
    public void CallbackRearmingInThePastCannotLoopForever()
    {
        var clock = new VirtualClock(ClockMode.Deterministic);
        var q = new TimerQueue(clock);
        int fired = 0;
        TimerQueue.Timer t = null!;
        t = q.Create("storm", () => { fired++; t.ArmAt(long.MinValue); });
        clock.SkipTo(5_000);
        t.ArmAt(0);
        Assert.Equal(1, q.RunExpired());
        Assert.Equal(5_000 + TimerQueue.MinRearmNs, q.NextDeadlineNs);
        clock.SkipTo(5_000 + 10 * TimerQueue.MinRearmNs);
        Assert.Equal(1, q.RunExpired());
        Assert.Equal(2, fired);
        Assert.Equal(2, q.DeferredRearms.Value);
    }

    /// <summary>Two timers re-arming each other at "now" cannot keep a pass going either.</summary>
    [Fact]
    public void TimersRearmingEachOtherAtNowCannotLoopForever()
    {
        var clock = new VirtualClock(ClockMode.Deterministic);
        var q = new TimerQueue(clock);
        TimerQueue.Timer a = null!, b = null!;
        a = q.Create("a", () => b.ArmAt(clock.NowNs));
        b = q.Create("b", () => a.ArmAt(clock.NowNs));
        clock.SkipTo(100);
        a.ArmAt(100);
        Assert.Equal(2, q.RunExpired()); // a, then b; a's next firing waits
        Assert.Equal(100 + TimerQueue.MinRearmNs, q.NextDeadlineNs);
    }

    /// <summary>Far deadlines saturate instead of wrapping into the past.</summary>
    [Fact]
    public void ArmAfterAFarDelaySaturates()
    {
        var clock = new VirtualClock(ClockMode.Deterministic);
        var q = new TimerQueue(clock);
        var t = q.Create("far", () => { });
        clock.SkipTo(1_000);
        t.ArmAfter(long.MaxValue);
        Assert.Equal(long.MaxValue, q.NextDeadlineNs);
        Assert.Equal(0, q.RunExpired());
    }

    /// <summary>The deterministic clock never skips past <see cref="VirtualClock.MaxNs"/>, so "now + interval" cannot overflow.</summary>
    [Fact]
    public void SkipStopsAtTheClocksHorizon()
    {
        var clock = new VirtualClock(ClockMode.Deterministic);
        clock.SkipTo(long.MaxValue);
        Assert.Equal(VirtualClock.MaxNs, clock.NowNs);
    }
}

public class CounterRegistryTests
{
    [Fact]
    public void ScopedCountersOfTwoDevicesOfOneTypeGetDistinctNames()
    {
        var registry = new CounterRegistry();
        var a = registry.Add(new Counter("virtio.blk.requests"), scope: "00:04.0");
        var b = registry.Add(new Counter("virtio.blk.requests"), scope: "00:05.0");
        registry.Create("cpu0.instructions");
        a.Increment();
        b.Add(2);
        Assert.Equal(
            [("00:04.0/virtio.blk.requests", 1L), ("00:05.0/virtio.blk.requests", 2L), ("cpu0.instructions", 0L)],
            registry.Entries.Select(e => (e.Name, e.Counter.Value)).ToList());
    }
}
