using SharpVisor.Devices.Legacy;
using static SharpVisor.Devices.Tests.Persistence.StateRoundTrip;

namespace SharpVisor.Devices.Tests.Persistence;

public class PicStateTests
{
    static Pic8259Pair Build(Rig rig) => new(on => rig.Log($"int={(on ? 1 : 0)}"));

    static void Master(Pic8259Pair p, int port, uint v) => p.MasterPort.PortWrite((ushort)port, 1, v);
    static void Slave(Pic8259Pair p, int port, uint v) => p.SlavePort.PortWrite((ushort)port, 1, v);

    /// <summary>Linux-style initialisation, IRQ 10 level-triggered and asserted, one interrupt in service, edges pending, ISR selected for reading and a poll waiting on the slave.</summary>
    static void Drive(Pic8259Pair p, Rig rig)
    {
        Master(p, 0, 0x11);
        Master(p, 1, 0x20);
        Master(p, 1, 0x04);
        Master(p, 1, 0x11); // special fully nested
        Slave(p, 0, 0x11);
        Slave(p, 1, 0x28);
        Slave(p, 1, 0x02);
        Slave(p, 1, 0x03);  // auto-EOI
        Slave(p, 0, 0x80);  // rotate on auto-EOI
        p.ElcrPort.PortWrite(1, 1, 0x04);
        Master(p, 1, 0xB8);
        p.Input(1).SetLevel(true);
        rig.Log($"ack {p.Acknowledge():x2}");
        p.Input(1).SetLevel(false);
        p.Input(6).SetLevel(true);
        p.Input(0).SetLevel(true);
        p.Input(0).SetLevel(false);
        p.Input(10).SetLevel(true);
        p.Input(11).SetLevel(true);
        p.Input(12).SetLevel(true);
        rig.Log($"ack {p.Acknowledge():x2}"); // slave IRQ 10 through the cascade: master IR2 in service
        Master(p, 0, 0x68); // OCW3: special mask mode
        Master(p, 0, 0x0B); // OCW3: read ISR
        Master(p, 0, 0xC4); // OCW2: IR4 lowest priority
        Slave(p, 0, 0x0C);  // OCW3: poll
    }

    static void After(Pic8259Pair p, Rig rig, List<string> reads)
    {
        void Read(string what) => reads.Add($"{what} m{p.MasterPort.PortRead(0, 1):x2}/{p.MasterPort.PortRead(1, 1):x2} s{p.SlavePort.PortRead(0, 1):x2}/{p.SlavePort.PortRead(1, 1):x2} e{p.ElcrPort.PortRead(0, 2):x4} int{(p.HasInterrupt ? 1 : 0)}");
        Read("start");
        Master(p, 0, 0x0A);
        Slave(p, 0, 0x0A);
        Read("irr");
        p.Input(13).SetLevel(true);
        reads.Add($"cascade nested int{(p.HasInterrupt ? 1 : 0)}");
        Master(p, 1, 0x04 | 0xB8);
        reads.Add($"ir2 masked int{(p.HasInterrupt ? 1 : 0)}");
        Master(p, 1, 0xB8);
        for (int i = 0; i < 6; i++)
        {
            if (p.HasInterrupt)
            {
                reads.Add($"ack {p.Acknowledge():x2}");
            }
            Master(p, 0, 0x0B);
            Slave(p, 0, 0x0B);
            Read($"isr{i}");
            Slave(p, 0, 0x20);
            Master(p, 0, 0x20);
            if (i == 1)
            {
                p.Input(10).SetLevel(false);
                p.Input(3).SetLevel(true);
                Master(p, 1, 0x00);
            }
        }
        Read("end");
    }

    [Fact]
    public void RestoredPicReadsAndAcknowledgesAsTheOriginal()
        => Check<Pic8259Pair, Pic8259Pair.State>(Build, Drive, After);

    [Fact]
    public void RestoredPicMidInitialisationTakesTheRemainingWords()
        => Check<Pic8259Pair, Pic8259Pair.State>(Build, (p, rig) =>
        {
            Master(p, 0, 0x11);
            Master(p, 1, 0x30); // ICW2 taken; ICW3 and ICW4 still to come
            p.Input(5).SetLevel(true);
        }, (p, rig, reads) =>
        {
            Master(p, 1, 0x04);
            Master(p, 1, 0x03); // ICW4 with auto-EOI
            Master(p, 1, 0x00);
            reads.Add($"ack {p.Acknowledge():x2} isr-after-aeoi {p.MasterPort.PortRead(0, 1):x2}");
            After(p, rig, reads);
        });

    [Fact]
    public void RestoredPicKeepsRotationAndSpecialMaskMode()
        => Check<Pic8259Pair, Pic8259Pair.State>(Build, (p, rig) =>
        {
            Master(p, 0, 0x11);
            Master(p, 1, 0x20);
            Master(p, 1, 0x04);
            Master(p, 1, 0x01);
            Slave(p, 0, 0x11);
            Slave(p, 1, 0x28);
            Slave(p, 1, 0x02);
            Slave(p, 1, 0x03); // auto-EOI
            Slave(p, 0, 0x80); // rotate on auto-EOI
            Master(p, 0, 0x68); // special mask mode
        }, (p, rig, reads) =>
        {
            void Ack()
            {
                reads.Add($"int{(p.HasInterrupt ? 1 : 0)} ack {p.Acknowledge():x2}");
                Master(p, 0, 0x20);
            }
            foreach (int irq in (ReadOnlySpan<int>)[8, 9, 10])
            {
                p.Input(irq).SetLevel(true);
                p.Input(irq).SetLevel(false);
            }
            Ack();
            p.Input(8).SetLevel(true);
            Ack();
            Ack();
            Ack();
            // Special mask mode: IR1 in service and masked no longer blocks IR3.
            p.Input(1).SetLevel(true);
            reads.Add($"ack {p.Acknowledge():x2}");
            Master(p, 1, 0x02);
            p.Input(3).SetLevel(true);
            reads.Add($"int with IR1 in service and masked: {(p.HasInterrupt ? 1 : 0)}");
        });

    [Fact]
    public void OutOfRangeFieldsAreRefusedAndChangeNothing()
    {
        var rig = new Rig();
        var p = Build(rig);
        var fresh = p.SaveState();
        Drive(p, rig);
        Refused(p, rig, fresh with { Version = 0 }, "version 0");
        Refused(p, rig, fresh with { Master = fresh.Master with { Elcr = 0x01 } }, "Master.Elcr");
        Refused(p, rig, fresh with { Slave = fresh.Slave with { PriorityAdd = 8 } }, "Slave.PriorityAdd");
        Refused(p, rig, fresh with { Master = fresh.Master with { VectorBase = 0x21 } }, "Master.VectorBase");
        Refused(p, rig, fresh with { Slave = fresh.Slave with { InitStep = 1 } }, "Slave.InitStep");
        Refused(p, rig, fresh with { Master = fresh.Master with { Lines = 0x04 } }, "Master.Lines");
        Refused(p, rig, fresh with { Slave = null! }, "Slave");
    }
}
