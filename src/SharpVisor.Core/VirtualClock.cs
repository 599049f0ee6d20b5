using System.Diagnostics;

namespace SharpVisor.Core;

/// <summary>
/// The one clock behind every guest timer (TSC, PIT, HPET, ACPI PM timer, RTC, APIC timer), so the
/// guest never sees two clocks disagree. In <see cref="ClockMode.Host"/> it follows host
/// monotonic time; in <see cref="ClockMode.Deterministic"/> it advances only with retired guest
/// instructions, so a run repeats exactly.
/// </summary>
public sealed class VirtualClock : IPersistent<VirtualClock.State>
{
    /// <summary>Host timestamp at which guest time was 0 (moved on resume and restore, so guest time has no gaps).</summary>
    long _startTicks = Stopwatch.GetTimestamp();
    readonly double _nsPerTick = 1e9 / Stopwatch.Frequency;
    /// <summary>Guest time while it does not follow the host: always in deterministic mode, and while a host-mode clock is paused.</summary>
    long _deterministicNs;
    /// <summary>True while guest time is host time minus <see cref="_startTicks"/>: host mode, not paused.</summary>
    volatile bool _followsHost;

    public VirtualClock(ClockMode mode = ClockMode.Host, long instructionsPerMicrosecond = 100)
    {
        if (instructionsPerMicrosecond <= 0)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(instructionsPerMicrosecond), "must be positive");
        }
        Mode = mode;
        InstructionsPerMicrosecond = instructionsPerMicrosecond;
        _followsHost = mode == ClockMode.Host;
    }

    public ClockMode Mode { get; }

    /// <summary>In deterministic mode, how many guest instructions make one virtual microsecond.</summary>
    public long InstructionsPerMicrosecond { get; }

    /// <summary>Guest time since power-on, in nanoseconds.</summary>
    public long NowNs => _followsHost
        ? (long)((Stopwatch.GetTimestamp() - Volatile.Read(ref _startTicks)) * _nsPerTick)
        : Volatile.Read(ref _deterministicNs);

    /// <summary>
    /// Stops guest time (host mode; deterministic time only moves when told anyway): a paused VM's
    /// timers must not expire and its TSC must not jump, as QEMU stops its virtual clock while a VM is stopped.
    /// </summary>
    public void Pause()
    {
        if (_followsHost)
        {
            Volatile.Write(ref _deterministicNs, NowNs);
            _followsHost = false;
        }
    }

    /// <summary>Lets a paused host-mode clock run again from the time it stopped at.</summary>
    public void Resume()
    {
        if (Mode == ClockMode.Host && !_followsHost)
        {
            FollowHostFrom(Volatile.Read(ref _deterministicNs));
        }
    }

    void FollowHostFrom(long ns)
    {
        Volatile.Write(ref _startTicks, Stopwatch.GetTimestamp() - (long)(ns / _nsPerTick));
        _followsHost = true;
    }

    /// <summary>The clock's saved state: the guest time it reads (the mode and rate come from the machine's configuration).</summary>
    public sealed record State
    {
        public const int CurrentVersion = 1;
        public int Version { get; init; } = CurrentVersion;
        public required ClockMode Mode { get; init; }
        public required long InstructionsPerMicrosecond { get; init; }
        public required long NowNs { get; init; }
    }

    public State SaveState() => new() { Mode = Mode, InstructionsPerMicrosecond = InstructionsPerMicrosecond, NowNs = NowNs };

    /// <summary>Sets guest time to the saved time; a host-mode clock that was running keeps running from there.</summary>
    public void RestoreState(State state)
    {
        const string Component = "clock";
        InvalidStateException.CheckVersion(state.Version, State.CurrentVersion, Component);
        InvalidStateException.Check(state.Mode == Mode, Component, $"mode {state.Mode} differs from this machine's {Mode} clock");
        InvalidStateException.Check(state.InstructionsPerMicrosecond == InstructionsPerMicrosecond, Component,
            $"{state.InstructionsPerMicrosecond} instructions per microsecond differs from this machine's {InstructionsPerMicrosecond}");
        InvalidStateException.Check(state.NowNs is >= 0 and <= MaxNs, Component, $"time {state.NowNs} ns is outside 0..{MaxNs}");
        Volatile.Write(ref _deterministicNs, state.NowNs);
        if (_followsHost)
        {
            FollowHostFrom(state.NowNs);
        }
    }

    /// <summary>Deterministic mode: credits retired instructions to guest time (no effect in host mode).</summary>
    public void AdvanceByInstructions(long instructions)
    {
        if (Mode == ClockMode.Deterministic)
        {
            Interlocked.Add(ref _deterministicNs, instructions * 1000 / InstructionsPerMicrosecond);
        }
    }

    /// <summary>
    /// The latest guest time a skip reaches (about 146 years): a deadline past it counts as never,
    /// which leaves every "now + interval" a device computes far from overflowing.
    /// </summary>
    public const long MaxNs = long.MaxValue / 2;

    /// <summary>Deterministic mode: jumps time forward to <paramref name="ns"/> (all vCPUs idle until then), at most to <see cref="MaxNs"/>.</summary>
    public void SkipTo(long ns)
    {
        ns = Math.Min(ns, MaxNs);
        if (Mode == ClockMode.Deterministic)
        {
            long cur;
            do
            {
                cur = Volatile.Read(ref _deterministicNs);
                if (ns <= cur)
                {
                    return;
                }
            }
            while (Interlocked.CompareExchange(ref _deterministicNs, ns, cur) != cur);
        }
    }
}

