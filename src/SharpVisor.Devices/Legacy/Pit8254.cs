using SharpVisor.Core;

namespace SharpVisor.Devices.Legacy;

/// <summary>
/// The 8254 programmable interval timer (Intel 8254 datasheet, 231164) at ports 0x40-0x43 plus
/// the ICH9 NMI status and control register at port 0x61 (<see cref="Port61"/>; ICH9 datasheet
/// 13.7.1, NMI_SC). Channel 0's OUT drives IRQ 0, channel 2's gate is port 0x61 bit 0 and its OUT
/// reads back in port 0x61 bit 5 (Linux calibrates the TSC against it).
/// <para>Nothing ticks: each channel remembers the 1.193182 MHz tick at which it started counting
/// and derives count and OUT from <see cref="VirtualClock.NowNs"/>, so every read is exact in
/// virtual time. Rising edges of OUT0 are delivered as pulses on IRQ 0 (the PC's IRQ 0 is
/// edge-triggered) from a <see cref="TimerQueue"/> timer.</para>
/// <para>Clamps: a count of 0 means 65536 (10000 in BCD), as on the chip; in modes 2 and 3 a
/// count of 1, which the datasheet calls illegal, counts as 2. IRQ 0 pulses are at least
/// <see cref="MinIrqIntervalNs"/> apart however small the count, so a guest cannot make the timer
/// queue spin (counts and OUT levels stay exact; only interrupts are coalesced).</para>
/// <para>Simplifications: a count is loaded on the write itself rather than on the next CLK edge,
/// and a new count written to a running mode 2/3 counter restarts it at once instead of at the
/// end of the current period.</para>
/// </summary>
public sealed class Pit8254 : IPortDevice, IPersistent<Pit8254.State>
{
    public const long FrequencyHz = 1_193_182;
    /// <summary>Shortest spacing of IRQ 0 pulses (100 kHz), whatever the guest programs.</summary>
    public const long MinIrqIntervalNs = 10_000;

    const int AccessLatch = 0;
    const int AccessLow = 1;
    const int AccessHigh = 2;
    const int AccessLowHigh = 3;

    sealed class Channel
    {
        public int Mode;
        public bool Bcd;
        public int Access = AccessLowHigh;
        public int CountRegister;     // N as binary (0 = maximum)
        public bool HasCount;         // a count was written since the control word
        public bool Running;          // counting (modes 0/2/3/4: count loaded and gate high; 1/5: triggered)
        public long LoadTick;         // tick at which the current count started
        public long FrozenElapsed;    // elapsed ticks while not running
        public bool Gate;
        public bool NullCount;
        public bool WriteMsbNext;
        public byte WriteLsb;
        public bool ReadMsbNext;
        public bool CountLatched;
        public int LatchedCount;
        public bool LatchedMsbNext;
        public bool StatusLatched;
        public byte LatchedStatus;
    }

    readonly Lock _lock = new();
    readonly VirtualClock _clock;
    readonly IIrqLine _irq0;
    readonly DeviceTimer _irqTimer;
    readonly Channel[] _channels = [new(), new(), new()];
    bool _irq0Connected = true;
    long _irqEdgeTick = -1;     // the OUT0 rising edge the timer is armed for
    long _lastPulseNs = long.MinValue / 2;
    bool _speakerData;
    byte _port61Upper;          // bits 2-3 (SERR#/IOCHK# NMI enables), kept as written

    public readonly Counter Irq0Pulses = new("pit.irq0_pulses");
    public readonly Counter CoalescedIrqs = new("pit.coalesced_irqs");
    public readonly Counter IllegalCounts = new("pit.illegal_counts");
    public readonly Counter BadAccesses = new("pit.bad_accesses");

    /// <summary>This device's counters, for the machine's <see cref="CounterRegistry"/>.</summary>
    public IEnumerable<Counter> Counters => [Irq0Pulses, CoalescedIrqs, IllegalCounts, BadAccesses];

    /// <param name="timers">Timer queue for IRQ 0 edges; its clock is the time base.</param>
    /// <param name="irq0">ISA IRQ 0 (the machine fans it out to the PIC and IOAPIC pin 2).</param>
    public Pit8254(TimerQueue timers, IIrqLine irq0)
    {
        _clock = timers.Clock;
        _irq0 = irq0;
        _irqTimer = new DeviceTimer(timers, "pit-irq0", OnIrqTimer);
        Port61 = new NmiStatusPort(this);
        Reset();
    }

