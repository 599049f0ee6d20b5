using SharpVisor.Core;

namespace SharpVisor.Devices.Legacy;

/// <summary>
/// The MC146818A real-time clock and CMOS RAM of a PC (Motorola MC146818A datasheet; ICH9
/// datasheet 5.9 and 13.6). Register it at 0x70 with 2 ports (index, data) or 4 ports to also get
/// the ICH9 upper 128 bytes of RAM at 0x72/0x73. Port 0x70 bit 7 is the NMI mask
/// (<see cref="NmiMasked"/>).
/// <para>The time starts at the wall-clock time given to the constructor (the host's UTC time
/// by default) and advances with the <see cref="VirtualClock"/>: an update happens at each
/// whole virtual second after the start. UIP (register A bit 7) reads 1 during the last
/// <see cref="UipWindowNs"/> before each update (244 us of set-up plus the 1984 us update
/// cycle, datasheet "Update cycle"), so a reader that saw UIP = 0 has at least 244 us of stable
/// registers, which is what Linux's mc146818_get_time relies on. Periodic, alarm and
/// update-ended interrupts set register C and drive IRQ 8 until C is read. Flags are derived
/// from the clock whenever the guest looks, so no timer runs unless an interrupt is enabled.</para>
/// <para>Not modelled: daylight-saving (register B bit 0), square-wave output, the divider's
/// test modes. Day of week (register 6) is computed from the date; writes to it are ignored.</para>
/// </summary>
public sealed class Rtc : IPortDevice, IPersistent<Rtc.State>
{
    /// <summary>The log of the VM this device belongs to.</summary>
    readonly Log Log;

    public const long UipWindowNs = 2_228_000;
    const long NsPerSecond = 1_000_000_000;

    // Register indexes (datasheet figure "Address map").
    const int RegSeconds = 0x00;
    const int RegSecondsAlarm = 0x01;
    const int RegMinutes = 0x02;
    const int RegMinutesAlarm = 0x03;
    const int RegHours = 0x04;
    const int RegHoursAlarm = 0x05;
    const int RegDayOfWeek = 0x06;
    const int RegDayOfMonth = 0x07;
    const int RegMonth = 0x08;
    const int RegYear = 0x09;
    const int RegA = 0x0A;
    const int RegB = 0x0B;
    const int RegC = 0x0C;
    const int RegD = 0x0D;
    /// <summary>CMOS byte holding the century (as QEMU and the ACPI FADT CENTURY field use).</summary>
    public const int CenturyIndex = 0x32;

    // Register A.
    const byte AUip = 0x80;
    const int ADividerNormal = 0x20; // DV2:0 = 010, 32.768 kHz time base, running

    // Register B.
    const byte BSet = 0x80;
    const byte BPie = 0x40;
    const byte BAie = 0x20;
    const byte BUie = 0x10;
    const byte BBinary = 0x04;
    const byte B24Hour = 0x02;
    const byte BDaylightSaving = 0x01;

    // Register C.
    const byte CIrqf = 0x80;
    const byte CPf = 0x40;
    const byte CAf = 0x20;
    const byte CUf = 0x10;

    readonly Lock _lock = new();
    readonly VirtualClock _clock;
    readonly IIrqLine _irq;
    readonly DeviceTimer _timer;
    readonly byte[] _cmos = new byte[256];
    DateTime _powerOnTime;

    int _index;
    int _upperIndex;
    bool _nmiMasked;
    byte _regA;
    byte _regB;
    byte _flags;                 // PF | AF | UF
    DateTime _baseTime;          // calendar time (whole seconds) at _baseNs, or the frozen time
    long _baseNs;                // virtual time of the last update boundary before _baseTime was valid
    bool _updating;              // divider running and SET clear: the time advances
    bool _dividerRunning;
    long _dividerStartNs;        // periodic interrupts are phased from here
    long _flagsUpToNs;
    bool _irqLevel;
    bool _irqConnected = true;

    public readonly Counter UnsupportedModes = new("rtc.unsupported_modes");
    public readonly Counter InvalidTimeWrites = new("rtc.invalid_time_writes");
    public readonly Counter ReadOnlyWrites = new("rtc.read_only_writes");
    public readonly Counter Interrupts = new("rtc.interrupts");

