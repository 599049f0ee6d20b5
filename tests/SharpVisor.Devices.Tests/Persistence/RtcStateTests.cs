using SharpVisor.Devices.Legacy;
using static SharpVisor.Devices.Tests.Persistence.StateRoundTrip;

namespace SharpVisor.Devices.Tests.Persistence;

public class RtcStateTests
{
    static Rtc Build(Rig rig) => new(rig.Timers, rig.Line("irq8"), new DateTime(2024, 2, 28, 23, 59, 50));

    static void Reg(Rtc r, int index, uint v)
    {
        r.PortWrite(0, 1, (uint)index);
        r.PortWrite(1, 1, v);
    }

    /// <summary>
    /// Periodic, alarm and update interrupts on, an alarm that matches every second, the time
    /// set through SET, CMOS bytes in both banks, NMIs masked, and IRQ 8 left asserted.
    /// </summary>
    static void Drive(Rtc r, Rig rig)
    {
        Reg(r, 0x40, 0x12);
        r.PortWrite(2, 1, 0x15);
        r.PortWrite(3, 1, 0xA5);
        Reg(r, 0x01, 0xC0);
        Reg(r, 0x03, 0xC0);
        Reg(r, 0x05, 0xC0);
        Reg(r, 0x0A, 0x2A);
        Reg(r, 0x0B, 0x82);
        Reg(r, 0x02, 0x30);
        Reg(r, 0x0B, 0x72);
        rig.Advance(1_234_567_891);
        r.PortWrite(0, 1, 0x0C);
        rig.Log($"C {r.PortRead(1, 1):x2}");
        rig.Advance(20_000_000);
        r.PortWrite(0, 1, 0x8C); // NMI masked, index C
    }

    static void After(Rtc r, Rig rig, List<string> reads)
    {
        for (int step = 0; step < 30; step++)
        {
            var line = new System.Text.StringBuilder($"{step} nmi{(r.NmiMasked ? 1 : 0)}");
            line.Append($" c{r.PortRead(1, 1):x2}");
            foreach (int index in (ReadOnlySpan<int>)[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0x0A, 0x0B, 0x0D, 0x32, 0x40])
            {
                r.PortWrite(0, 1, (uint)index);
                line.Append($" {r.PortRead(1, 1):x2}");
            }
            line.Append($" hi{r.PortRead(3, 1):x2}");
            reads.Add(line.ToString());
            r.PortWrite(0, 1, 0x0C);
            if (step % 3 == 0)
            {
                rig.Advance(77_000_000);
            }
            else
            {
                rig.Advance(313_000_000);
            }
            if (step == 10)
            {
                Reg(r, 0x0A, 0x2F);
                Reg(r, 0x0B, 0x52);
                r.PortWrite(0, 1, 0x0C);
            }
        }
    }

    [Fact]
    public void RestoredRtcKeepsTimeFlagsAndInterrupts()
        => Check<Rtc, Rtc.State>(Build, Drive, After);

    [Fact]
    public void RestoredRtcWithTheClockStoppedAndIrqDisconnected()
        => Check<Rtc, Rtc.State>(Build, (r, rig) =>
        {
            Reg(r, 0x0B, 0xC6); // SET, PIE, binary, 24 h
            Reg(r, 0x04, 13);
            r.IrqConnected = false;
            rig.Advance(2_000_000_000);
        }, (r, rig, reads) =>
        {
            After(r, rig, reads);
            r.IrqConnected = true;
            Reg(r, 0x0B, 0x46);
            After(r, rig, reads);
        });

    [Fact]
    public void OutOfRangeFieldsAreRefusedAndChangeNothing()
    {
        var rig = new Rig();
        var r = Build(rig);
        rig.Advance(3_000_000_000);
        var good = r.SaveState();
        Drive(r, rig);
        Refused(r, rig, good with { Version = -1 }, "version -1");
        Refused(r, rig, good with { Cmos = new byte[128] }, "Cmos");
        Refused(r, rig, good with { Index = 0x80 }, "Index");
        Refused(r, rig, good with { UpperIndex = -1 }, "UpperIndex");
        Refused(r, rig, good with { RegisterA = 0xA6 }, "RegisterA");
        Refused(r, rig, good with { RegisterA = 0x66 }, "DividerRunning");
        Refused(r, rig, good with { RegisterB = 0x92 }, "RegisterB");
        Refused(r, rig, good with { Updating = false }, "Updating");
        Refused(r, rig, good with { Flags = 0x80 }, "Flags");
        Refused(r, rig, good with { BaseTimeTicks = good.BaseTimeTicks + 1 }, "BaseTimeTicks");
        Refused(r, rig, good with { PowerOnTimeTicks = -10_000_000 }, "PowerOnTimeTicks");
        Refused(r, rig, good with { BaseNs = rig.NowNs + 1 }, "BaseNs");
        Refused(r, rig, good with { DividerStartNs = -1 }, "DividerStartNs");
        Refused(r, rig, good with { FlagsUpToNs = rig.NowNs + 1 }, "FlagsUpToNs");
        Refused(r, rig, good with { IrqAsserted = true, IrqConnected = false }, "IrqAsserted");
        Refused(r, rig, good with { TimerDeadlineNs = -2 }, "TimerDeadlineNs");
    }
}
