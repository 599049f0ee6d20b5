using SharpVisor.Core;

namespace SharpVisor.Devices.Legacy;

/// <summary>
/// High Precision Event Timer block (IA-PC HPET specification 1.0a), normally at 0xFED00000 with a
/// 1 KiB region (<see cref="RegionSize"/>): vendor 0x8086, 3 timers, 64-bit main counter at
/// 100 MHz (period 10,000,000 fs), legacy-replacement capable. Every timer is periodic-capable and
/// 64-bit (32-bit mode selectable), routable to the IOAPIC inputs in <see cref="InterruptRouteCapability"/>;
/// FSB (MSI) delivery is not offered.
/// <para>The main counter is derived from <see cref="VirtualClock"/> (counter = value at enable +
/// elapsed ns / 10), comparators arm <see cref="TimerQueue"/> timers. In legacy replacement mode
/// (LEG_RT_CNF) timer 0 drives <c>legacyIrq0</c> and timer 1 <c>legacyIrq8</c>, and the PIT and RTC
/// are cut off through the <c>legacyReplacementChanged</c> callback.</para>
/// <para>Clamps: a periodic timer delivers at most one interrupt per <see cref="MinPeriodNs"/>
/// (missed periods are coalesced; the comparator still advances by whole periods, as the spec's
/// accumulator does); a periodic timer with period 0 fires once and is then left alone.
/// A one-shot timer fires whenever the counter passes its comparator, i.e. again after each wrap
/// (every 2^32 ticks, 43 s, in 32-bit mode).</para>
/// </summary>
public sealed class Hpet : IMmioDevice, IPersistent<Hpet.State>
{
    /// <summary>The log of the VM this device belongs to.</summary>
    readonly Log Log;

    public const ulong DefaultBase = 0xFED0_0000;
    public const ulong RegionSize = 0x400;
    public const int TimerCount = 3;
    public const long FrequencyHz = 100_000_000;
    public const uint PeriodFs = 10_000_000;
    /// <summary>Shortest spacing of periodic interrupts of one timer (100 kHz).</summary>
    public const long MinPeriodNs = 10_000;
    /// <summary>IOAPIC inputs 2, 8 and 16-23, as QEMU's q35 advertises.</summary>
    public const uint DefaultRouteCapability = 0x00FF_0104;

    // General registers (spec table 2).
    const int RegCapabilities = 0x000;
    const int RegConfig = 0x010;
    const int RegInterruptStatus = 0x020;
    const int RegMainCounter = 0x0F0;
    const int RegTimerBase = 0x100;
    const int TimerStride = 0x20;

    const ulong CfgEnable = 1 << 0;
    const ulong CfgLegacyRoute = 1 << 1;

    // Timer N configuration and capability register bits (spec 2.3.8).
    const ulong TnLevel = 1 << 1;
    const ulong TnEnable = 1 << 2;
    const ulong TnPeriodic = 1 << 3;
    const ulong TnPeriodicCap = 1 << 4;
    const ulong TnSize64Cap = 1 << 5;
    const ulong TnValSet = 1 << 6;
    const ulong Tn32Bit = 1 << 8;
    const int TnRouteShift = 9;
    const ulong TnRouteMask = 0x1FUL << TnRouteShift;
    const ulong TnWritable = TnLevel | TnEnable | TnPeriodic | TnValSet | Tn32Bit | TnRouteMask;

    sealed class HpetTimer
    {
        public ulong Config;
        public ulong Comparator;
        public ulong Period;
        public ulong FsbRoute;
        public DeviceTimer QueueTimer = null!;
        public long FireTick = -1;       // absolute 100 MHz tick the queue timer is armed for
        public long LastFireNs = long.MinValue / 2;
        public IIrqLine? AssertedLine;   // level-triggered line currently held high
    }

    readonly Lock _lock = new();
    readonly VirtualClock _clock;
    readonly IIrqLine _legacyIrq0;
    readonly IIrqLine _legacyIrq8;
    readonly Func<int, IIrqLine?> _ioApicInput;
    readonly Action<bool>? _legacyReplacementChanged;
    readonly HpetTimer[] _timers = new HpetTimer[TimerCount];