    /// <summary>This device's counters, for the machine's <see cref="CounterRegistry"/>.</summary>
    public IEnumerable<Counter> Counters => [UnsupportedModes, InvalidTimeWrites, ReadOnlyWrites, Interrupts];

    /// <param name="timers">Timer queue for IRQ 8 when an interrupt is enabled; its clock is the time base.</param>
    /// <param name="irq8">ISA IRQ 8.</param>
    /// <param name="startTime">RTC time at power-on (kept as UTC wall time); null takes the host's UTC time now. Pass a fixed value for deterministic runs.</param>
    public Rtc(TimerQueue timers, IIrqLine irq8, DateTime? startTime = null, Log? log = null)
    {
        Log = log ?? new Log();
        _clock = timers.Clock;
        _irq = irq8;
        _timer = new DeviceTimer(timers, "rtc", OnTimer);
        var start = startTime ?? DateTime.UtcNow;
        _powerOnTime = new DateTime(start.Ticks - start.Ticks % TimeSpan.TicksPerSecond, DateTimeKind.Unspecified);
        Reset();
    }

    public string Name => "rtc";

    /// <summary>Port 0x70 bit 7: while set, the chipset blocks NMIs (the machine consults this).</summary>
    public bool NmiMasked { get { lock (_lock) { return _nmiMasked; } } }

    /// <summary>False while the HPET's legacy replacement route owns IRQ 8 (HPET spec 1.0a, 2.3.9.1).</summary>
    public bool IrqConnected
    {
        get { lock (_lock) { return _irqConnected; } }
        set
        {
            lock (_lock)
            {
                _irqConnected = value;
                UpdateIrq(_clock.NowNs);
            }
        }
    }

    /// <summary>Power-on: time from the constructor, 24-hour BCD mode, 1024 Hz periodic rate selected, no interrupts enabled.</summary>
    public void Reset()
    {
        lock (_lock)
        {
            long now = _clock.NowNs;
            _regA = ADividerNormal | 0x06;
            _regB = B24Hour;
            _flags = 0;
            _baseTime = _powerOnTime;
            _baseNs = now;
            _updating = true;
            _dividerRunning = true;
            _dividerStartNs = now;
            _flagsUpToNs = now;
            _index = 0;
            _upperIndex = 0;
            _nmiMasked = false;
            UpdateIrq(now);
        }
    }

    /// <summary>
    /// The CMOS RAM, the clock registers, the time base and the interrupt flags. Calendar times are
    /// <see cref="DateTime.Ticks"/> (100 ns units) of whole seconds; virtual times are ns.
    /// </summary>
    public sealed record State
    {
        public const int CurrentVersion = 1;
        public int Version { get; init; } = CurrentVersion;
        /// <summary>All 256 bytes (0x00-0x0D are clock registers and only the alarm bytes 1, 3, 5 are kept there).</summary>
        public byte[] Cmos { get; init; } = [];
        /// <summary>Port 0x70 index (bits 6:0).</summary>
        public int Index { get; init; }
        /// <summary>Port 0x72 index into the upper bank (bits 6:0).</summary>
        public int UpperIndex { get; init; }
        public bool NmiMasked { get; init; }
        /// <summary>Register A without UIP (bits 6:0).</summary>
        public byte RegisterA { get; init; }
        public byte RegisterB { get; init; }
        /// <summary>Register C flags PF, AF, UF raised and not yet read.</summary>
        public byte Flags { get; init; }
        /// <summary>The calendar time at <see cref="BaseNs"/> (or the frozen time while not updating).</summary>
        public long BaseTimeTicks { get; init; }
        public long BaseNs { get; init; }
        /// <summary>The time advances (divider running and SET clear).</summary>
        public bool Updating { get; init; }
        public bool DividerRunning { get; init; }
        /// <summary>Virtual time the divider last started; periodic interrupts are phased from it.</summary>
        public long DividerStartNs { get; init; }
        /// <summary>Virtual time up to which the flags have been brought.</summary>
        public long FlagsUpToNs { get; init; }
        /// <summary>IRQ 8 is held asserted (until register C is read).</summary>
        public bool IrqAsserted { get; init; }
        /// <summary>False while the HPET's legacy replacement route owns IRQ 8.</summary>
        public bool IrqConnected { get; init; }
        /// <summary>The time a machine reset sets (the power-on time given to the constructor).</summary>
        public long PowerOnTimeTicks { get; init; }
        /// <summary>Virtual time of the pending interrupt timer callback, or -1.</summary>
        public long TimerDeadlineNs { get; init; }
    }

