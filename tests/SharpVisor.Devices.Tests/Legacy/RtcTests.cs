using SharpVisor.Devices.Legacy;

namespace SharpVisor.Devices.Tests.Legacy;

public class RtcTests
{
    const int Sec = 0, SecAlarm = 1, Min = 2, MinAlarm = 3, Hour = 4, HourAlarm = 5, Dow = 6, Day = 7, Month = 8, Year = 9;
    const int A = 0x0A, B = 0x0B, C = 0x0C, D = 0x0D;
    const long Second = 1_000_000_000;

    readonly VirtualTime _time = new();
    readonly RecordingIrqLine _irq8;
    readonly Rtc _rtc;

    public RtcTests()
    {
        _irq8 = new RecordingIrqLine(_time.Clock);
        // A leap day, two seconds before midnight.
        _rtc = new Rtc(_time.Timers, _irq8, new DateTime(2024, 2, 29, 23, 59, 58));
    }

    uint Read(int index)
    {
        _rtc.PortWrite(0, 1, (uint)index);
        return _rtc.PortRead(1, 1);
    }

    void Write(int index, uint value)
    {
        _rtc.PortWrite(0, 1, (uint)index);
        _rtc.PortWrite(1, 1, value);
    }

    [Fact]
    public void PowerOnTimeReadsInBcd24Hour()
    {
        Assert.Equal(0x58u, Read(Sec));
        Assert.Equal(0x59u, Read(Min));
        Assert.Equal(0x23u, Read(Hour));
        Assert.Equal(0x05u, Read(Dow)); // Thursday (Sunday = 1)
        Assert.Equal(0x29u, Read(Day));
        Assert.Equal(0x02u, Read(Month));
        Assert.Equal(0x24u, Read(Year));
        Assert.Equal(0x20u, Read(Rtc.CenturyIndex));
        Assert.Equal(0x02u, Read(B) & 0x06);
        Assert.Equal(0x80u, Read(D)); // VRT set, bit 6 clear (mc146818_get_time checks it)
    }

    [Fact]
    public void TimeAdvancesWithTheVirtualClock()
    {
        _time.RunUntil(2 * Second);
        Assert.Equal(0x00u, Read(Sec));
        Assert.Equal(0x00u, Read(Min));
        Assert.Equal(0x00u, Read(Hour));
        Assert.Equal(0x01u, Read(Day));
        Assert.Equal(0x03u, Read(Month));
        _time.RunUntil(2 * Second + 999_999_999);
        Assert.Equal(0x00u, Read(Sec));
        _time.RunUntil(3 * Second);
        Assert.Equal(0x01u, Read(Sec));
    }

    [Fact]
    public void BinaryAnd12HourModes()
    {
        Write(B, 0x06); // binary, 24 h
        Assert.Equal(58u, Read(Sec));
        Assert.Equal(23u, Read(Hour));
        Write(B, 0x00); // BCD, 12 h
        Assert.Equal(0x80u | 0x11, Read(Hour)); // 11 PM
        _time.RunUntil(2 * Second);
        Assert.Equal(0x12u, Read(Hour)); // 12 AM
    }

    [Fact]
    public void UpdateInProgressIsSetJustBeforeEachUpdate()
    {
        _time.RunUntil(Second - Rtc.UipWindowNs - 1);
        Assert.Equal(0u, Read(A) & 0x80);
        Assert.Equal(0x58u, Read(Sec));
        _time.RunUntil(Second - Rtc.UipWindowNs);
        Assert.Equal(0x80u, Read(A) & 0x80);
        _time.RunUntil(Second - 1);
        Assert.Equal(0x80u, Read(A) & 0x80);
        Assert.Equal(0x58u, Read(Sec));
        _time.RunUntil(Second);
        Assert.Equal(0u, Read(A) & 0x80);
        Assert.Equal(0x59u, Read(Sec));
    }

    [Fact]
    public void LinuxReadLoopGetsAConsistentTime()
    {
        // mc146818_get_time: read seconds, retry while UIP, re-check seconds, read the rest.
        _time.RunUntil(Second - 1_000_000); // inside the UIP window
        int retries = 0;
        uint seconds;
        while (true)
        {
            seconds = Read(Sec);
            if ((Read(A) & 0x80) != 0)
            {
                retries++;
                _time.Advance(100_000); // udelay(100)
                continue;
            }
            if (seconds == Read(Sec))
            {
                break;
            }
        }
        Assert.InRange(retries, 1, 25);
        Assert.Equal(0x59u, seconds);
    }

    [Fact]
    public void SettingTheTimeWithSetBit()
    {
        // mc146818_set_time: SET in B, divider reset in A, write fields, restore both.
        uint b = Read(B);
        Write(B, b | 0x80);
        uint a = Read(A);
        Write(A, a | 0x70);
        Write(Year, 0x30);
        Write(Month, 0x01);
        Write(Day, 0x02);
        Write(Hour, 0x03);
        Write(Min, 0x04);
        Write(Sec, 0x05);
        _time.Advance(5 * Second);
        Assert.Equal(0x05u, Read(Sec)); // frozen while SET
        Write(B, b);
        Write(A, a);
        _time.Advance(Second / 2);
        Assert.Equal(0x06u, Read(Sec)); // divider left reset: first update after 500 ms
        Assert.Equal(0x30u, Read(Year));
        Assert.Equal(0x03u, Read(Hour));
    }

    [Fact]
    public void SetBitClearsUie()
    {
        Write(B, 0x12);
        Write(B, 0x92);
        Assert.Equal(0x82u, Read(B));
    }

