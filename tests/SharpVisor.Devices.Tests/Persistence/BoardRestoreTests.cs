using SharpVisor.Core;
using SharpVisor.Devices.Interrupts;
using SharpVisor.Devices.Legacy;
using static SharpVisor.Devices.Tests.Persistence.StateRoundTrip;

namespace SharpVisor.Devices.Tests.Persistence;

/// <summary>
/// The legacy devices and interrupt controllers wired as the machine wires them, saved together
/// and restored in the documented order (Legacy/README.md): the restored board must deliver the
/// same vectors at the same times, with no interrupt lost and none delivered twice.
/// </summary>
public class BoardRestoreTests
{
    sealed class Signals(Rig rig) : IVcpuSignals
    {
        public void NotifyInterrupt() { }
        public void RaiseNmi() => rig.Log("nmi");
        public void RaiseInit() => rig.Log("init");
        public void RaiseStartup(byte vector) => rig.Log($"sipi {vector:x2}");
    }

    sealed record BoardState(
        ApicBus.State Bus, LocalApic.State Apic, IoApic.State IoApic, Pic8259Pair.State Pic,
        Uart16550.State Uart, Pit8254.State Pit, Rtc.State Rtc, AcpiPm.State Pm, Hpet.State Hpet, I8042.State I8042);

    sealed class Board
    {
        public readonly Rig Rig;
        public readonly ApicBus Bus = new();
        public readonly LocalApic Apic;
        public readonly IoApic IoApic;
        public readonly Pic8259Pair Pic;
        public readonly Uart16550 Uart;
        public readonly Pit8254 Pit;
        public readonly Rtc Rtc;
        public readonly AcpiPm Pm;
        public readonly Hpet Hpet;
        public readonly I8042 I8042;

        public Board(Rig rig)
        {
            Rig = rig;
            LocalApic? apic = null;
            Pic = new Pic8259Pair(on => apic!.Lint0.SetLevel(on));
            apic = Apic = new LocalApic(0, Bus, new Signals(rig), rig.Timers, new TimeStampCounter(rig.Clock, 2_000_000_000), Pic);
            Bus.Attach(Apic);
            IoApic = new IoApic(new CompatibilityMsiSink(Bus), 0xF0);
            Apic.EoiListener = IoApic;
            IIrqLine Isa(int irq) => new IrqFanOut(Pic.Input(irq), IoApic.GetPin(irq == 0 ? 2 : irq));
            Uart = new Uart16550(Isa(4), b => rig.Log($"tx {b:x2}"), "com1");
            Pit = new Pit8254(rig.Timers, Isa(0));
            Rtc = new Rtc(rig.Timers, Isa(8), new DateTime(2025, 6, 1, 12, 0, 0));
            Pm = new AcpiPm(rig.Timers, IoApic.GetPin(9), () => rig.Log("power off"));
            Hpet = new Hpet(rig.Timers, Isa(0), Isa(8), gsi => IoApic.GetPin(gsi), on => { Pit.Irq0Connected = !on; Rtc.IrqConnected = !on; });
            I8042 = new I8042(Isa(1), Isa(12), () => rig.Log("reset"));
        }

        public BoardState Save() => new(Bus.SaveState(), Apic.SaveState(), IoApic.SaveState(), Pic.SaveState(),
            Uart.SaveState(), Pit.SaveState(), Rtc.SaveState(), Pm.SaveState(), Hpet.SaveState(), I8042.SaveState());

        /// <summary>The documented order: interrupt controllers from the CPU outwards, then the devices.</summary>
        public void Restore(BoardState s)
        {
            Bus.RestoreState(s.Bus);
            Apic.RestoreState(s.Apic);
            IoApic.RestoreState(s.IoApic);
            Pic.RestoreState(s.Pic);
            Uart.RestoreState(s.Uart);
            Pit.RestoreState(s.Pit);
            Rtc.RestoreState(s.Rtc);
            Pm.RestoreState(s.Pm);
            Hpet.RestoreState(s.Hpet);
            I8042.RestoreState(s.I8042);
        }

        void Rte(int pin, ulong value)
        {
            IoApic.MmioWrite(0x00, 4, (ulong)(0x10 + 2 * pin));
            IoApic.MmioWrite(0x10, 4, value);
        }

