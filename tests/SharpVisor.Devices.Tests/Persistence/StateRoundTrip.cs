using System.Text.Json;
using SharpVisor.Core;

namespace SharpVisor.Devices.Tests.Persistence;

/// <summary>
/// One side of a round trip: a deterministic clock and timer queue, and a log of everything the
/// device does to the outside (every SetLevel on its lines, every callback, every batch of timers
/// fired), stamped with virtual time.
/// </summary>
sealed class Rig
{
    readonly Dictionary<string, LoggedLine> _lines = [];

    public Rig(long startNs = 0)
    {
        Timers = new TimerQueue(Clock);
        Clock.SkipTo(startNs);
    }

    public VirtualClock Clock { get; } = new(ClockMode.Deterministic);
    public TimerQueue Timers { get; }
    public List<string> Events { get; } = [];
    public long NowNs => Clock.NowNs;

    public void Log(string what) => Events.Add($"{NowNs}: {what}");

    /// <summary>The line called <paramref name="name"/> (the same object on every call).</summary>
    public LoggedLine Line(string name)
    {
        if (!_lines.TryGetValue(name, out var line))
        {
            line = new LoggedLine(this, name);
            _lines[name] = line;
        }
        return line;
    }

    /// <summary>The names of the lines asserted now (a line never driven is low).</summary>
    public string Levels() => string.Join(",", _lines.Where(l => l.Value.Level).Select(l => l.Key).Order());

    /// <summary>Moves time to <paramref name="targetNs"/>, running each timer at its deadline, as the machine's loop does.</summary>
    public void RunUntil(long targetNs)
    {
        int guard = 0;
        while (Timers.NextDeadlineNs <= targetNs)
        {
            Clock.SkipTo(Timers.NextDeadlineNs);
            int fired = Timers.RunExpired();
            if (fired > 0)
            {
                Log($"timers fired {fired}");
            }
            Assert.True(++guard < 100_000, "timer storm");
        }
        Clock.SkipTo(targetNs);
    }

    public void Advance(long ns) => RunUntil(NowNs + ns);

    /// <summary>Moves the clock without running the timers: a pause taken while a callback is overdue.</summary>
    public void SkipWithoutTimers(long ns) => Clock.SkipTo(NowNs + ns);
}

/// <summary>An interrupt line that logs every level it is driven to.</summary>
sealed class LoggedLine(Rig rig, string name) : IIrqLine
{
    public bool Level { get; private set; }

    public void SetLevel(bool asserted)
    {
        Level = asserted;
        rig.Log($"{name}={(asserted ? 1 : 0)}");
    }
}

static class StateRoundTrip
{
    static readonly JsonSerializerOptions Options = new() { IncludeFields = false };

    /// <summary>The state as text: records holding arrays compare by reference, their JSON by content.</summary>
    public static string Json<T>(T state) => JsonSerializer.Serialize(state, Options);

    /// <summary>The state written out and read back, as a snapshot file or a migration stream would carry it.</summary>
    public static T ThroughJson<T>(T state) => JsonSerializer.Deserialize<T>(Json(state), Options)!;

    /// <summary>
    /// Builds a device on rig A and drives it with <paramref name="before"/>; saves its state,
    /// builds a fresh device on a fresh rig B whose clock reads the same time, restores; then drives
    /// both with <paramref name="after"/> and requires the same reads (logged by the script), the
    /// same line activity and the same timer firings.
    /// </summary>
    public static void Check<TDevice, TState>(Func<Rig, TDevice> build, Action<TDevice, Rig> before, Action<TDevice, Rig, List<string>> after)
        where TDevice : IPersistent<TState>
        where TState : class
    {
        // The power-on state is a valid state too (the refusal tests change one field of it).
        var powerOn = build(new Rig()).SaveState();
        build(new Rig()).RestoreState(ThroughJson(powerOn));

        var a = new Rig();
        var original = build(a);
        before(original, a);
        var saved = original.SaveState();

        var b = new Rig(a.NowNs);
        var restored = build(b);
        restored.RestoreState(ThroughJson(saved));
        Assert.Equal(Json(saved), Json(restored.SaveState()));
        Assert.Equal(a.Levels(), b.Levels()); // asserted lines are asserted again on the fresh wiring

        a.Events.Clear();
        b.Events.Clear();
        var readsA = new List<string>();
        var readsB = new List<string>();
        after(original, a, readsA);
        after(restored, b, readsB);
        Assert.NotEmpty(readsA);
        Assert.Equal(readsA, readsB);
        Assert.Equal(a.Events, b.Events);
        Assert.Equal(a.Levels(), b.Levels());
    }

    /// <summary>
    /// Requires <paramref name="bad"/> to be refused with an error naming <paramref name="field"/>,
    /// leaving the device's state and its lines exactly as they were.
    /// </summary>
    public static void Refused<TState>(IPersistent<TState> device, Rig rig, TState bad, string field)
        where TState : class
    {
        string before = Json(device.SaveState());
        int events = rig.Events.Count;
        string levels = rig.Levels();
        var error = Assert.Throws<InvalidStateException>(() => device.RestoreState(bad));
        Assert.Contains(field, error.Message);
        Assert.Equal(before, Json(device.SaveState()));
        Assert.Equal(events, rig.Events.Count);
        Assert.Equal(levels, rig.Levels());
    }
}