    ulong _config;
    ulong _interruptStatus;
    ulong _counterAtEnable;   // counter value when last enabled, or the frozen value while disabled
    long _enableTick;

    public readonly Counter Interrupts = new("hpet.interrupts");
    public readonly Counter CoalescedPeriods = new("hpet.coalesced_periods");
    public readonly Counter InvalidRoutes = new("hpet.invalid_routes");
    public readonly Counter ZeroPeriods = new("hpet.zero_periods");
    public readonly Counter ReadOnlyWrites = new("hpet.read_only_writes");

    /// <summary>This device's counters, for the machine's <see cref="CounterRegistry"/>.</summary>
    public IEnumerable<Counter> Counters => [Interrupts, CoalescedPeriods, InvalidRoutes, ZeroPeriods, ReadOnlyWrites];

    /// <param name="timers">Timer queue for comparators; its clock is the time base.</param>
    /// <param name="legacyIrq0">Timer 0's output in legacy replacement mode (PIC IRQ 0 and IOAPIC input 2).</param>
    /// <param name="legacyIrq8">Timer 1's output in legacy replacement mode (PIC IRQ 8 and IOAPIC input 8).</param>
    /// <param name="ioApicInput">The line of an IOAPIC input (GSI) for Tn_INT_ROUTE_CNF; null if absent.</param>
    /// <param name="legacyReplacementChanged">Called outside the HPET lock when LEG_RT_CNF changes: true means disconnect the PIT's IRQ 0 and the RTC's IRQ 8.</param>
    /// <param name="routeCapability">Tn_INT_ROUTE_CAP: bit n set allows routing to IOAPIC input n.</param>
    public Hpet(TimerQueue timers, IIrqLine legacyIrq0, IIrqLine legacyIrq8, Func<int, IIrqLine?> ioApicInput,
        Action<bool>? legacyReplacementChanged = null, uint routeCapability = DefaultRouteCapability, Log? log = null)
    {
        Log = log ?? new Log();
        _clock = timers.Clock;
        _legacyIrq0 = legacyIrq0;
        _legacyIrq8 = legacyIrq8;
        _ioApicInput = ioApicInput;
        _legacyReplacementChanged = legacyReplacementChanged;
        InterruptRouteCapability = routeCapability;
        for (int i = 0; i < TimerCount; i++)
        {
            int index = i;
            _timers[i] = new HpetTimer();
            _timers[i].QueueTimer = new DeviceTimer(timers, $"hpet-timer{i}", () => OnTimer(index));
        }
        Reset();
    }

    public string Name => "hpet";

    public uint InterruptRouteCapability { get; }

    /// <summary>Power-on defaults (spec: all registers 0 except capabilities; comparators all ones).</summary>
    public void Reset()
    {
        bool legacyWasOn;
        lock (_lock)
        {
            legacyWasOn = (_config & CfgLegacyRoute) != 0;
            _config = 0;
            _interruptStatus = 0;
            _counterAtEnable = 0;
            _enableTick = 0;
            foreach (var t in _timers)
            {
                DeassertLevel(t);
                t.Config = 0;
                t.Comparator = ulong.MaxValue;
                t.Period = 0;
                t.FsbRoute = 0;
                t.FireTick = -1;
            }
        }
        if (legacyWasOn)
        {
            _legacyReplacementChanged?.Invoke(false);
        }
    }

    /// <summary>One timer's registers and its place in the schedule.</summary>
    public sealed record TimerState
    {
        /// <summary>Tn_CONF writable bits (capability bits are not stored).</summary>
        public ulong Config { get; init; }
        public ulong Comparator { get; init; }
        /// <summary>The periodic accumulator's increment.</summary>
        public ulong Period { get; init; }
        public ulong FsbRoute { get; init; }
        /// <summary>Main counter tick (100 MHz of virtual time) of the next comparator match, or -1.</summary>
        public long FireTick { get; init; }
        /// <summary>Virtual time of the last match (periodic interrupts are at least <see cref="MinPeriodNs"/> apart).</summary>
        public long LastFireNs { get; init; }
        /// <summary>Virtual time of the pending timer callback, or -1.</summary>
        public long TimerDeadlineNs { get; init; }
    }