        /// <summary>
        /// A guest mid-run: the SCI (level, GSI 9) delivered and in service with its line still
        /// asserted, the UART's IRQ 4 pending in the 8259 (ExtINT through LINT0), PIT ticks and
        /// HPET timer 2 through the IOAPIC, an i8042 reply waiting, the RTC's periodic interrupt on.
        /// </summary>
        public void Boot()
        {
            Apic.MmioWrite(0xF0, 4, 0x1FF);
            Pic.MasterPort.PortWrite(0, 1, 0x11);
            Pic.MasterPort.PortWrite(1, 1, 0x30);
            Pic.MasterPort.PortWrite(1, 1, 0x04);
            Pic.MasterPort.PortWrite(1, 1, 0x01);
            Pic.MasterPort.PortWrite(1, 1, 0xEF);
            Rte(9, (1UL << 15) | 0x49);
            Rte(2, 0x32);
            Rte(1, 0x31);
            Rte(8, 0x38);
            Rte(20, 0x50);
            Uart.PortWrite(4, 1, 0x08);
            Uart.PortWrite(1, 1, 0x01);
            Pm.PortWrite(0x02, 2, 0x0100);
            Pit.PortWrite(3, 1, 0x34);
            Pit.PortWrite(0, 1, 0x9C);
            Pit.PortWrite(0, 1, 0x2E); // 11932: 10 ms
            Rtc.PortWrite(0, 1, 0x0A);
            Rtc.PortWrite(1, 1, 0x29); // 128 Hz periodic
            Rtc.PortWrite(0, 1, 0x0B);
            Rtc.PortWrite(1, 1, 0x52);
            Hpet.MmioWrite(0x140, 8, (1 << 2) | (20 << 9));
            Hpet.MmioWrite(0x148, 8, 1_500_000);
            Hpet.MmioWrite(0x010, 8, 1);
            Pm.PressPowerButton();
            Rig.Advance(25_000_000);
            Rig.Log($"ack {Apic.AcknowledgeInterrupt():x2}");
            Uart.Receive("hi"u8);
            I8042.CommandPort.PortWrite(0, 1, 0x20);
            Rig.Advance(4_000_000);
        }

        /// <summary>The guest's interrupt handlers: acknowledge, service the device, EOI.</summary>
        public void Run(List<string> log)
        {
            Apic.MmioWrite(0xB0, 4, 0); // the handler of the vector acknowledged before the pause ends
            for (int i = 0; i < 400; i++)
            {
                for (int handled = 0; Apic.HasPendingInterrupt; handled++)
                {
                    Assert.True(handled < 100, "interrupt storm");
                    byte vector = Apic.AcknowledgeInterrupt();
                    log.Add($"{Rig.NowNs}: vector {vector:x2}");
                    switch (vector)
                    {
                        case 0x34:
                            log.Add($"uart iir {Uart.PortRead(2, 1):x2}");
                            while ((Uart.PortRead(5, 1) & 1) != 0)
                            {
                                log.Add($"uart rbr {Uart.PortRead(0, 1):x2}");
                            }
                            Pic.MasterPort.PortWrite(0, 1, 0x20);
                            break;
                        case 0x31:
                            log.Add($"i8042 {I8042.DataPort.PortRead(0, 1):x2}");
                            Apic.MmioWrite(0xB0, 4, 0);
                            break;
                        case 0x49:
                            // The SCI handler clears the status; the EOI then finds the level line low.
                            log.Add($"pm1 sts {Pm.PortRead(0x00, 2):x4}");
                            Pm.PortWrite(0x00, 2, 0x0100);
                            Apic.MmioWrite(0xB0, 4, 0);
                            break;
                        case 0x38:
                            Rtc.PortWrite(0, 1, 0x0C);
                            log.Add($"rtc c {Rtc.PortRead(1, 1):x2}");
                            Apic.MmioWrite(0xB0, 4, 0);
                            break;
                        default:
                            Apic.MmioWrite(0xB0, 4, 0);
                            break;
                    }
                }
                if (i == 50)
                {
                    Pm.PressPowerButton();
                }
                if (i == 60)
                {
                    Uart.Receive("later"u8);
                    I8042.CommandPort.PortWrite(0, 1, 0xAA);
                }
                if (i == 100)
                {
                    Hpet.MmioWrite(0x010, 8, 3); // legacy replacement: HPET takes IRQ 0 and 8
                    Hpet.MmioWrite(0x100, 8, (1 << 2) | (1 << 3) | (1 << 6));
                    Hpet.MmioWrite(0x108, 8, Hpet.MmioRead(0x0F0, 8) + 700_000);
                    Hpet.MmioWrite(0x108, 8, 700_000);
                }
                Rig.Advance(250_000);
            }
        }
    }

    [Fact]
    public void RestoredBoardDeliversTheSameVectorsAtTheSameTimes()
    {
        var a = new Board(new Rig());
        a.Boot();
        var saved = ThroughJson(a.Save());

        var b = new Board(new Rig(a.Rig.NowNs));
        b.Restore(saved);
        a.Rig.Events.Clear();
        b.Rig.Events.Clear();

        var logA = new List<string>();
        var logB = new List<string>();
        a.Run(logA);
        b.Run(logB);
        Assert.Contains(logA, l => l.EndsWith("vector 49"));
        Assert.Contains(logA, l => l.EndsWith("vector 34"));
        Assert.Contains(logA, l => l.EndsWith("vector 32"));
        Assert.Contains(logA, l => l.EndsWith("vector 38"));
        Assert.Contains(logA, l => l.EndsWith("vector 31"));
        Assert.Equal(logA, logB);
        Assert.Equal(a.Rig.Events, b.Rig.Events);
    }
}
