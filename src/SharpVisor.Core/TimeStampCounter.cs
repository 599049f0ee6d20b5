namespace SharpVisor.Core;

/// <summary>
/// One vCPU's time-stamp counter, derived from the <see cref="VirtualClock"/> so that RDTSC, the
/// IA32_TSC_DEADLINE comparison (SDM Vol. 3A 11.5.4.1) and every other guest timer agree. The CPU
/// reads it for RDTSC/RDTSCP and writes it for WRMSR IA32_TSC (0x10); the local APIC converts
/// TSC-deadline values back to virtual nanoseconds with it.
/// </summary>
/// <remarks>
/// Each vCPU owns one (Cpu.Tsc); its local APIC uses the same instance.
/// The counter is invariant (constant rate, SDM Vol. 3B 18.17.1): value = ns * f / 1e9 + offset.
/// </remarks>
public sealed class TimeStampCounter
{
    const long NsPerSecond = 1_000_000_000;
    long _offset;

    public TimeStampCounter(VirtualClock clock, long frequencyHz)
    {
        if (frequencyHz <= 0)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(frequencyHz), "must be positive");
        }
        Clock = clock;
        FrequencyHz = frequencyHz;
    }

    public VirtualClock Clock { get; }
    public long FrequencyHz { get; }

    /// <summary>Counter ticks in <paramref name="ns"/> nanoseconds at <paramref name="frequencyHz"/> (rounded down).</summary>
    public static ulong TicksFromNs(long ns, long frequencyHz)
        => ns <= 0 ? 0 : (ulong)((UInt128)(ulong)ns * (ulong)frequencyHz / NsPerSecond);

    /// <summary>Nanoseconds until <paramref name="ticks"/> ticks have elapsed at <paramref name="frequencyHz"/> (rounded up).</summary>
    public static long NsFromTicks(ulong ticks, long frequencyHz)
    {
        UInt128 ns = ((UInt128)ticks * NsPerSecond + (ulong)frequencyHz - 1) / (ulong)frequencyHz;
        return ns > long.MaxValue / 2 ? long.MaxValue / 2 : (long)ns;
    }

    /// <summary>The value RDTSC returns now.</summary>
    public ulong Read() => ReadAt(Clock.NowNs);

    /// <summary>The counter's value at virtual time <paramref name="ns"/>.</summary>
    public ulong ReadAt(long ns) => TicksFromNs(ns, FrequencyHz) + (ulong)Volatile.Read(ref _offset);

    /// <summary>
    /// The counter minus the ticks of virtual time elapsed: what a saved vCPU state keeps, since it
    /// gives the same TSC at every virtual instant in a VM whose clock is restored to the same time.
    /// </summary>
    public long Offset
    {
        get => Volatile.Read(ref _offset);
        set => Volatile.Write(ref _offset, value);
    }

    /// <summary>WRMSR IA32_TSC: the counter continues counting from <paramref name="value"/>.</summary>
    public void Write(ulong value) => Volatile.Write(ref _offset, (long)(value - TicksFromNs(Clock.NowNs, FrequencyHz)));

    /// <summary>
    /// Virtual time at which the counter reaches <paramref name="value"/>, or <paramref name="nowNs"/>
    /// when it already has (a deadline in the past fires at once).
    /// </summary>
    public long NsWhenReaches(ulong value, long nowNs)
    {
        ulong now = ReadAt(nowNs);
        if (value <= now)
        {
            return nowNs;
        }
        return nowNs + NsFromTicks(value - now, FrequencyHz);
    }
}