    /// <summary>
    /// The general registers, the main counter's time base and the three timers. Level-triggered
    /// lines are not in it: they follow from the status and configuration and are driven again on
    /// restore. The legacy replacement route is not signalled again: the PIT and the RTC keep
    /// their own "connected" flag in their states.
    /// </summary>
    public sealed record State
    {
        public const int CurrentVersion = 1;
        public int Version { get; init; } = CurrentVersion;
        public ulong Config { get; init; }
        public ulong InterruptStatus { get; init; }
        /// <summary>The main counter when last enabled or written, or its frozen value while halted.</summary>
        public ulong CounterAtEnable { get; init; }
        /// <summary>The 100 MHz tick of virtual time at which <see cref="CounterAtEnable"/> was taken.</summary>
        public long EnableTick { get; init; }
        public TimerState[] Timers { get; init; } = [];
    }

    /// <inheritdoc/>
    public State SaveState()
    {
        lock (_lock)
        {
            var timers = new TimerState[TimerCount];
            for (int i = 0; i < TimerCount; i++)
            {
                var t = _timers[i];
                timers[i] = new TimerState
                {
                    Config = t.Config,
                    Comparator = t.Comparator,
                    Period = t.Period,
                    FsbRoute = t.FsbRoute,
                    FireTick = t.FireTick,
                    LastFireNs = t.LastFireNs,
                    TimerDeadlineNs = t.QueueTimer.DeadlineNs,
                };
            }
            return new State
            {
                Config = _config,
                InterruptStatus = _interruptStatus,
                CounterAtEnable = _counterAtEnable,
                EnableTick = _enableTick,
                Timers = timers,
            };
        }
    }

    /// <inheritdoc/>
    public void RestoreState(State state)
    {
        ArgumentNullException.ThrowIfNull(state);
        InvalidStateException.CheckVersion(state.Version, State.CurrentVersion, Name);
        long nowNs = _clock.NowNs;
        long now = NowTick();
        Check((state.Config & ~(CfgEnable | CfgLegacyRoute)) == 0, $"Config 0x{state.Config:x} has bits other than ENABLE_CNF and LEG_RT_CNF");
        Check((state.InterruptStatus & ~((1UL << TimerCount) - 1)) == 0, $"InterruptStatus 0x{state.InterruptStatus:x} has bits beyond timer {TimerCount - 1}");
        Check(state.EnableTick >= 0 && state.EnableTick <= now, $"EnableTick {state.EnableTick} is not between power-on and now (tick {now})");
        Check(state.Timers is { Length: TimerCount }, $"Timers has {state.Timers?.Length ?? 0} entries, the block has {TimerCount}");
        for (int i = 0; i < TimerCount; i++)
        {
            var t = state.Timers![i];
            string n = $"Timers[{i}]";
            Check(t is not null, $"{n} is missing");
            Check((t!.Config & ~TnWritable) == 0, $"{n}.Config 0x{t.Config:x} has bits that are not writable");
            bool is32 = (t.Config & Tn32Bit) != 0;
            Check(!is32 || t.Comparator <= 0xFFFF_FFFF, $"{n}.Comparator 0x{t.Comparator:x} does not fit the timer's 32-bit mode");
            Check(!is32 || t.Period <= 0xFFFF_FFFF, $"{n}.Period 0x{t.Period:x} does not fit the timer's 32-bit mode");
            Check(t.FireTick >= -1, $"{n}.FireTick {t.FireTick} is neither -1 nor a tick");
            Check(t.LastFireNs <= nowNs && t.LastFireNs >= long.MinValue / 2, $"{n}.LastFireNs {t.LastFireNs} is not before now ({nowNs} ns)");
            Check(DeviceTimer.IsValidDeadline(t.TimerDeadlineNs), $"{n}.TimerDeadlineNs {t.TimerDeadlineNs} is before power-on");
        }

        lock (_lock)
        {
            _config = state.Config;
            _interruptStatus = state.InterruptStatus;
            _counterAtEnable = state.CounterAtEnable;
            _enableTick = state.EnableTick;
            for (int i = 0; i < TimerCount; i++)
            {
                var s = state.Timers![i];
                var t = _timers[i];
                t.Config = s.Config;
                t.Comparator = s.Comparator;
                t.Period = s.Period;
                t.FsbRoute = s.FsbRoute;
                t.FireTick = s.FireTick;
                t.LastFireNs = s.LastFireNs;
                t.QueueTimer.Restore(s.TimerDeadlineNs);
            }
            for (int i = 0; i < TimerCount; i++)
            {
                UpdateLevel(i); // a level-triggered timer with its status set holds its line again
            }
        }
    }