    public string Name => "pit";

    /// <summary>Port 0x61, NMI status and control (speaker gate, refresh toggle, OUT2).</summary>
    public IPortDevice Port61 { get; }

    /// <summary>
    /// False while the HPET's legacy replacement route owns IRQ 0 (HPET spec 1.0a, 2.3.9.1,
    /// LEG_RT_CNF): the PIT keeps counting but its OUT0 no longer reaches the line.
    /// </summary>
    public bool Irq0Connected
    {
        get { lock (_lock) { return _irq0Connected; } }
        set
        {
            lock (_lock)
            {
                _irq0Connected = value;
                ScheduleIrq(NowTick());
            }
        }
    }

    /// <summary>State after a PC BIOS: every channel in mode 3 with count 65536; channel 2's gate low.</summary>
    public void Reset()
    {
        lock (_lock)
        {
            long now = NowTick();
            for (int i = 0; i < 3; i++)
            {
                var c = _channels[i];
                c.Mode = 3;
                c.Bcd = false;
                c.Access = AccessLowHigh;
                c.Gate = i != 2;
                c.CountLatched = false;
                c.StatusLatched = false;
                c.ReadMsbNext = false;
                c.WriteMsbNext = false;
                LoadCount(c, 0, now);
            }
            _speakerData = false;
            _port61Upper = 0;
            ScheduleIrq(now);
        }
    }

    /// <summary>One counter: mode, count register, where counting started, and the byte-pointer flip-flops of its latches.</summary>
    public sealed record ChannelState
    {
        public int Mode { get; init; }
        public bool Bcd { get; init; }
        /// <summary>Read/write access: 1 LSB only, 2 MSB only, 3 LSB then MSB.</summary>
        public int Access { get; init; }
        /// <summary>The count written, as binary (0 = maximum).</summary>
        public int CountRegister { get; init; }
        /// <summary>A count was written since the control word.</summary>
        public bool HasCount { get; init; }
        public bool Running { get; init; }
        /// <summary>PIT tick (1.193182 MHz of virtual time) at which the current count started.</summary>
        public long LoadTick { get; init; }
        /// <summary>Ticks counted before counting was paused (while not running).</summary>
        public long FrozenElapsed { get; init; }
        public bool Gate { get; init; }
        public bool NullCount { get; init; }
        /// <summary>LSB/MSB access: the next write is the MSB, and the LSB already written.</summary>
        public bool WriteMsbNext { get; init; }
        public byte WriteLsb { get; init; }
        /// <summary>LSB/MSB access: the next unlatched read returns the MSB.</summary>
        public bool ReadMsbNext { get; init; }
        public bool CountLatched { get; init; }
        public int LatchedCount { get; init; }
        public bool LatchedMsbNext { get; init; }
        public bool StatusLatched { get; init; }
        public byte LatchedStatus { get; init; }
    }

    /// <summary>The three counters, port 0x61 and the IRQ 0 pulse schedule.</summary>
    public sealed record State
    {
        public const int CurrentVersion = 1;
        public int Version { get; init; } = CurrentVersion;
        public ChannelState[] Channels { get; init; } = [];
        /// <summary>False while the HPET's legacy replacement route owns IRQ 0.</summary>
        public bool Irq0Connected { get; init; }
        /// <summary>The OUT0 rising edge (PIT tick) the next IRQ 0 pulse is for, or -1.</summary>
        public long PendingIrqEdgeTick { get; init; }
        /// <summary>Virtual time of the last IRQ 0 pulse (pulses are at least <see cref="MinIrqIntervalNs"/> apart).</summary>
        public long LastPulseNs { get; init; }
        /// <summary>Virtual time of the pending IRQ 0 timer callback, or -1.</summary>
        public long IrqTimerDeadlineNs { get; init; }
        public bool SpeakerData { get; init; }
        /// <summary>Port 0x61 bits 3:2 as written.</summary>
        public byte Port61Upper { get; init; }
    }

