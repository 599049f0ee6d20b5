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

/// <summary>
/// The re-arm guard depends on when each timer last fired, so that moment is saved state (issue 9):
/// a queue restored just after a firing must defer a re-arm into the past exactly as the original does.
/// </summary>
public class TimerQueueStateTests
{
    /// <summary>A queue with three timers, "b" having fired at 5 000 ns; the clock then stands at 5 400 ns.</summary>
    static (VirtualClock Clock, TimerQueue Queue, TimerQueue.Timer[] Timers, List<string> Fired) Original()
    {
        var (clock, queue, timers, fired) = Fresh();
        clock.SkipTo(5_000);
        timers[1].ArmAt(4_000);
        Assert.Equal(1, queue.RunExpired());
        clock.SkipTo(5_400);
        return (clock, queue, timers, fired);
    }

    static (VirtualClock Clock, TimerQueue Queue, TimerQueue.Timer[] Timers, List<string> Fired) Fresh()
    {
        var clock = new VirtualClock(ClockMode.Deterministic);
        var queue = new TimerQueue(clock);
        var fired = new List<string>();
        var timers = new[] { "a", "b", "c" }.Select(n => queue.Create(n, () => fired.Add($"{n}@{clock.NowNs}"))).ToArray();
        return (clock, queue, timers, fired);
    }

    /// <summary>Re-arms "b" into the past and runs the queue in 100 ns steps; returns what fired when.</summary>
    static List<string> RunOn(VirtualClock clock, TimerQueue queue, TimerQueue.Timer[] timers, List<string> fired)
    {
        fired.Clear();
        timers[1].ArmAt(4_500); // before its last firing: the guard moves it to 6 000
        timers[2].ArmAt(5_500);
        for (long t = 5_500; t <= 7_000; t += 100)
        {
            clock.SkipTo(t);
            queue.RunExpired();
        }
        return fired;
    }

    [Fact]
    public void ARestoredQueueDefersARearmIntoThePastAsTheOriginalDoes()
    {
        var original = Original();
        var state = original.Queue.SaveState();
        var restored = Fresh();
        restored.Clock.RestoreState(original.Clock.SaveState());
        restored.Queue.RestoreState(state);
        Assert.Equal(state.Timers, restored.Queue.SaveState().Timers);
        var expected = RunOn(original.Clock, original.Queue, original.Timers, original.Fired);
        Assert.Equal(["c@5500", "b@6000"], expected);
        Assert.Equal(expected, RunOn(restored.Clock, restored.Queue, restored.Timers, restored.Fired));
    }

    public static TheoryData<string> BadStates() => ["version", "missing timers", "fewer timers", "another timer", "fired in the future", "negative time"];

    [Theory]
    [MemberData(nameof(BadStates))]
    public void ABadStateIsRefusedAndChangesNothing(string field)
    {
        var original = Original();
        var good = original.Queue.SaveState();
        var timers = good.Timers;
        var bad = field switch
        {
            "version" => good with { Version = 2 },
            "missing timers" => good with { Timers = null! },
            "fewer timers" => good with { Timers = timers[..2] },
            "another timer" => good with { Timers = [timers[0], timers[1] with { Name = "x" }, timers[2]] },
            "fired in the future" => good with { Timers = [timers[0], timers[1] with { LastFiredNs = 5_401 }, timers[2]] },
            "negative time" => good with { Timers = [timers[0], timers[1] with { LastFiredNs = -2 }, timers[2]] },
            _ => throw new ArgumentException(field),
        };
        var target = Fresh();
        target.Clock.RestoreState(original.Clock.SaveState());
        var before = target.Queue.SaveState();
        var e = Assert.Throws<InvalidStateException>(() => target.Queue.RestoreState(bad));
        Assert.DoesNotContain('\n', e.Message);
        Assert.Equal(before.Timers, target.Queue.SaveState().Timers);
    }
}