    void Check(bool condition, string problem) => InvalidStateException.Check(condition, Name, problem);

    bool Enabled => (_config & CfgEnable) != 0;

    long NowTick() => _clock.NowNs / (1_000_000_000 / FrequencyHz);

    ulong CounterAt(long tick) => Enabled ? _counterAtEnable + (ulong)(tick - _enableTick) : _counterAtEnable;

    /// <summary>Read-only capability bits of every timer: periodic-capable, 64-bit.</summary>
    const ulong TimerCapabilities = TnPeriodicCap | TnSize64Cap;

    ulong Register(int offset, long tick)
    {
        if (offset >= RegTimerBase && offset < RegTimerBase + TimerCount * TimerStride)
        {
            var t = _timers[(offset - RegTimerBase) / TimerStride];
            return ((offset - RegTimerBase) % TimerStride) switch
            {
                0x00 => t.Config | TimerCapabilities | ((ulong)InterruptRouteCapability << 32),
                0x08 => (t.Config & Tn32Bit) != 0 ? t.Comparator & 0xFFFF_FFFF : t.Comparator,
                0x10 => t.FsbRoute,
                _ => 0,
            };
        }
        return offset switch
        {
            RegCapabilities => 0x01UL | ((TimerCount - 1UL) << 8) | (1UL << 13) | (1UL << 15)
                | (0x8086UL << 16) | ((ulong)PeriodFs << 32),
            RegConfig => _config,
            RegInterruptStatus => _interruptStatus,
            RegMainCounter => CounterAt(tick),
            _ => 0,
        };
    }

    public ulong MmioRead(ulong offset, int size)
    {
        if (offset >= RegionSize)
        {
            return 0;
        }
        lock (_lock)
        {
            int shift = (int)(offset & 7) * 8;
            ulong value = Register((int)(offset & ~7UL), NowTick()) >> shift;
            return size >= 8 ? value : value & ((1UL << (size * 8)) - 1);
        }
    }

    public void MmioWrite(ulong offset, int size, ulong value)
    {
        if (offset >= RegionSize)
        {
            return;
        }
        bool? legacyChanged = null;
        lock (_lock)
        {
            long tick = NowTick();
            int reg = (int)(offset & ~7UL);
            int shift = (int)(offset & 7) * 8;
            ulong mask = (size >= 8 ? ulong.MaxValue : (1UL << (size * 8)) - 1) << shift;
            ulong bits = (value << shift) & mask;
            ulong Merge(ulong old) => (old & ~mask) | bits;

            if (reg >= RegTimerBase && reg < RegTimerBase + TimerCount * TimerStride)
            {
                WriteTimer((reg - RegTimerBase) / TimerStride, (reg - RegTimerBase) % TimerStride, mask, bits, tick);
                return;
            }
            switch (reg)
            {
                case RegConfig:
                    {
                        ulong old = _config;
                        ulong config = Merge(old) & (CfgEnable | CfgLegacyRoute);
                        if ((config & CfgEnable) != (old & CfgEnable))
                        {
                            // Starting or halting the main counter (spec 2.3.5 ENABLE_CNF).
                            if ((config & CfgEnable) != 0)
                            {
                                _enableTick = tick;
                            }
                            else
                            {
                                _counterAtEnable = CounterAt(tick);
                            }
                        }
                        if ((config & CfgLegacyRoute) != (old & CfgLegacyRoute))
                        {
                            legacyChanged = (config & CfgLegacyRoute) != 0;
                            foreach (var t in _timers)
                            {
                                DeassertLevel(t); // routes change: release lines held on the old route
                            }
                        }
                        _config = config;
                        for (int i = 0; i < TimerCount; i++)
                        {
                            UpdateLevel(i);
                            Schedule(i, tick);
                        }
                        break;
                    }
                case RegInterruptStatus:
                    // Write 1 to clear a level-triggered timer's status (spec 2.3.7).
                    _interruptStatus &= ~(bits & ((1UL << TimerCount) - 1));
                    for (int i = 0; i < TimerCount; i++)
                    {
                        UpdateLevel(i);
                    }
                    break;
                case RegMainCounter:
                    // Software should halt the counter first (spec 2.3.9.2); a running write takes effect too.
                    _counterAtEnable = Merge(CounterAt(tick));
                    _enableTick = tick;
                    for (int i = 0; i < TimerCount; i++)
                    {
                        Schedule(i, tick);
                    }
                    break;
                default:
                    ReadOnlyWrites.Increment();
                    break;
            }
        }
        if (legacyChanged is { } on)
        {
            _legacyReplacementChanged?.Invoke(on);
        }
    }