    /// <inheritdoc/>
    public State SaveState()
    {
        lock (_lock)
        {
            var channels = new ChannelState[3];
            for (int i = 0; i < 3; i++)
            {
                var c = _channels[i];
                channels[i] = new ChannelState
                {
                    Mode = c.Mode,
                    Bcd = c.Bcd,
                    Access = c.Access,
                    CountRegister = c.CountRegister,
                    HasCount = c.HasCount,
                    Running = c.Running,
                    LoadTick = c.LoadTick,
                    FrozenElapsed = c.FrozenElapsed,
                    Gate = c.Gate,
                    NullCount = c.NullCount,
                    WriteMsbNext = c.WriteMsbNext,
                    WriteLsb = c.WriteLsb,
                    ReadMsbNext = c.ReadMsbNext,
                    CountLatched = c.CountLatched,
                    LatchedCount = c.LatchedCount,
                    LatchedMsbNext = c.LatchedMsbNext,
                    StatusLatched = c.StatusLatched,
                    LatchedStatus = c.LatchedStatus,
                };
            }
            return new State
            {
                Channels = channels,
                Irq0Connected = _irq0Connected,
                PendingIrqEdgeTick = _irqEdgeTick,
                LastPulseNs = _lastPulseNs,
                IrqTimerDeadlineNs = _irqTimer.DeadlineNs,
                SpeakerData = _speakerData,
                Port61Upper = _port61Upper,
            };
        }
    }

    /// <inheritdoc/>
    public void RestoreState(State state)
    {
        ArgumentNullException.ThrowIfNull(state);
        InvalidStateException.CheckVersion(state.Version, State.CurrentVersion, Name);
        long nowNs = _clock.NowNs;
        long now = ClockMath.NsToTicks(nowNs, FrequencyHz);
        Check(state.Channels is { Length: 3 }, $"Channels has {state.Channels?.Length ?? 0} entries, the 8254 has 3 counters");
        for (int i = 0; i < 3; i++)
        {
            var c = state.Channels![i];
            string n = $"Channels[{i}]";
            Check(c is not null, $"{n} is missing");
            Check(c!.Mode is >= 0 and <= 5, $"{n}.Mode {c.Mode} is not 0-5");
            Check(c.Access is AccessLow or AccessHigh or AccessLowHigh, $"{n}.Access {c.Access} is not 1 (LSB), 2 (MSB) or 3 (LSB, MSB)");
            Check(c.CountRegister >= 0 && c.CountRegister <= (c.Bcd ? 9999 : 0xFFFF), $"{n}.CountRegister {c.CountRegister} is out of range for a {(c.Bcd ? "BCD" : "binary")} counter");
            Check(c.LoadTick >= 0 && c.LoadTick <= now, $"{n}.LoadTick {c.LoadTick} is not between power-on and now (tick {now})");
            Check(c.FrozenElapsed >= 0 && c.FrozenElapsed <= now, $"{n}.FrozenElapsed {c.FrozenElapsed} is not between 0 and the ticks since power-on ({now})");
            Check(c.LatchedCount is >= 0 and <= 0xFFFF, $"{n}.LatchedCount {c.LatchedCount} is not a 16-bit value");
            Check(i == 2 || c.Gate, $"{n}.Gate is low; only counter 2's gate is wired (to port 0x61)");
            Check(!c.Running || c.HasCount, $"{n}.Running without a count");
        }
        Check(state.PendingIrqEdgeTick >= -1, $"PendingIrqEdgeTick {state.PendingIrqEdgeTick} is neither -1 nor a tick");
        Check(state.LastPulseNs <= nowNs && state.LastPulseNs >= long.MinValue / 2, $"LastPulseNs {state.LastPulseNs} is not before now ({nowNs} ns)");
        Check(DeviceTimer.IsValidDeadline(state.IrqTimerDeadlineNs), $"IrqTimerDeadlineNs {state.IrqTimerDeadlineNs} is before power-on");
        Check((state.Port61Upper & ~0x0C) == 0, $"Port61Upper 0x{state.Port61Upper:x2} has bits outside 3:2");

        lock (_lock)
        {
            for (int i = 0; i < 3; i++)
            {
                var s = state.Channels![i];
                var c = _channels[i];
                c.Mode = s.Mode;
                c.Bcd = s.Bcd;
                c.Access = s.Access;
                c.CountRegister = s.CountRegister;
                c.HasCount = s.HasCount;
                c.Running = s.Running;
                c.LoadTick = s.LoadTick;
                c.FrozenElapsed = s.FrozenElapsed;
                c.Gate = s.Gate;
                c.NullCount = s.NullCount;
                c.WriteMsbNext = s.WriteMsbNext;
                c.WriteLsb = s.WriteLsb;
                c.ReadMsbNext = s.ReadMsbNext;
                c.CountLatched = s.CountLatched;
                c.LatchedCount = s.LatchedCount;
                c.LatchedMsbNext = s.LatchedMsbNext;
                c.StatusLatched = s.StatusLatched;
                c.LatchedStatus = s.LatchedStatus;
            }
            _irq0Connected = state.Irq0Connected;
            _irqEdgeTick = state.PendingIrqEdgeTick;
            _lastPulseNs = state.LastPulseNs;
            _speakerData = state.SpeakerData;
            _port61Upper = state.Port61Upper;
            // IRQ 0 is pulsed, never held: there is no level to drive again.
            _irqTimer.Restore(state.IrqTimerDeadlineNs);
        }
    }

