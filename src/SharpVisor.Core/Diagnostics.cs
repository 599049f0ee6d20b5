using System.Collections.Concurrent;

namespace SharpVisor.Core;

/// <summary>
/// A named event counter. Guest-caused anomalies, cache hits, faults... every interesting event is
/// counted so a user can print the figures (<see cref="CounterRegistry"/>).
/// </summary>
public sealed class Counter(string name)
{
    long _value;
    public string Name { get; } = name;
    public long Value => Volatile.Read(ref _value);
    public void Increment() => Interlocked.Increment(ref _value);
    public void Add(long n) => Interlocked.Add(ref _value, n);
    /// <summary>Cheaper increment for counters only one thread updates (per-vCPU counters).</summary>
    public void IncrementUnsynchronized() => _value++;
    public void AddUnsynchronized(long n) => _value += n;
    public void Reset() => Volatile.Write(ref _value, 0);
    public override string ToString() => $"{Name}={Value}";
}

/// <summary>
/// Collects the counters of one machine for printing at exit (and later, the API). A counter may be
/// registered under a scope (e.g. a PCI location) so two devices of one type stay distinguishable.
/// </summary>
public sealed class CounterRegistry
{
    readonly ConcurrentQueue<(string? Scope, Counter Counter)> _counters = new();
    public Counter Add(Counter c, string? scope = null) { _counters.Enqueue((scope, c)); return c; }
    public Counter Create(string name) => Add(new Counter(name));
    public IEnumerable<Counter> All => _counters.Select(e => e.Counter).OrderBy(c => c.Name, StringComparer.Ordinal);

    /// <summary>Every counter with its display name ("scope/name" when scoped), sorted by that name.</summary>
    public IEnumerable<(string Name, Counter Counter)> Entries =>
        _counters.Select(e => (e.Scope is null ? e.Counter.Name : $"{e.Scope}/{e.Counter.Name}", e.Counter)).OrderBy(e => e.Item1, StringComparer.Ordinal);
}

public enum LogLevel { Debug, Info, Warn, Error }

/// <summary>
/// One VM's log (a run of the CLI shares one across the VMs its resets create). Lines go to a writer
/// (stderr by default, so the guest console on stdout stays clean). Guest-triggerable messages go
/// through <see cref="Once"/> so a hostile guest cannot flood the host. Components hold the log of
/// the VM they belong to, never a process-wide one, so two VMs in one process keep their own levels,
/// writers and once-only sets.
/// </summary>
/// <remarks>A component keeps it in a member named <c>Log</c>, so its calls read <c>Log.Once(...)</c>.</remarks>
public sealed class Log(TextWriter? writer = null, LogLevel minLevel = LogLevel.Warn)
{
    readonly ConcurrentDictionary<string, byte> _seen = new();
    TextWriter _writer = TextWriter.Synchronized(writer ?? Console.Error);

    public LogLevel MinLevel { get; set; } = minLevel;

    /// <summary>Changes where lines go (the CLI's terminal needs CR LF while it is in raw mode).</summary>
    public void SetWriter(TextWriter writer) => _writer = TextWriter.Synchronized(writer);

    public void Write(LogLevel level, string component, string message)
    {
        if (level >= MinLevel)
        {
            _writer.WriteLine($"[sharpvisor {level.ToString().ToLowerInvariant()}] {component}: {message}");
        }
    }

    public void Debug(string component, string message) => Write(LogLevel.Debug, component, message);
    public void Info(string component, string message) => Write(LogLevel.Info, component, message);
    public void Warn(string component, string message) => Write(LogLevel.Warn, component, message);
    public void Error(string component, string message) => Write(LogLevel.Error, component, message);

    /// <summary>Logs the first time <paramref name="key"/> is seen (a warning unless told otherwise); later ones are dropped.</summary>
    public void Once(string key, string component, string message, LogLevel level = LogLevel.Warn)
    {
        if (level >= MinLevel && _seen.TryAdd(key, 0))
        {
            Write(level, component, message);
        }
    }
}

/// <summary>
/// The CPU time the calling thread has used (Linux <c>clock_gettime(CLOCK_THREAD_CPUTIME_ID)</c>),
/// for counters that report work rather than elapsed time: a background thread's wall time also
/// counts the time it waited for a core.
/// </summary>
public static partial class ThreadCpuTime
{
    /// <summary>Nanoseconds of CPU this thread has used; 0 where the clock is not available.</summary>
    public static long Nanoseconds()
    {
        if (!OperatingSystem.IsLinux())
        {
            return 0;
        }
        return ClockGetTime(ClockThreadCpuTime, out var t) == 0 ? t.Seconds * 1_000_000_000 + t.Nanoseconds : 0;
    }

    const int ClockThreadCpuTime = 3;

    [System.Runtime.InteropServices.StructLayout(System.Runtime.InteropServices.LayoutKind.Sequential)]
    struct TimeSpec
    {
        public long Seconds;
        public long Nanoseconds;
    }

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "clock_gettime")]
    private static partial int ClockGetTime(int clock, out TimeSpec time);
}