    void WriteTimer(int index, int register, ulong mask, ulong bits, long tick)
    {
        var t = _timers[index];
        switch (register)
        {
            case 0x00:
                {
                    ulong config = ((t.Config & ~mask) | bits) & TnWritable;
                    if ((bits & ~TnWritable & mask & 0xFFFF_FFFF) != 0)
                    {
                        ReadOnlyWrites.Increment(); // e.g. FSB enable, which is not offered
                    }
                    DeassertLevel(t);
                    t.Config = config;
                    if ((t.Config & Tn32Bit) != 0)
                    {
                        t.Comparator &= 0xFFFF_FFFF;
                        t.Period &= 0xFFFF_FFFF;
                    }
                    if (RouteLine(index) is null && (t.Config & TnEnable) != 0)
                    {
                        InvalidRoutes.Increment();
                        Log.Once($"hpet.route{index}", "hpet", $"timer {index} routed to IOAPIC input {Route(t)}, which its capability does not allow; its interrupts are dropped");
                    }
                    UpdateLevel(index);
                    break;
                }
            case 0x08:
                {
                    bool is32 = (t.Config & Tn32Bit) != 0;
                    if (is32 && (mask & 0xFFFF_FFFF) == 0)
                    {
                        break; // the upper half does not exist in 32-bit mode
                    }
                    ulong Merge(ulong old) => is32 ? ((old & ~mask) | bits) & 0xFFFF_FFFF : (old & ~mask) | bits;
                    // In periodic mode a write sets the period; it also sets the comparator only with
                    // Tn_VAL_SET_CNF, which then clears (spec 2.3.8 and 2.3.9.2.2).
                    if ((t.Config & TnPeriodic) == 0 || (t.Config & TnValSet) != 0)
                    {
                        t.Comparator = Merge(t.Comparator);
                    }
                    t.Period = Merge(t.Period);
                    t.Config &= ~TnValSet;
                    break;
                }
            case 0x10:
                t.FsbRoute = (t.FsbRoute & ~mask) | bits;
                break;
            default:
                ReadOnlyWrites.Increment();
                break;
        }
        Schedule(index, tick);
    }

    static int Route(HpetTimer t) => (int)((t.Config & TnRouteMask) >> TnRouteShift);

    IIrqLine? RouteLine(int index)
    {
        if ((_config & CfgLegacyRoute) != 0 && index < 2)
        {
            return index == 0 ? _legacyIrq0 : _legacyIrq8;
        }
        int route = Route(_timers[index]);
        return (InterruptRouteCapability & (1u << route)) != 0 ? _ioApicInput(route) : null;
    }

    static ulong CompareMask(HpetTimer t) => (t.Config & Tn32Bit) != 0 ? 0xFFFF_FFFF : ulong.MaxValue;