    void Check(bool condition, string problem) => InvalidStateException.Check(condition, Name, problem);

    long NowTick() => ClockMath.NsToTicks(_clock.NowNs, FrequencyHz);

    static int Modulus(Channel c) => c.Bcd ? 10_000 : 65_536;

    static long Reload(Channel c)
    {
        long n = c.CountRegister == 0 ? Modulus(c) : c.CountRegister;
        return c.Mode is 2 or 3 && n == 1 ? 2 : n;
    }

    static long Elapsed(Channel c, long now) => c.Running ? now - c.LoadTick : c.FrozenElapsed;

    static bool Out(Channel c, long now)
    {
        long n = Reload(c);
        long d = Elapsed(c, now);
        return c.Mode switch
        {
            0 => c.HasCount && d >= n,
            1 => !c.Running || d >= n,
            2 => !(c.Running && d % n == n - 1),
            3 => !c.Running || d % n < (n + 1) / 2,
            4 => !(c.HasCount && d == n),
            _ => !(c.Running && d == n), // mode 5
        };
    }

    static int Count(Channel c, long now)
    {
        long n = Reload(c);
        long d = Elapsed(c, now);
        int modulus = Modulus(c);
        long count;
        switch (c.Mode)
        {
            case 2:
                count = n - d % n;
                break;
            case 3:
                {
                    // Decrements by two; each half period starts again from N.
                    long phase = d % n;
                    long high = (n + 1) / 2;
                    long inHalf = phase < high ? phase : phase - high;
                    count = (n - 2 * inHalf) & ~1L;
                    break;
                }
            default:
                count = n - d; // modes 0, 1, 4, 5 wrap around after 0
                break;
        }
        count %= modulus;
        if (count < 0)
        {
            count += modulus;
        }
        return (int)count;
    }

    static int ToBcd(int value) =>
        (value % 10) | (value / 10 % 10 << 4) | (value / 100 % 10 << 8) | (value / 1000 % 10 << 12);

    static int FromBcd(int value, Counter illegal)
    {
        int result = 0;
        for (int shift = 12; shift >= 0; shift -= 4)
        {
            int digit = (value >> shift) & 0xF;
            if (digit > 9)
            {
                illegal.Increment();
                digit = 9;
            }
            result = result * 10 + digit;
        }
        return result;
    }

    byte Status(Channel c, long now) => (byte)((Out(c, now) ? 0x80 : 0) | (c.NullCount ? 0x40 : 0)
        | (c.Access << 4) | (c.Mode << 1) | (c.Bcd ? 1 : 0));

    void LoadCount(Channel c, int raw, long now)
    {
        c.CountRegister = c.Bcd ? FromBcd(raw, IllegalCounts) : raw;
        if (c.Mode is 2 or 3 && c.CountRegister == 1)
        {
            IllegalCounts.Increment();
        }
        c.HasCount = true;
        c.NullCount = false;
        c.LoadTick = now;
        c.FrozenElapsed = 0;
        c.Running = c.Mode switch
        {
            1 or 5 => false, // waits for a gate trigger
            _ => c.Gate,
        };
    }

