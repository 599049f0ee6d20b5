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