    /// <inheritdoc/>
    public State SaveState()
    {
        lock (_lock)
        {
            return new State
            {
                Cmos = (byte[])_cmos.Clone(),
                Index = _index,
                UpperIndex = _upperIndex,
                NmiMasked = _nmiMasked,
                RegisterA = _regA,
                RegisterB = _regB,
                Flags = _flags,
                BaseTimeTicks = _baseTime.Ticks,
                BaseNs = _baseNs,
                Updating = _updating,
                DividerRunning = _dividerRunning,
                DividerStartNs = _dividerStartNs,
                FlagsUpToNs = _flagsUpToNs,
                IrqAsserted = _irqLevel,
                IrqConnected = _irqConnected,
                PowerOnTimeTicks = _powerOnTime.Ticks,
                TimerDeadlineNs = _timer.DeadlineNs,
            };
        }
    }

    /// <inheritdoc/>
    public void RestoreState(State state)
    {
        ArgumentNullException.ThrowIfNull(state);
        InvalidStateException.CheckVersion(state.Version, State.CurrentVersion, Name);
        long now = _clock.NowNs;
        Check(state.Cmos is { Length: 256 }, $"Cmos has {state.Cmos?.Length ?? 0} bytes, the RTC has 256");
        Check(state.Index is >= 0 and <= 0x7F, $"Index {state.Index} is not 0-127");
        Check(state.UpperIndex is >= 0 and <= 0x7F, $"UpperIndex {state.UpperIndex} is not 0-127");
        Check((state.RegisterA & AUip) == 0, $"RegisterA 0x{state.RegisterA:x2} has UIP set (it is derived from the clock)");
        Check(state.DividerRunning == ((state.RegisterA & 0x70) == ADividerNormal),
            $"DividerRunning {state.DividerRunning} disagrees with the divider bits of RegisterA 0x{state.RegisterA:x2}");
        Check((state.RegisterB & BSet) == 0 || (state.RegisterB & BUie) == 0, $"RegisterB 0x{state.RegisterB:x2} has SET and UIE (SET clears UIE)");
        Check(state.Updating == (state.DividerRunning && (state.RegisterB & BSet) == 0),
            $"Updating {state.Updating} disagrees with the divider and SET");
        Check((state.Flags & ~(CPf | CAf | CUf)) == 0, $"Flags 0x{state.Flags:x2} has bits outside PF, AF, UF");
        Check(IsWholeSecondTime(state.BaseTimeTicks), $"BaseTimeTicks {state.BaseTimeTicks} is not a whole second between years 1 and 9999");
        Check(IsWholeSecondTime(state.PowerOnTimeTicks), $"PowerOnTimeTicks {state.PowerOnTimeTicks} is not a whole second between years 1 and 9999");
        Check(state.BaseNs >= -NsPerSecond && state.BaseNs <= now, $"BaseNs {state.BaseNs} is not between power-on and now ({now} ns)");
        Check(state.DividerStartNs >= 0 && state.DividerStartNs <= now, $"DividerStartNs {state.DividerStartNs} is not between power-on and now ({now} ns)");
        Check(state.FlagsUpToNs >= 0 && state.FlagsUpToNs <= now, $"FlagsUpToNs {state.FlagsUpToNs} is not between power-on and now ({now} ns)");
        Check(!state.IrqAsserted || state.IrqConnected, "IrqAsserted while IrqConnected is false");
        Check(DeviceTimer.IsValidDeadline(state.TimerDeadlineNs), $"TimerDeadlineNs {state.TimerDeadlineNs} is before power-on");

        lock (_lock)
        {
            state.Cmos!.CopyTo(_cmos, 0);
            _index = state.Index;
            _upperIndex = state.UpperIndex;
            _nmiMasked = state.NmiMasked;
            _regA = state.RegisterA;
            _regB = state.RegisterB;
            _flags = state.Flags;
            _baseTime = new DateTime(state.BaseTimeTicks, DateTimeKind.Unspecified);
            _baseNs = state.BaseNs;
            _updating = state.Updating;
            _dividerRunning = state.DividerRunning;
            _dividerStartNs = state.DividerStartNs;
            _flagsUpToNs = state.FlagsUpToNs;
            _irqConnected = state.IrqConnected;
            _powerOnTime = new DateTime(state.PowerOnTimeTicks, DateTimeKind.Unspecified);
            if (state.IrqAsserted != _irqLevel)
            {
                _irqLevel = state.IrqAsserted;
                _irq.SetLevel(_irqLevel);
            }
            _timer.Restore(state.TimerDeadlineNs);
        }
    }

