using SharpVisor.Devices.Legacy;
using static SharpVisor.Devices.Tests.Persistence.StateRoundTrip;

namespace SharpVisor.Devices.Tests.Persistence;

public class I8042StateTests
{
    static I8042 Build(Rig rig) => new(rig.Line("irq1"), rig.Line("irq12"), () => rig.Log("reset"));

    /// <summary>Replies from both ports queued (IRQ 1 asserted), the keyboard disabled, and "write command byte" waiting for its data.</summary>
    static void Drive(I8042 k, Rig rig)
    {
        k.CommandPort.PortWrite(0, 1, 0xAD);
        k.CommandPort.PortWrite(0, 1, 0x20);
        k.CommandPort.PortWrite(0, 1, 0xD4);
        k.DataPort.PortWrite(0, 1, 0xF2);
        k.CommandPort.PortWrite(0, 1, 0xAA);
        k.CommandPort.PortWrite(0, 1, 0x60);
    }

    static void After(I8042 k, Rig rig, List<string> reads)
    {
        void Drain(string when)
        {
            for (int i = 0; i < 5; i++)
            {
                reads.Add($"{when} st{k.CommandPort.PortRead(0, 1):x2} d{k.DataPort.PortRead(0, 1):x2}");
            }
        }
        Drain("start");
        k.DataPort.PortWrite(0, 1, 0x47);
        k.CommandPort.PortWrite(0, 1, 0x20);
        k.CommandPort.PortWrite(0, 1, 0xD3);
        k.DataPort.PortWrite(0, 1, 0x99);
        k.CommandPort.PortWrite(0, 1, 0xD0);
        Drain("ctr");
        k.CommandPort.PortWrite(0, 1, 0xD1);
        k.DataPort.PortWrite(0, 1, 0x00);
        k.CommandPort.PortWrite(0, 1, 0xFE);
        Drain("end");
    }

    [Fact]
    public void RestoredControllerRepliesAsTheOriginal()
        => Check<I8042, I8042.State>(Build, Drive, After);

    [Fact]
    public void OutOfRangeFieldsAreRefusedAndChangeNothing()
    {
        var rig = new Rig();
        var k = Build(rig);
        var fresh = k.SaveState();
        Drive(k, rig);
        Refused(k, rig, fresh with { Version = 2 }, "version 2");
        Refused(k, rig, fresh with { OutputPort = 0x02 }, "OutputPort");
        Refused(k, rig, fresh with { PendingCommand = 0x20 }, "PendingCommand");
        Refused(k, rig, fresh with { OutputQueue = new byte[17], OutputQueueFlags = new byte[17] }, "OutputQueue");
        Refused(k, rig, fresh with { OutputQueue = new byte[2], OutputQueueFlags = new byte[1] }, "OutputQueueFlags");
        Refused(k, rig, fresh with { OutputQueue = new byte[1], OutputQueueFlags = [0x01] }, "OutputQueueFlags");
    }
}