    void SetGate(Channel c, bool gate, long now)
    {
        if (gate == c.Gate)
        {
            return;
        }
        c.Gate = gate;
        switch (c.Mode)
        {
            case 0 or 4:
                // The gate pauses and resumes counting.
                if (!gate && c.Running)
                {
                    c.FrozenElapsed = now - c.LoadTick;
                    c.Running = false;
                }
                else if (gate && c.HasCount)
                {
                    c.LoadTick = now - c.FrozenElapsed;
                    c.Running = true;
                }
                break;
            case 2 or 3:
                // Gate low stops counting with OUT high; the rising edge reloads the count.
                if (!gate)
                {
                    c.FrozenElapsed = 0;
                    c.Running = false;
                }
                else if (c.HasCount)
                {
                    c.LoadTick = now;
                    c.Running = true;
                }
                break;
            default:
                // Modes 1 and 5: the rising edge (re)triggers.
                if (gate && c.HasCount)
                {
                    c.LoadTick = now;
                    c.Running = true;
                }
                break;
        }
    }

    public uint PortRead(ushort offset, int size)
    {
        if (size != 1)
        {
            BadAccesses.Increment();
        }
        lock (_lock)
        {
            if (offset >= 3)
            {
                BadAccesses.Increment(); // the control word register is write-only
                return 0xFF;
            }
            var c = _channels[offset];
            long now = NowTick();
            if (c.StatusLatched)
            {
                c.StatusLatched = false;
                return c.LatchedStatus;
            }
            int count;
            bool msb;
            if (c.CountLatched)
            {
                count = c.LatchedCount;
                msb = c.Access == AccessHigh || (c.Access == AccessLowHigh && c.LatchedMsbNext);
                if (c.Access == AccessLowHigh && !c.LatchedMsbNext)
                {
                    c.LatchedMsbNext = true;
                }
                else
                {
                    c.CountLatched = false;
                }
            }
            else
            {
                // An unlatched read samples the live counter for each byte.
                count = Count(c, now);
                if (c.Bcd)
                {
                    count = ToBcd(count);
                }
                msb = c.Access == AccessHigh || (c.Access == AccessLowHigh && c.ReadMsbNext);
                if (c.Access == AccessLowHigh)
                {
                    c.ReadMsbNext = !c.ReadMsbNext;
                }
            }
            return (byte)(msb ? count >> 8 : count);
        }
    }

    public void PortWrite(ushort offset, int size, uint value)
    {
        if (size != 1)
        {
            BadAccesses.Increment();
        }
        byte b = (byte)value;
        lock (_lock)
        {
            long now = NowTick();
            if (offset == 3)
            {
                WriteControl(b, now);
            }
            else if (offset < 3)
            {
                WriteCounter(_channels[offset], b, now);
            }
            else
            {
                BadAccesses.Increment();
            }
            ScheduleIrq(now);
        }
    }

    void WriteControl(byte b, long now)
    {
        int select = b >> 6;
        if (select == 3)
        {
            // Read-back command (datasheet "Read-Back Command"): bit 5 = 0 latches counts,
            // bit 4 = 0 latches status, bits 3:1 select counters 2..0.
            for (int i = 0; i < 3; i++)
            {
                if ((b & (2 << i)) == 0)
                {
                    continue;
                }
                var rc = _channels[i];
                if ((b & 0x20) == 0)
                {
                    LatchCount(rc, now);
                }
                if ((b & 0x10) == 0 && !rc.StatusLatched)
                {
                    rc.LatchedStatus = Status(rc, now);
                    rc.StatusLatched = true;
                }
            }
            return;
        }
        var c = _channels[select];
        int access = (b >> 4) & 3;
        if (access == AccessLatch)
        {
            LatchCount(c, now);
            return;
        }
        int mode = (b >> 1) & 7;
        c.Mode = mode > 5 ? mode - 4 : mode; // modes 6 and 7 are 2 and 3
        c.Bcd = (b & 1) != 0;
        c.Access = access;
        c.HasCount = false;
        c.Running = false;
        c.FrozenElapsed = 0;
        c.NullCount = true;
        c.WriteMsbNext = false;
        c.ReadMsbNext = false;
    }