public enum ClockMode { Host, Deterministic }

/// <summary>
/// One-shot timers on the virtual clock. Devices arm them under their own lock from any thread; the
/// machine's event loop calls <see cref="RunExpired"/> and sleeps no longer than
/// <see cref="NextDeadlineNs"/>.
/// <para>A guest controls most deadlines, so the queue bounds what any of them can cost: a timer
/// re-armed for a time at or before the moment it last fired is moved to <see cref="MinRearmNs"/>
/// after that moment (counted in <see cref="DeferredRearms"/>). Without that, one callback that
/// re-plans into the past — an arithmetic slip in a device model, or a register value nobody
/// foresaw — would keep <see cref="RunExpired"/> looping forever on the timer thread and vCPU 0,
/// and nothing, not even the run's timeout, could stop the VMM. With it a timer fires at most once
/// per microsecond of guest time, far below any real device's resolution that matters.</para>
/// <para>Because of that guard, when each timer last fired is guest-visible (it decides when a
/// re-arm into the past fires), so it is the queue's saved state (<see cref="State"/>); deadlines
/// are saved by the devices that own the timers, which re-arm them on restore.</para>
/// </summary>
public sealed class TimerQueue(VirtualClock clock, Log? log = null) : IPersistent<TimerQueue.State>
{
    readonly Log Log = log ?? new Log();

    /// <summary>The shortest interval between two firings of one timer.</summary>
    public const long MinRearmNs = 1_000;

    readonly Lock _gate = new();
    readonly PriorityQueue<Timer, long> _queue = new();
    /// <summary>Every timer created, in creation order (the same for every machine built from one configuration).</summary>
    readonly List<Timer> _timers = [];
    long _nextDeadline = long.MaxValue;

    public VirtualClock Clock { get; } = clock;

    /// <summary>Re-arms at or before a timer's last firing that were moved <see cref="MinRearmNs"/> later.</summary>
    public Counter DeferredRearms { get; } = new("timers.deferred_rearms");

    /// <summary>Earliest deadline armed, or long.MaxValue when none (cheap, lock-free read).</summary>
    public long NextDeadlineNs => Volatile.Read(ref _nextDeadline);

    /// <summary>Raised after a timer is armed, so a sleeping event loop can recompute its wait.</summary>
    public event Action? Armed;

    /// <summary>A new timer (devices create theirs once, when they are built).</summary>
    public Timer Create(string name, Action callback)
    {
        var t = new Timer(this, name, callback);
        lock (_gate)
        {
            _timers.Add(t);
        }
        return t;
    }

    /// <summary>Runs every timer whose deadline has passed. Returns how many fired.</summary>
    public int RunExpired()
    {
        int fired = 0;
        while (true)
        {
            Timer? due = null;
            long now = Clock.NowNs;
            lock (_gate)
            {
                while (_queue.TryPeek(out var t, out long deadline))
                {
                    if (t.Deadline != deadline || !t.IsArmed)
                    {
                        _queue.Dequeue(); // stale entry from a re-arm or cancel
                        continue;
                    }
                    if (deadline <= now)
                    {
                        _queue.Dequeue();
                        t.IsArmed = false;
                        t.LastFiredNs = now;
                        due = t;
                    }
                    break;
                }
                _nextDeadline = _queue.TryPeek(out _, out long next) ? next : long.MaxValue;
            }
            if (due is null)
            {
                return fired;
            }
            due.Callback();
            fired++;
        }
    }

