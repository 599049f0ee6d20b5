using SharpVisor.Devices.Legacy;
using static SharpVisor.Devices.Tests.Persistence.StateRoundTrip;

namespace SharpVisor.Devices.Tests.Persistence;

public class PitStateTests
{
    static Pit8254 Build(Rig rig) => new(rig.Timers, rig.Line("irq0"));

    static void Control(Pit8254 p, uint v) => p.PortWrite(3, 1, v);
    static void Write(Pit8254 p, int ch, uint v) => p.PortWrite((ushort)ch, 1, v);

    /// <summary>
    /// Channel 0 periodic (mode 2) with a count latched and half read; channel 1 with only the LSB
    /// of its count written; channel 2 in mode 3 gated on through port 0x61 with its status latched
    /// and an unlatched read half done; the pause comes while the next IRQ 0 pulse is overdue.
    /// </summary>
    static void Drive(Pit8254 p, Rig rig)
    {
        Control(p, 0x34);
        Write(p, 0, 1000 & 0xFF);
        Write(p, 0, 1000 >> 8);
        rig.Advance(2_500_000);
        Control(p, 0x00);
        rig.Log($"latched lsb {p.PortRead(0, 1):x2}");
        Control(p, 0x70);
        Write(p, 1, 0x34);
        p.Port61.PortWrite(0, 1, 0x0D);
        Control(p, 0xB6);
        Write(p, 2, 500 & 0xFF);
        Write(p, 2, 500 >> 8);
        rig.Advance(123_456);
        Control(p, 0xE8);
        rig.Log($"ch2 live lsb {p.PortRead(2, 1):x2}");
        rig.SkipWithoutTimers(1_500_000);
    }

    static void After(Pit8254 p, Rig rig, List<string> reads)
    {
        void ReadAll(string when)
        {
            reads.Add($"{when} ch0 {p.PortRead(0, 1):x2} {p.PortRead(0, 1):x2} ch1 {p.PortRead(1, 1):x2} {p.PortRead(1, 1):x2} ch2 {p.PortRead(2, 1):x2} {p.PortRead(2, 1):x2} {p.PortRead(2, 1):x2} p61 {p.Port61.PortRead(0, 1) & ~0x10u:x2}");
        }
        ReadAll("start");
        Write(p, 1, 0x12);
        rig.Advance(3_000_000);
        ReadAll("3ms");
        Control(p, 0xE2);
        ReadAll("status");
        Control(p, 0x36);
        Write(p, 0, 0x00);
        Write(p, 0, 0x10);
        rig.Advance(5_000_000);
        ReadAll("8ms");
        p.Port61.PortWrite(0, 1, 0x00);
        rig.Advance(1_000_000);
        ReadAll("9ms");
    }

    [Fact]
    public void RestoredPitCountsLatchesAndPulsesAsTheOriginal()
        => Check<Pit8254, Pit8254.State>(Build, Drive, After);

    [Fact]
    public void RestoredPitKeepsIrq0DisconnectedAndTheBcdOneShot()
        => Check<Pit8254, Pit8254.State>(Build, (p, rig) =>
        {
            Control(p, 0x31); // channel 0, mode 0, BCD
            Write(p, 0, 0x99);
            Write(p, 0, 0x12);
            p.Irq0Connected = false;
            rig.Advance(1_000_000);
        }, (p, rig, reads) =>
        {
            rig.Advance(20_000_000);
            reads.Add($"connected {p.Irq0Connected}");
            p.Irq0Connected = true;
            Control(p, 0x30);
            Write(p, 0, 0x00);
            Write(p, 0, 0x01);
            After(p, rig, reads);
        });

    [Fact]
    public void OutOfRangeFieldsAreRefusedAndChangeNothing()
    {
        var rig = new Rig();
        var p = Build(rig);
        rig.Advance(1_000_000);
        var good = p.SaveState();
        Drive(p, rig);
        Pit8254.State WithChannel(int i, Pit8254.ChannelState c)
        {
            var channels = (Pit8254.ChannelState[])good.Channels.Clone();
            channels[i] = c;
            return good with { Channels = channels };
        }
        Refused(p, rig, good with { Version = 9 }, "version 9");
        Refused(p, rig, good with { Channels = good.Channels[..2] }, "Channels");
        Refused(p, rig, WithChannel(0, good.Channels[0] with { Mode = 6 }), "Channels[0].Mode");
        Refused(p, rig, WithChannel(1, good.Channels[1] with { Access = 0 }), "Channels[1].Access");
        Refused(p, rig, WithChannel(2, good.Channels[2] with { CountRegister = 0x10000 }), "Channels[2].CountRegister");
        Refused(p, rig, WithChannel(2, good.Channels[2] with { Bcd = true, CountRegister = 10000 }), "Channels[2].CountRegister");
        Refused(p, rig, WithChannel(0, good.Channels[0] with { LoadTick = long.MaxValue / 2 }), "Channels[0].LoadTick");
        Refused(p, rig, WithChannel(0, good.Channels[0] with { FrozenElapsed = -1 }), "Channels[0].FrozenElapsed");
        Refused(p, rig, WithChannel(1, good.Channels[1] with { LatchedCount = 0x10000 }), "Channels[1].LatchedCount");
        Refused(p, rig, WithChannel(0, good.Channels[0] with { Gate = false }), "Channels[0].Gate");
        Refused(p, rig, good with { PendingIrqEdgeTick = -2 }, "PendingIrqEdgeTick");
        Refused(p, rig, good with { LastPulseNs = rig.NowNs + 1 }, "LastPulseNs");
        Refused(p, rig, good with { IrqTimerDeadlineNs = -5 }, "IrqTimerDeadlineNs");
        Refused(p, rig, good with { Port61Upper = 0x01 }, "Port61Upper");
    }
}
