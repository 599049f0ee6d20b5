using SharpVisor.Devices.Legacy;
using static SharpVisor.Devices.Tests.Persistence.StateRoundTrip;

namespace SharpVisor.Devices.Tests.Persistence;

public class AcpiPmStateTests
{
    static AcpiPm Build(Rig rig) => new(rig.Timers, rig.Line("sci"), () => rig.Log("power off"));

    /// <summary>
    /// PM timer and power-button events enabled, the power button pressed and acknowledged, GPE0
    /// enables written, TMR_STS raised and cleared once; the pause comes after the PM timer's bit 23
    /// toggled again but before the overflow callback raised the SCI.
    /// </summary>
    static void Drive(AcpiPm pm, Rig rig)
    {
        pm.PortWrite(0x02, 2, 0x0101);
        pm.PressPowerButton();
        pm.PortWrite(0x00, 2, 0x0100);
        pm.PortWrite(0x28, 4, 0xDEADBEEF);
        pm.PortWrite(0x04, 2, 0x0005);
        rig.Advance(2_400_000_000);
        pm.PortWrite(0x00, 2, 0x0001); // clear TMR_STS: the next one comes at the next toggle of bit 23
        rig.Advance(2_000_000_000);
        rig.SkipWithoutTimers(400_000_000);
    }

    static void After(AcpiPm pm, Rig rig, List<string> reads)
    {
        for (int step = 0; step < 12; step++)
        {
            reads.Add($"{step} sts{pm.PortRead(0x00, 2):x4} en{pm.PortRead(0x02, 2):x4} cnt{pm.PortRead(0x04, 2):x4} tmr{pm.PortRead(0x08, 4):x6} gpe{pm.PortRead(0x28, 4):x8}");
            rig.Advance(900_000_000);
            if (step == 4)
            {
                pm.PortWrite(0x00, 2, 0x0001);
            }
        }
        pm.PortWrite(0x04, 2, 0x3C01);
    }

    [Fact]
    public void RestoredPmBlockRaisesTheSciWhenTheOriginalDoes()
        => Check<AcpiPm, AcpiPm.State>(Build, Drive, After);

    [Fact]
    public void RestoredPmBlockKeepsAnAssertedSci()
        => Check<AcpiPm, AcpiPm.State>(Build, (pm, rig) =>
        {
            pm.PortWrite(0x02, 2, 0x0100);
            rig.Advance(2_400_000_000);
            pm.PortWrite(0x00, 2, 0x0001); // TMR_STS cleared: it reads 0 until bit 23 toggles again
            rig.Advance(1_000_000_000);
            pm.PressPowerButton();
        }, After);

    [Fact]
    public void OutOfRangeFieldsAreRefusedAndChangeNothing()
    {
        var rig = new Rig();
        var pm = Build(rig);
        var fresh = pm.SaveState();
        Drive(pm, rig);
        Refused(pm, rig, fresh with { Version = 3 }, "version 3");
        Refused(pm, rig, fresh with { Pm1Status = 0x0001 }, "Pm1Status");
        Refused(pm, rig, fresh with { Pm1Enable = 0x8000 }, "Pm1Enable");
        Refused(pm, rig, fresh with { Pm1Control = 0x2000 }, "Pm1Control");
        Refused(pm, rig, fresh with { TimerEpoch = 1000 }, "TimerEpoch");
        Refused(pm, rig, fresh with { Gpe0Enable = new byte[4] }, "Gpe0Enable");
        Refused(pm, rig, fresh with { Pm1Control = 0, SciAsserted = true }, "SciAsserted");
        Refused(pm, rig, fresh with { OverflowTimerDeadlineNs = -3 }, "OverflowTimerDeadlineNs");
    }
}
