using SharpVisor.Core;

namespace SharpVisor.Devices.Tests.Legacy;

/// <summary>An interrupt line that records its level and counts rising edges.</summary>
sealed class RecordingIrqLine : IIrqLine
{
    public bool Level { get; private set; }
    public int RisingEdges { get; private set; }
    public List<long> EdgeTimesNs { get; } = [];
    readonly VirtualClock? _clock;

    public RecordingIrqLine(VirtualClock? clock = null) => _clock = clock;

    public void SetLevel(bool asserted)
    {
        if (asserted && !Level)
        {
            RisingEdges++;
            if (_clock is not null)
            {
                EdgeTimesNs.Add(_clock.NowNs);
            }
        }
        Level = asserted;
    }
}

/// <summary>A deterministic clock plus timer queue, with time driven explicitly through every deadline.</summary>
sealed class VirtualTime
{
    public VirtualClock Clock { get; } = new(ClockMode.Deterministic);
    public TimerQueue Timers { get; }

    public VirtualTime() => Timers = new TimerQueue(Clock);

    public long NowNs => Clock.NowNs;

    /// <summary>Moves time to <paramref name="targetNs"/>, stopping at each timer deadline on the way to run it, as the machine's loop does.</summary>
    public void RunUntil(long targetNs)
    {
        int guard = 0;
        while (Timers.NextDeadlineNs <= targetNs)
        {
            Clock.SkipTo(Timers.NextDeadlineNs);
            Timers.RunExpired();
            Assert.True(++guard < 1_000_000, "timer storm");
        }
        Clock.SkipTo(targetNs);
        Timers.RunExpired();
    }

    public void Advance(long ns) => RunUntil(NowNs + ns);
}

/// <summary>Detects a timer callback storm: a timer queue pass that never ends hangs the VMM (issue 16, defect 1).</summary>
static class TimerStorm
{
    /// <summary>Runs <paramref name="drive"/> on another thread and fails if it does not return within seconds.</summary>
    public static void AssertTerminates(Action drive, string what = "")
    {
        var task = Task.Run(drive);
        // A hung pass keeps spinning on its pool thread: the test fails rather than hang with it.
        Assert.True(task.Wait(TimeSpan.FromSeconds(20)), $"the timer queue did not drain (a callback re-arms itself at or before now) {what}");
        task.GetAwaiter().GetResult();
    }
}