    /// <summary>Arms timer <paramref name="index"/> for the next time the counter reaches its comparator.</summary>
    void Schedule(int index, long tick)
    {
        var t = _timers[index];
        if (!Enabled)
        {
            t.FireTick = -1;
            return;
        }
        ulong mask = CompareMask(t);
        ulong delta = (t.Comparator - CounterAt(tick)) & mask;
        if (delta > (1UL << 62))
        {
            // 64-bit comparator in the past: the next match is after a 2^64 wrap, i.e. never.
            t.FireTick = -1;
            return;
        }
        t.FireTick = tick + (long)delta;
        // Saturating: a comparator up to 2^62 ticks ahead is 2^62 * 10 ns, past long's range.
        long at = ClockMath.TicksToNs(t.FireTick, FrequencyHz);
        if ((t.Config & TnPeriodic) != 0)
        {
            at = Math.Max(at, t.LastFireNs + MinPeriodNs);
        }
        t.QueueTimer.EnsureBy(at);
    }

    void OnTimer(int index)
    {
        lock (_lock)
        {
            var t = _timers[index];
            long nowNs = _clock.NowNs;
            long tick = NowTick();
            if (!Enabled || t.FireTick < 0 || tick < t.FireTick)
            {
                Schedule(index, tick);
                return;
            }
            t.LastFireNs = nowNs;
            Fire(index);
            ulong mask = CompareMask(t);
            if ((t.Config & TnPeriodic) != 0)
            {
                if (t.Period == 0)
                {
                    // The accumulator would never move: fire once and stop rather than storm.
                    ZeroPeriods.Increment();
                    Log.Once($"hpet.zero_period{index}", "hpet", $"timer {index} is periodic with period 0; it fires once");
                    t.FireTick = -1;
                    return;
                }
                // Advance the comparator by whole periods past the counter (spec 2.3.9.2.2).
                ulong behind = (CounterAt(tick) - t.Comparator) & mask;
                ulong periods = behind / t.Period + 1;
                if (periods > 1)
                {
                    CoalescedPeriods.Add((long)Math.Min(periods - 1, long.MaxValue));
                }
                t.Comparator = (t.Comparator + periods * t.Period) & mask;
            }
            else
            {
                // One-shot: the next match is a full wrap later; step past the current value.
                t.FireTick = -1;
            }
            ScheduleAfterFire(index, tick);
        }
    }

    void ScheduleAfterFire(int index, long tick)
    {
        var t = _timers[index];
        if ((t.Config & TnPeriodic) == 0)
        {
            ulong mask = CompareMask(t);
            ulong delta = (t.Comparator - CounterAt(tick)) & mask;
            if (delta == 0)
            {
                delta = mask == ulong.MaxValue ? 0 : mask + 1;
            }
            if (delta == 0 || delta > (1UL << 62))
            {
                return;
            }
            t.FireTick = tick + (long)delta;
            t.QueueTimer.EnsureBy(ClockMath.TicksToNs(t.FireTick, FrequencyHz));
            return;
        }
        Schedule(index, tick);
    }

    void Fire(int index)
    {
        var t = _timers[index];
        bool level = (t.Config & TnLevel) != 0;
        if (level)
        {
            _interruptStatus |= 1UL << index; // status is set even when the interrupt is disabled
            UpdateLevel(index);
            return;
        }
        if ((t.Config & TnEnable) == 0 || RouteLine(index) is not { } line)
        {
            return;
        }
        Interrupts.Increment();
        // Driven under the HPET lock: the PIC/IOAPIC never call back into the HPET.
        line.SetLevel(true);
        line.SetLevel(false);
    }

    /// <summary>Holds a level-triggered timer's line high while its status bit is set and it is enabled.</summary>
    void UpdateLevel(int index)
    {
        var t = _timers[index];
        IIrqLine? want = null;
        if ((t.Config & TnLevel) != 0 && (t.Config & TnEnable) != 0 && Enabled
            && (_interruptStatus & (1UL << index)) != 0)
        {
            want = RouteLine(index);
        }
        if (want == t.AssertedLine)
        {
            return;
        }
        DeassertLevel(t);
        if (want is not null)
        {
            Interrupts.Increment();
            t.AssertedLine = want;
            want.SetLevel(true);
        }
    }

    static void DeassertLevel(HpetTimer t)
    {
        if (t.AssertedLine is { } line)
        {
            t.AssertedLine = null;
            line.SetLevel(false);
        }
    }
}