    static bool IsWholeSecondTime(long ticks)
        => ticks >= 0 && ticks <= DateTime.MaxValue.Ticks && ticks % TimeSpan.TicksPerSecond == 0;

    void Check(bool condition, string problem) => InvalidStateException.Check(condition, Name, problem);

    /// <summary>Writes a CMOS RAM byte (firmware-style set-up by the machine). Clock registers 0x00-0x0D are not RAM.</summary>
    public void SetCmosByte(int index, byte value)
    {
        if ((uint)index >= 256 || index <= RegD)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(index), "CMOS RAM is bytes 0x0E-0xFF");
        }
        lock (_lock)
        {
            if (index == CenturyIndex)
            {
                WriteCentury(value, _clock.NowNs);
            }
            else
            {
                _cmos[index] = value;
            }
        }
    }

    /// <summary>
    /// Fills the memory-size bytes the way QEMU's PC firmware interface does: 0x15/0x16 base
    /// memory (640 KiB), 0x17/0x18 and 0x30/0x31 KiB above 1 MiB (capped at 0xFFFF), 0x34/0x35
    /// 64 KiB units above 16 MiB below 4 GiB, 0x5B-0x5D 64 KiB units above 4 GiB.
    /// </summary>
    public void SetMemorySize(ulong ramBelow4G, ulong ramAbove4G)
    {
        const ulong MiB = 1 << 20;
        lock (_lock)
        {
            SetWord(0x15, 640);
            ulong extendedKiB = ramBelow4G > MiB ? Math.Min((ramBelow4G - MiB) / 1024, 0xFFFF) : 0;
            SetWord(0x17, (ushort)extendedKiB);
            SetWord(0x30, (ushort)extendedKiB);
            ulong above16M = ramBelow4G > 16 * MiB ? Math.Min((ramBelow4G - 16 * MiB) >> 16, 0xFFFF) : 0;
            SetWord(0x34, (ushort)above16M);
            ulong high = Math.Min(ramAbove4G >> 16, 0xFF_FFFF);
            _cmos[0x5B] = (byte)high;
            _cmos[0x5C] = (byte)(high >> 8);
            _cmos[0x5D] = (byte)(high >> 16);
        }
    }

    void SetWord(int index, ushort value)
    {
        _cmos[index] = (byte)value;
        _cmos[index + 1] = (byte)(value >> 8);
    }

    public uint PortRead(ushort offset, int size)
    {
        lock (_lock)
        {
            switch (offset)
            {
                case 1: return ReadRegister(_index);
                case 3: return _cmos[0x80 | _upperIndex];
                default: return 0xFF; // index ports are write-only on ICH9
            }
        }
    }

    public void PortWrite(ushort offset, int size, uint value)
    {
        byte b = (byte)value;
        lock (_lock)
        {
            switch (offset)
            {
                case 0:
                    _nmiMasked = (b & 0x80) != 0;
                    _index = b & 0x7F;
                    break;
                case 1:
                    WriteRegister(_index, b);
                    break;
                case 2:
                    _upperIndex = b & 0x7F;
                    break;
                default:
                    _cmos[0x80 | _upperIndex] = b;
                    break;
            }
        }
    }

    // ---- Time keeping -------------------------------------------------------------------

    /// <summary>The calendar time shown in the registers at <paramref name="now"/>.</summary>
    DateTime TimeAt(long now)
    {
        if (!_updating || now < _baseNs)
        {
            return _baseTime;
        }
        long seconds = (now - _baseNs) / NsPerSecond;
        long maxSeconds = (DateTime.MaxValue.Ticks - _baseTime.Ticks) / TimeSpan.TicksPerSecond;
        return _baseTime.AddTicks(Math.Min(seconds, maxSeconds) * TimeSpan.TicksPerSecond);
    }

    /// <summary>Index of the last update boundary at or before <paramref name="t"/> since _baseNs.</summary>
    long UpdatesBy(long t) => _updating && t >= _baseNs ? (t - _baseNs) / NsPerSecond : 0;

    /// <summary>Replaces the clock's calendar time at <paramref name="now"/>, keeping the phase of the update cycle.</summary>
    void SetTime(DateTime time, long now)
    {
        if (_updating && now >= _baseNs)
        {
            _baseNs = now - (now - _baseNs) % NsPerSecond;
        }
        _baseTime = time;
    }

    int PeriodicShift()
    {
        int rate = _regA & 0x0F;
        return rate switch
        {
            0 => -1,
            1 or 2 => rate + 6, // rates 1 and 2 repeat rates 8 and 9 (256 and 128 Hz)
            _ => rate - 1,      // period = 2^(rate-1) / 32768 s
        };
    }

    long PeriodicEdgesBy(long t)
    {
        int shift = PeriodicShift();
        if (!_dividerRunning || shift < 0 || t < _dividerStartNs)
        {
            return 0;
        }
        return ClockMath.NsToTicks(t - _dividerStartNs, 32768) >> shift;
    }

    /// <summary>Sets PF/UF/AF for every periodic edge and update between the last look and <paramref name="now"/>.</summary>
    void CatchUp(long now)
    {
        long from = _flagsUpToNs;
        if (now <= from)
        {
            return;
        }
        if (PeriodicEdgesBy(now) > PeriodicEdgesBy(from))
        {
            _flags |= CPf;
        }
        long updatesBefore = UpdatesBy(from);
        long updatesNow = UpdatesBy(now);
        if (updatesNow > updatesBefore)
        {
            _flags |= CUf;
            if ((_flags & CAf) == 0)
            {
                // Within a day every alarm pattern that can match has matched.
                long first = Math.Max(updatesBefore + 1, updatesNow - 86_400);
                for (long k = updatesNow; k >= first; k--)
                {
                    if (AlarmMatches(_baseTime.AddTicks(k * TimeSpan.TicksPerSecond)))
                    {
                        _flags |= CAf;
                        break;
                    }
                }
            }
        }
        _flagsUpToNs = now;
    }

    bool AlarmMatches(DateTime t) =>
        AlarmFieldMatches(_cmos[RegSecondsAlarm], Encode(t.Second))
        && AlarmFieldMatches(_cmos[RegMinutesAlarm], Encode(t.Minute))
        && AlarmFieldMatches(_cmos[RegHoursAlarm], EncodeHour(t.Hour));

    // An alarm byte of 11xxxxxx matches every value (datasheet "Alarm" "don't care" code).
    static bool AlarmFieldMatches(byte alarm, byte value) => (alarm & 0xC0) == 0xC0 || alarm == value;

    bool Binary => (_regB & BBinary) != 0;

    byte Encode(int value) => Binary ? (byte)value : (byte)((value / 10 << 4) | (value % 10));

    int Decode(byte value)
    {
        if (Binary)
        {
            return value;
        }
        int high = value >> 4, low = value & 0xF;
        if (high > 9 || low > 9)
        {
            InvalidTimeWrites.Increment();
        }
        return high * 10 + low;
    }

    byte EncodeHour(int hour)
    {
        if ((_regB & B24Hour) != 0)
        {
            return Encode(hour);
        }
        int h12 = hour % 12 == 0 ? 12 : hour % 12;
        return (byte)(Encode(h12) | (hour >= 12 ? 0x80 : 0));
    }

    int DecodeHour(byte value)
    {
        if ((_regB & B24Hour) != 0)
        {
            return Decode(value);
        }
        int h12 = Decode((byte)(value & 0x7F));
        return h12 % 12 + ((value & 0x80) != 0 ? 12 : 0);
    }

    // ---- Registers ----------------------------------------------------------------------

    byte ReadRegister(int index)
    {
        long now = _clock.NowNs;
        switch (index)
        {
            case RegSeconds: return Encode(TimeAt(now).Second);
            case RegMinutes: return Encode(TimeAt(now).Minute);
            case RegHours: return EncodeHour(TimeAt(now).Hour);
            case RegDayOfWeek: return Encode((int)TimeAt(now).DayOfWeek + 1);
            case RegDayOfMonth: return Encode(TimeAt(now).Day);
            case RegMonth: return Encode(TimeAt(now).Month);
            case RegYear: return Encode(TimeAt(now).Year % 100);
            case CenturyIndex: return Encode(TimeAt(now).Year / 100);
            case RegA:
                return (byte)(_regA | (UpdateInProgress(now) ? AUip : 0));
            case RegB:
                return _regB;
            case RegC:
                {
                    CatchUp(now);
                    byte c = _flags;
                    if ((c & IrqSources()) != 0)
                    {
                        c |= CIrqf;
                    }
                    _flags = 0; // reading C clears every flag and releases IRQ 8
                    UpdateIrq(now);
                    return c;
                }
            case RegD:
                return 0x80; // VRT: battery good; bit 6 must read 0 (Linux checks it)
            default:
                return _cmos[index];
        }
    }

    bool UpdateInProgress(long now)
    {
        if (!_updating || now < _baseNs)
        {
            return false;
        }
        return (now - _baseNs) % NsPerSecond >= NsPerSecond - UipWindowNs;
    }

    byte IrqSources() => (byte)(((_regB & BPie) != 0 ? CPf : 0) | ((_regB & BAie) != 0 ? CAf : 0) | ((_regB & BUie) != 0 ? CUf : 0));

    void WriteRegister(int index, byte value)
    {
        long now = _clock.NowNs;
        CatchUp(now);
        switch (index)
        {
            case RegSeconds or RegMinutes or RegHours or RegDayOfMonth or RegMonth or RegYear:
                WriteTimeField(index, value, now);
                break;
            case RegDayOfWeek:
                break; // derived from the date
            case CenturyIndex:
                WriteCentury(value, now);
                break;
            case RegA:
                WriteRegisterA(value, now);
                break;
            case RegB:
                WriteRegisterB(value, now);
                break;
            case RegC:
            case RegD:
                ReadOnlyWrites.Increment();
                break;
            default:
                _cmos[index] = value; // RAM, including the alarm registers 1, 3 and 5
                break;
        }
        UpdateIrq(now);
    }

    void WriteCentury(byte value, long now)
    {
        var t = TimeAt(now);
        SetTime(WithDate(t, Decode(value) * 100 + t.Year % 100, t.Month, t.Day), now);
    }

    void WriteTimeField(int index, byte value, long now)
    {
        var t = TimeAt(now);
        var date = t.Date;
        var changed = index switch
        {
            RegSeconds => date.AddHours(t.Hour).AddMinutes(t.Minute).AddSeconds(ClampField(Decode(value), 59)),
            RegMinutes => date.AddHours(t.Hour).AddMinutes(ClampField(Decode(value), 59)).AddSeconds(t.Second),
            RegHours => date.AddHours(ClampField(DecodeHour(value), 23)).AddMinutes(t.Minute).AddSeconds(t.Second),
            RegDayOfMonth => WithDate(t, t.Year, t.Month, Decode(value)),
            RegMonth => WithDate(t, t.Year, Decode(value), t.Day),
            _ => WithDate(t, t.Year / 100 * 100 + Decode(value) % 100, t.Month, t.Day),
        };
        SetTime(changed, now);
    }

    int ClampField(int value, int max)
    {
        if (value > max)
        {
            InvalidTimeWrites.Increment();
            Log.Once("rtc.invalid_time", "rtc", $"guest wrote an out-of-range time field ({value}); clamped to {max}");
            return max;
        }
        return value;
    }

    DateTime WithDate(DateTime t, int year, int month, int day)
    {
        int y = Math.Clamp(year, 1, 9999), m = Math.Clamp(month, 1, 12);
        int d = Math.Clamp(day, 1, DateTime.DaysInMonth(y, m));
        if (y != year || m != month || d != day)
        {
            InvalidTimeWrites.Increment();
            Log.Once("rtc.invalid_date", "rtc", $"guest wrote an invalid date ({year}-{month}-{day}); clamped");
        }
        return new DateTime(y, m, d, t.Hour, t.Minute, t.Second);
    }

    void WriteRegisterA(byte value, long now)
    {
        int divider = value & 0x70;
        bool running = divider == ADividerNormal;
        if (!running && (divider >> 4) is not (6 or 7))
        {
            UnsupportedModes.Increment();
            Log.Once("rtc.divider", "rtc", $"register A divider 0x{divider >> 4:x} (not 32.768 kHz or reset) stops the clock");
        }
        _regA = (byte)(value & 0x7F);
        if (running != _dividerRunning)
        {
            _dividerRunning = running;
            _dividerStartNs = now;
            // Leaving divider reset, the first update comes 500 ms later (datasheet "Divider stages").
            ApplyRunState(now, now - NsPerSecond / 2);
        }
    }

    void WriteRegisterB(byte value, long now)
    {
        if ((value & BDaylightSaving) != 0)
        {
            UnsupportedModes.Increment();
            Log.Once("rtc.dse", "rtc", "daylight-saving enable (register B bit 0) is not implemented");
        }
        if ((value & BSet) != 0)
        {
            value &= unchecked((byte)~BUie); // SET clears UIE (datasheet register B bit 4)
        }
        _regB = value;
        // Clearing SET resumes updates; the first one comes a second later.
        ApplyRunState(now, now);
    }

    /// <summary>The time advances while the divider runs and SET is clear; otherwise it is frozen.</summary>
    void ApplyRunState(long now, long resumeBaseNs)
    {
        bool should = _dividerRunning && (_regB & BSet) == 0;
        if (should && !_updating)
        {
            _baseNs = resumeBaseNs;
            _updating = true;
        }
        else if (!should && _updating)
        {
            _baseTime = TimeAt(now);
            _updating = false;
        }
    }

    // ---- Interrupts ----------------------------------------------------------------------

    void UpdateIrq(long now)
    {
        CatchUp(now);
        bool level = (_flags & IrqSources()) != 0 && _irqConnected;
        if (level != _irqLevel)
        {
            _irqLevel = level;
            if (level)
            {
                Interrupts.Increment();
            }
            // Driven under the RTC lock: the PIC/IOAPIC never call back into the RTC.
            _irq.SetLevel(level);
        }
        ArmTimer(now);
    }

    void ArmTimer(long now)
    {
        long next = long.MaxValue;
        // Nothing to do while IRQ 8 is already asserted: it stays so until register C is read.
        if (!_irqLevel && _irqConnected)
        {
            if ((_regB & BPie) != 0 && _dividerRunning && PeriodicShift() >= 0)
            {
                int shift = PeriodicShift();
                long edge = (ClockMath.NsToTicks(now - _dividerStartNs, 32768) >> shift) + 1;
                next = Math.Min(next, _dividerStartNs + ClockMath.TicksToNs(edge << shift, 32768));
            }
            if ((_regB & (BUie | BAie)) != 0 && _updating)
            {
                next = Math.Min(next, _baseNs + (UpdatesBy(now) + 1) * NsPerSecond);
            }
        }
        if (next != long.MaxValue)
        {
            _timer.EnsureBy(next);
        }
    }

    void OnTimer()
    {
        lock (_lock)
        {
            UpdateIrq(_clock.NowNs);
        }
    }
}
