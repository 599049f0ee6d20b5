namespace SharpVisor.Cpu.X86;

/// <summary>
/// The one conversion between guest time (<see cref="SharpVisor.Core.VirtualClock.NowNs"/>) and the
/// time-stamp counter. RDTSC/RDTSCP, the TSC MSR and the local APIC's TSC-deadline timer all use it,
/// so the guest never sees the TSC and the deadline timer disagree (SDM Vol. 3B 18.17: the TSC
/// counts at a constant rate — we advertise an invariant TSC in CPUID.80000007H:EDX[8]).
/// </summary>
public static class TscClock
{
    const ulong NsPerSecond = 1_000_000_000;

    /// <summary>Ticks of a counter running at <paramref name="tscHz"/> after <paramref name="ns"/> nanoseconds.</summary>
    public static ulong TicksFromNs(long ns, long tscHz) =>
        ns <= 0 ? 0 : (ulong)((UInt128)(ulong)ns * (ulong)tscHz / NsPerSecond);

    /// <summary>Nanoseconds a counter at <paramref name="tscHz"/> needs to count <paramref name="ticks"/> (rounded up, so a deadline never fires early).</summary>
    public static long NsFromTicks(ulong ticks, long tscHz)
    {
        UInt128 ns = ((UInt128)ticks * NsPerSecond + (ulong)tscHz - 1) / (ulong)tscHz;
        return ns > long.MaxValue ? long.MaxValue : (long)ns;
    }

    /// <summary>The guest-visible TSC of <paramref name="c"/> now: clock ticks plus IA32_TSC's offset.</summary>
    public static ulong Read(Cpu c) => TicksFromNs(c.Platform.Clock.NowNs, c.Platform.TscHz) + (ulong)c.Msr.TscOffset;

    /// <summary>
    /// Guest time (ns on the virtual clock) at which a vCPU whose TSC has offset
    /// <paramref name="tscOffset"/> reaches <paramref name="tscValue"/> — the TSC-deadline timer's
    /// arming time (SDM Vol. 3A 11.5.4.1). A value already passed gives a time not after now.
    /// </summary>
    public static long GuestTscToNs(ulong tscValue, long tscOffset, long tscHz)
    {
        ulong ticks = tscValue - (ulong)tscOffset;
        if ((long)ticks < 0 && tscOffset > 0 && tscValue < (ulong)tscOffset)
        {
            return 0; // before the clock's origin: already expired
        }
        return NsFromTicks(ticks, tscHz);
    }
}
