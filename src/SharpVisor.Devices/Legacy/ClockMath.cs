namespace SharpVisor.Devices.Legacy;

/// <summary>
/// Exact conversions between virtual nanoseconds and the tick counts of fixed-frequency device
/// clocks (PIT 1.193182 MHz, ACPI PM timer 3.579545 MHz, HPET 100 MHz). Splitting off whole seconds
/// keeps every product inside 64 bits for any uptime, so counters never drift or overflow.
/// </summary>
static class ClockMath
{
    const long NsPerSecond = 1_000_000_000;

    /// <summary>Number of whole ticks of a <paramref name="hz"/> clock elapsed at <paramref name="ns"/> (floor).</summary>
    public static long NsToTicks(long ns, long hz)
    {
        if (ns <= 0)
        {
            return 0;
        }
        long seconds = ns / NsPerSecond;
        long rest = ns % NsPerSecond;
        return seconds * hz + rest * hz / NsPerSecond;
    }

    /// <summary>The first nanosecond at which tick <paramref name="ticks"/> has elapsed (ceiling), so NsToTicks(TicksToNs(t)) == t.</summary>
    public static long TicksToNs(long ticks, long hz)
    {
        if (ticks <= 0)
        {
            return 0;
        }
        long seconds = ticks / hz;
        long rest = ticks % hz;
        long restNs = (rest * NsPerSecond + hz - 1) / hz;
        if (seconds > (long.MaxValue - restNs) / NsPerSecond)
        {
            return long.MaxValue;
        }
        return seconds * NsPerSecond + restNs;
    }
}
