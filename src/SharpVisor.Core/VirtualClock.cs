using System.Diagnostics;

namespace SharpVisor.Core;

/// <summary>
/// The one clock behind every guest timer (TSC, PIT, HPET, ACPI PM timer, RTC, APIC timer), so the
/// guest never sees two clocks disagree. In <see cref="ClockMode.Host"/> it follows host
/// monotonic time; in <see cref="ClockMode.Deterministic"/> it advances only with retired guest
/// instructions, so a run repeats exactly.
/// </summary>
public sealed class VirtualClock
{
    readonly long _startTicks = Stopwatch.GetTimestamp();
    readonly double _nsPerTick = 1e9 / Stopwatch.Frequency;
    long _deterministicNs;

    public VirtualClock(ClockMode mode = ClockMode.Host, long instructionsPerMicrosecond = 100)
    {
        if (instructionsPerMicrosecond <= 0)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(instructionsPerMicrosecond), "must be positive");
        }
        Mode = mode;
        InstructionsPerMicrosecond = instructionsPerMicrosecond;
    }

    public ClockMode Mode { get; }

    /// <summary>In deterministic mode, how many guest instructions make one virtual microsecond.</summary>
    public long InstructionsPerMicrosecond { get; }

    /// <summary>Guest time since power-on, in nanoseconds.</summary>
    public long NowNs => Mode == ClockMode.Host
        ? (long)((Stopwatch.GetTimestamp() - _startTicks) * _nsPerTick)
        : Volatile.Read(ref _deterministicNs);

    /// <summary>Deterministic mode: credits retired instructions to guest time (no effect in host mode).</summary>
    public void AdvanceByInstructions(long instructions)
    {
        if (Mode == ClockMode.Deterministic)
        {
            Interlocked.Add(ref _deterministicNs, instructions * 1000 / InstructionsPerMicrosecond);
        }
    }

    /// <summary>Deterministic mode: jumps time forward to <paramref name="ns"/> (all vCPUs idle until then).</summary>
    public void SkipTo(long ns)
    {
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
/// </summary>
public sealed class TimerQueue(VirtualClock clock)
{
    readonly Lock _gate = new();
    readonly PriorityQueue<Timer, long> _queue = new();
    long _nextDeadline = long.MaxValue;

    public VirtualClock Clock { get; } = clock;

    /// <summary>Earliest deadline armed, or long.MaxValue when none (cheap, lock-free read).</summary>
    public long NextDeadlineNs => Volatile.Read(ref _nextDeadline);

    /// <summary>Raised after a timer is armed, so a sleeping event loop can recompute its wait.</summary>
    public event Action? Armed;

    public Timer Create(string name, Action callback) => new(this, name, callback);

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
        lock (_gate)
        {
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

    public sealed class Timer
    {
        readonly TimerQueue _owner;
        internal Timer(TimerQueue owner, string name, Action callback) { _owner = owner; Name = name; Callback = callback; }
        public string Name { get; }
        internal Action Callback { get; }
        internal long Deadline { get; set; }
        public bool IsArmed { get; internal set; }
        /// <summary>Fires once at guest time <paramref name="deadlineNs"/> (re-arming replaces the old deadline).</summary>
        public void ArmAt(long deadlineNs) => _owner.Arm(this, deadlineNs);
        public void ArmAfter(long delayNs) => _owner.Arm(this, _owner.Clock.NowNs + Math.Max(0, delayNs));
        public void Cancel() => _owner.Cancel(this);
    }
}
