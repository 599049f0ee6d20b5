using SharpVisor.Core;
using SharpVisor.Devices.Legacy;

namespace SharpVisor.Devices.Tests.Legacy;

/// <summary>The devices wired together the way the machine does it, driven like Linux drives them.</summary>
public class LegacyWiringTests
{
    sealed class FanOut(params IIrqLine[] lines) : IIrqLine
    {
        public void SetLevel(bool asserted)
        {
            foreach (var l in lines)
            {
                l.SetLevel(asserted);
            }
        }
    }

    readonly VirtualTime _time = new();
    readonly Pic8259Pair _pic = new();
    readonly RecordingIrqLine _ioApicPin2;
    readonly Pit8254 _pit;
    readonly Rtc _rtc;
    readonly Hpet _hpet;

    public LegacyWiringTests()
    {
        _ioApicPin2 = new RecordingIrqLine(_time.Clock);
        var irq0 = new FanOut(_pic.Input(0), _ioApicPin2);
        _pit = new Pit8254(_time.Timers, irq0);
        _rtc = new Rtc(_time.Timers, _pic.Input(8), new DateTime(2025, 1, 1));
        _hpet = new Hpet(_time.Timers, irq0, _pic.Input(8), _ => null,
            on => { _pit.Irq0Connected = !on; _rtc.IrqConnected = !on; });
        // Linux init_8259A with everything unmasked.
        foreach (var (port, values) in new[] { (_pic.MasterPort, new uint[] { 0x30, 4, 1 }), (_pic.SlavePort, new uint[] { 0x38, 2, 1 }) })
        {
            port.PortWrite(0, 1, 0x11);
            foreach (uint v in values)
            {
                port.PortWrite(1, 1, v);
            }
            port.PortWrite(1, 1, 0);
        }
    }

    [Fact]
    public void PitTickArrivesAsVector0x30ThroughThePic()
    {
        _pit.PortWrite(3, 1, 0x34);
        _pit.PortWrite(0, 1, 0x9D);
        _pit.PortWrite(0, 1, 0x12); // 4765
        _time.Advance(5_000_000);
        Assert.True(_pic.HasInterrupt);
        Assert.Equal(0x30, _pic.Acknowledge());
        Assert.Equal(1, _ioApicPin2.RisingEdges);
    }

    [Fact]
    public void RtcPeriodicInterruptArrivesAsVector0x38()
    {
        _rtc.PortWrite(0, 1, 0x0B);
        _rtc.PortWrite(1, 1, 0x42);
        _time.Advance(2_000_000);
        // The PIT's BIOS-style mode 3 is still running: take IRQ 0 out of the way first.
        _pic.MasterPort.PortWrite(1, 1, 0x01);
        Assert.Equal(0x38, _pic.Acknowledge());
    }

    [Fact]
    public void HpetLegacyReplacementTakesIrq0AwayFromThePit()
    {
        _hpet.MmioWrite(0x010, 4, 3); // ENABLE | LEG_RT
        Assert.False(_pit.Irq0Connected);
        Assert.False(_rtc.IrqConnected);
        _hpet.MmioWrite(0x100, 4, (1 << 2) | (1 << 8)); // timer 0 enabled, 32-bit, one-shot
        _hpet.MmioWrite(0x108, 4, 1_000_000);            // 10 ms
        _time.Advance(100_000_000);
        Assert.Equal(1, _ioApicPin2.RisingEdges); // only the HPET's edge; the PIT's mode 3 is cut off
        _hpet.MmioWrite(0x010, 4, 1);
        Assert.True(_pit.Irq0Connected);
        _time.Advance(100_000_000);
        Assert.True(_ioApicPin2.RisingEdges > 1);
    }
}