    internal void Arm(Timer t, long deadlineNs)
    {
        bool deferred = false;
        lock (_gate)
        {
            if (deadlineNs <= t.LastFiredNs)
            {
                // It would fire again at the same instant: see the class summary.
                deadlineNs = t.LastFiredNs + MinRearmNs;
                deferred = true;
            }
            if (t.IsArmed)
            {
                // Drop the old entry: a guest re-programming a timer in a loop must not grow the queue.
                _queue.Remove(t, out _, out _);
            }
            t.Deadline = deadlineNs;
            t.IsArmed = true;
            _queue.Enqueue(t, deadlineNs);
            if (deadlineNs < _nextDeadline)
            {
                _nextDeadline = deadlineNs;
            }
        }
        if (deferred)
        {
            DeferredRearms.Increment();
            Log.Once($"timers.rearm.{t.Name}", "timers", $"timer {t.Name} was re-armed at or before the time it last fired; it fires {MinRearmNs} ns later instead (counted in {DeferredRearms.Name})");
        }
        Armed?.Invoke();
    }

    internal void Cancel(Timer t)
    {
        lock (_gate)
        {
            if (t.IsArmed)
            {
                _queue.Remove(t, out _, out _);
                t.IsArmed = false;
            }
        }
    }

    /// <summary>Entries in the queue (armed timers only: re-arming and cancelling remove the old entry).</summary>
    public int Count
    {
        get
        {
            lock (_gate)
            {
                return _queue.Count;
            }
        }
    }

    // ---- saved state: when each timer last fired ----

    /// <summary>The value of <see cref="TimerState.LastFiredNs"/> for a timer that never fired.</summary>
    public const long NeverFired = -1;

    public sealed record State
    {
        public const int CurrentVersion = 1;
        public int Version { get; init; } = CurrentVersion;
        /// <summary>Every timer of the queue, in creation order.</summary>
        public required TimerState[] Timers { get; init; }
    }

    public sealed record TimerState
    {
        /// <summary>The timer's name, which must match the restoring queue's timer at the same position.</summary>
        public required string Name { get; init; }
        /// <summary>Guest time at which it last fired, or <see cref="NeverFired"/>.</summary>
        public long LastFiredNs { get; init; } = NeverFired;
    }

    /// <inheritdoc/>
    public State SaveState()
    {
        lock (_gate)
        {
            return new State
            {
                Timers = [.. _timers.Select(t => new TimerState { Name = t.Name, LastFiredNs = t.LastFiredNs == long.MinValue ? NeverFired : t.LastFiredNs })],
            };
        }
    }

    /// <summary>
    /// Sets when each timer last fired. Restore the clock first (no timer can have fired after its
    /// time) and then this, before the devices re-arm their timers: a restored deadline is then
    /// guarded exactly as it was when it was armed.
    /// </summary>
    /// <exception cref="InvalidStateException">Another set of timers, or a time out of range; nothing was changed.</exception>
    public void RestoreState(State state)
    {
        const string Component = "timers";
        ArgumentNullException.ThrowIfNull(state);
        InvalidStateException.CheckVersion(state.Version, State.CurrentVersion, Component);
        var saved = state.Timers ?? throw new InvalidStateException(Component, "the list of timers is missing");
        long now = Clock.NowNs;
        lock (_gate)
        {
            InvalidStateException.Check(saved.Length == _timers.Count, Component,
                $"{saved.Length} timers saved; this machine has {_timers.Count}");
            for (int i = 0; i < saved.Length; i++)
            {
                var s = saved[i] ?? throw new InvalidStateException(Component, $"timer {i} is missing");
                InvalidStateException.Check(s.Name == _timers[i].Name, Component,
                    $"timer {i} was '{s.Name}'; this machine's is '{_timers[i].Name}'");
                InvalidStateException.Check(s.LastFiredNs == NeverFired || s.LastFiredNs is >= 0 && s.LastFiredNs <= now, Component,
                    $"timer '{s.Name}' last fired at {s.LastFiredNs} ns, not between 0 and the clock's {now} ns");
            }
            for (int i = 0; i < saved.Length; i++)
            {
                _timers[i].LastFiredNs = saved[i].LastFiredNs == NeverFired ? long.MinValue : saved[i].LastFiredNs;
            }
        }
    }

    public sealed class Timer
    {
        readonly TimerQueue _owner;
        internal Timer(TimerQueue owner, string name, Action callback) { _owner = owner; Name = name; Callback = callback; }
        public string Name { get; }
        internal Action Callback { get; }
        internal long Deadline { get; set; }
        /// <summary>Guest time at which it last fired (the queue's "now" then).</summary>
        internal long LastFiredNs { get; set; } = long.MinValue;
        public bool IsArmed { get; internal set; }
        /// <summary>Fires once at guest time <paramref name="deadlineNs"/> (re-arming replaces the old deadline).</summary>
        public void ArmAt(long deadlineNs) => _owner.Arm(this, deadlineNs);
        public void ArmAfter(long delayNs)
        {
            long now = _owner.Clock.NowNs;
            _owner.Arm(this, delayNs >= long.MaxValue - now ? long.MaxValue : now + Math.Max(0, delayNs));
        }
        public void Cancel() => _owner.Cancel(this);
    }
}