    [Fact]
    public void PeriodicInterruptAtTheSelectedRate()
    {
        Write(A, 0x26); // 1024 Hz
        Write(B, 0x42); // PIE
        _time.RunUntil(976_562);
        Assert.False(_irq8.Level);
        _time.RunUntil(976_563);
        Assert.True(_irq8.Level);
        _time.Advance(10_000_000);
        Assert.Equal(1, _irq8.RisingEdges); // held until C is read
        Assert.Equal(0xC0u, Read(C) & 0xC0);
        Assert.False(_irq8.Level);
        Assert.Equal(0u, Read(C) & 0x40);
        _time.Advance(976_563);
        Assert.True(_irq8.Level);
    }

    [Fact]
    public void UpdateEndedInterruptEverySecond()
    {
        Write(B, 0x12);
        _time.RunUntil(Second - 1);
        Assert.False(_irq8.Level);
        _time.RunUntil(Second);
        Assert.True(_irq8.Level);
        Assert.Equal(0x90u, Read(C) & 0xB0); // PF may be set too: it runs whatever PIE says
        _time.RunUntil(2 * Second);
        Assert.True(_irq8.Level);
    }

    [Fact]
    public void AlarmFiresWhenTheTimeMatches()
    {
        // 2024-03-01 00:00:01 is three updates away.
        Write(HourAlarm, 0x00);
        Write(MinAlarm, 0x00);
        Write(SecAlarm, 0x01);
        Write(B, 0x22); // AIE
        _time.RunUntil(2 * Second);
        Assert.False(_irq8.Level);
        _time.RunUntil(3 * Second);
        Assert.True(_irq8.Level);
        Assert.Equal(0xA0u, Read(C) & 0xA0);
    }

    [Fact]
    public void ZeroedAlarmMatchesMidnightEvenWithoutAie()
    {
        _time.Advance(3 * Second); // crosses 00:00:00, which the all-zero alarm bytes describe
        Assert.Equal(0x20u, Read(C) & 0xA0); // AF without IRQF
        Assert.False(_irq8.Level);
    }

    [Fact]
    public void AlarmDontCareBytesMatchAnyValue()
    {
        Write(HourAlarm, 0xC0);
        Write(MinAlarm, 0xFF);
        Write(SecAlarm, 0x30);
        Write(B, 0x22);
        _time.RunUntil(31 * Second);
        Assert.False(_irq8.Level);
        _time.RunUntil(32 * Second); // 00:00:30
        Assert.True(_irq8.Level);
    }

    [Fact]
    public void FlagsAreSetWithoutEnablesButDoNotInterrupt()
    {
        Write(HourAlarm, 0x12); // an alarm that does not match
        _time.Advance(3 * Second);
        uint c = Read(C);
        Assert.Equal(0x50u, c); // PF and UF, no AF, no IRQF
        Assert.Equal(0, _irq8.RisingEdges);
        Assert.Equal(0u, Read(C));
    }

    [Fact]
    public void CmosRamAndUpperBank()
    {
        Write(0x40, 0xAB);
        Assert.Equal(0xABu, Read(0x40));
        _rtc.PortWrite(2, 1, 0x10);
        _rtc.PortWrite(3, 1, 0xCD);
        _rtc.PortWrite(2, 1, 0x10);
        Assert.Equal(0xCDu, _rtc.PortRead(3, 1));
        Assert.Equal(0xABu, Read(0x40)); // banks are distinct
    }

    [Fact]
    public void MemorySizeBytesLikeQemu()
    {
        _rtc.SetMemorySize(2UL << 30, 1UL << 30);
        Assert.Equal(0x00u, Read(0x34));
        Assert.Equal(0x7Fu, Read(0x35)); // (2 GiB - 16 MiB) / 64 KiB = 0x7F00
        Assert.Equal(0x00u, Read(0x5B));
        Assert.Equal(0x40u, Read(0x5C)); // 1 GiB / 64 KiB = 0x4000
        Assert.Equal(0x00u, Read(0x5D));
        Assert.Equal(0xFFu, Read(0x30));
        Assert.Equal(0xFFu, Read(0x31));
        Assert.Equal(0x80u, Read(0x15));
        Assert.Equal(0x02u, Read(0x16));
    }

    [Fact]
    public void CenturyWriteChangesTheYear()
    {
        Write(B, 0x82);
        Write(Rtc.CenturyIndex, 0x21);
        Assert.Equal(0x21u, Read(Rtc.CenturyIndex));
        Assert.Equal(0x24u, Read(Year));
    }

    [Fact]
    public void NmiMaskBitIsKeptApartFromTheIndex()
    {
        _rtc.PortWrite(0, 1, 0x80 | Sec);
        Assert.True(_rtc.NmiMasked);
        Assert.Equal(0x58u, _rtc.PortRead(1, 1));
        _rtc.PortWrite(0, 1, Sec);
        Assert.False(_rtc.NmiMasked);
    }

    [Fact]
    public void InvalidDateIsClampedAndCounted()
    {
        Write(B, 0x82);
        Write(Day, 0x31); // February 31st
        Assert.Equal(0x29u, Read(Day));
        Assert.Equal(1, _rtc.InvalidTimeWrites.Value);
    }

    [Fact]
    public void ReadOnlyRegistersIgnoreWrites()
    {
        Write(C, 0xFF);
        Write(D, 0x00);
        Assert.Equal(0x80u, Read(D));
        Assert.Equal(2, _rtc.ReadOnlyWrites.Value);
    }
}