    void LatchCount(Channel c, long now)
    {
        if (c.CountLatched)
        {
            return; // a second latch before the first is read is ignored
        }
        int count = Count(c, now);
        c.LatchedCount = c.Bcd ? ToBcd(count) : count;
        c.CountLatched = true;
        c.LatchedMsbNext = false;
    }

    void WriteCounter(Channel c, byte b, long now)
    {
        switch (c.Access)
        {
            case AccessLow:
                LoadCount(c, b, now);
                break;
            case AccessHigh:
                LoadCount(c, b << 8, now);
                break;
            default:
                if (!c.WriteMsbNext)
                {
                    c.WriteLsb = b;
                    c.WriteMsbNext = true;
                    if (c.Mode == 0)
                    {
                        // Mode 0: writing the first byte stops counting and drives OUT low.
                        c.HasCount = false;
                        c.Running = false;
                        c.FrozenElapsed = 0;
                    }
                }
                else
                {
                    c.WriteMsbNext = false;
                    LoadCount(c, c.WriteLsb | (b << 8), now);
                }
                break;
        }
    }

    /// <summary>The next tick at which OUT0 rises after <paramref name="now"/>, or -1.</summary>
    long NextRisingEdge(long now)
    {
        var c = _channels[0];
        if (!c.Running)
        {
            return -1;
        }
        long n = Reload(c);
        long d = now - c.LoadTick;
        return c.Mode switch
        {
            0 or 1 => d < n ? c.LoadTick + n : -1,
            2 or 3 => c.LoadTick + (d / n + 1) * n,
            _ => d < n + 1 ? c.LoadTick + n + 1 : -1, // modes 4 and 5: end of the strobe
        };
    }

    void ScheduleIrq(long now)
    {
        long edge = _irq0Connected ? NextRisingEdge(now) : -1;
        _irqEdgeTick = edge;
        if (edge < 0)
        {
            return; // a pending callback, if any, finds nothing to do
        }
        _irqTimer.EnsureBy(Math.Max(ClockMath.TicksToNs(edge, FrequencyHz), _lastPulseNs + MinIrqIntervalNs));
    }

    void OnIrqTimer()
    {
        lock (_lock)
        {
            long nowNs = _clock.NowNs;
            long now = ClockMath.NsToTicks(nowNs, FrequencyHz);
            if (_irqEdgeTick >= 0 && now >= _irqEdgeTick && _irq0Connected)
            {
                // Edges missed while the VMM was late are coalesced into this one.
                var c = _channels[0];
                if (c.Mode is 2 or 3 && c.Running)
                {
                    long missed = (now - _irqEdgeTick) / Reload(c);
                    if (missed > 0)
                    {
                        CoalescedIrqs.Add(missed);
                    }
                }
                Irq0Pulses.Increment();
                _lastPulseNs = nowNs;
                // Driven under the PIT lock: the PIC/IOAPIC never call back into the PIT.
                _irq0.SetLevel(true);
                _irq0.SetLevel(false);
            }
            ScheduleIrq(now);
        }
    }

    byte ReadPort61()
    {
        lock (_lock)
        {
            long nowNs = _clock.NowNs;
            var c2 = _channels[2];
            byte value = (byte)(_port61Upper | (c2.Gate ? 1 : 0) | (_speakerData ? 2 : 0));
            // REF_TOGGLE flips every 15.085 us (ICH9 NMI_SC bit 4), derived from the clock.
            if ((nowNs / 15_085 & 1) != 0)
            {
                value |= 1 << 4;
            }
            if (Out(c2, ClockMath.NsToTicks(nowNs, FrequencyHz)))
            {
                value |= 1 << 5;
            }
            return value;
        }
    }

    void WritePort61(byte value)
    {
        lock (_lock)
        {
            _speakerData = (value & 2) != 0;
            _port61Upper = (byte)(value & 0x0C);
            SetGate(_channels[2], (value & 1) != 0, NowTick());
        }
    }

    sealed class NmiStatusPort(Pit8254 pit) : IPortDevice
    {
        public string Name => "nmi-sc";
        public uint PortRead(ushort offset, int size) => pit.ReadPort61();
        public void PortWrite(ushort offset, int size, uint value) => pit.WritePort61((byte)value);
    }
}
