using SharpVisor.Devices.Legacy;

namespace SharpVisor.Devices.Tests.Legacy;

public class Pic8259PairTests
{
    readonly List<bool> _intChanges = [];
    readonly Pic8259Pair _pic;

    public Pic8259PairTests()
    {
        _pic = new Pic8259Pair(level => _intChanges.Add(level));
    }

    void MasterCmd(uint v) => _pic.MasterPort.PortWrite(0, 1, v);
    void MasterData(uint v) => _pic.MasterPort.PortWrite(1, 1, v);
    void SlaveCmd(uint v) => _pic.SlavePort.PortWrite(0, 1, v);
    void SlaveData(uint v) => _pic.SlavePort.PortWrite(1, 1, v);
    uint MasterIsr() { MasterCmd(0x0B); uint v = _pic.MasterPort.PortRead(0, 1); MasterCmd(0x0A); return v; }
    uint SlaveIsr() { SlaveCmd(0x0B); uint v = _pic.SlavePort.PortRead(0, 1); SlaveCmd(0x0A); return v; }

    /// <summary>arch/x86/kernel/i8259.c init_8259A(auto_eoi): vectors 0x30/0x38, slave on IR2.</summary>
    void LinuxInit(bool autoEoi = false)
    {
        MasterData(0xFF);
        SlaveData(0xFF);
        MasterCmd(0x11);
        MasterData(0x30);
        MasterData(1 << 2);
        MasterData(autoEoi ? 0x03u : 0x01u);
        SlaveCmd(0x11);
        SlaveData(0x38);
        SlaveData(2);
        SlaveData(0x01);
        MasterData(0xFB); // everything masked except the cascade
        SlaveData(0xFF);
    }

    void Unmask(int irq)
    {
        if (irq < 8)
        {
            MasterData(_pic.MasterPort.PortRead(1, 1) & ~(1u << irq));
        }
        else
        {
            SlaveData(_pic.SlavePort.PortRead(1, 1) & ~(1u << (irq - 8)));
        }
    }

    [Fact]
    public void LinuxProbeReadsBackTheMask()
    {
        // probe_8259A: outb(0xff, slave IMR); outb(0xa5, master IMR); inb must give 0xa5.
        SlaveData(0xFF);
        MasterData(0xA5);
        Assert.Equal(0xA5u, _pic.MasterPort.PortRead(1, 1));
    }

    [Fact]
    public void MasterIrqDeliversVectorAndNeedsEoi()
    {
        LinuxInit();
        Unmask(4);
        _pic.Input(4).SetLevel(true);
        Assert.True(_pic.HasInterrupt);
        Assert.Equal([true], _intChanges);
        Assert.Equal(0x34, _pic.Acknowledge());
        Assert.False(_pic.HasInterrupt);
        Assert.Equal(0x10u, MasterIsr());
        // mask_and_ack_8259A: specific EOI 0x60 + irq.
        MasterCmd(0x60 + 4);
        Assert.Equal(0u, MasterIsr());
        // Edge-triggered: no new request until a new rising edge.
        Assert.False(_pic.HasInterrupt);
        _pic.Input(4).SetLevel(false);
        _pic.Input(4).SetLevel(true);
        Assert.True(_pic.HasInterrupt);
    }

    [Fact]
    public void SlaveIrqCascadesThroughIr2()
    {
        LinuxInit();
        Unmask(12);
        _pic.Input(12).SetLevel(true);
        Assert.True(_pic.HasInterrupt);
        Assert.Equal(0x3C, _pic.Acknowledge());
        Assert.Equal(0x04u, MasterIsr());
        Assert.Equal(0x10u, SlaveIsr());
        SlaveCmd(0x60 + 4);
        MasterCmd(0x60 + 2);
        Assert.Equal(0u, MasterIsr());
        Assert.Equal(0u, SlaveIsr());
        Assert.False(_pic.HasInterrupt);
    }

    [Fact]
    public void MaskedRequestWaitsInIrr()
    {
        LinuxInit();
        _pic.Input(3).SetLevel(true);
        Assert.False(_pic.HasInterrupt);
        Assert.Equal(0x08u, _pic.MasterPort.PortRead(0, 1) & 0x08); // IRR (OCW3 default read)
        Unmask(3);
        Assert.True(_pic.HasInterrupt);
        Assert.Equal(0x33, _pic.Acknowledge());
    }

    [Fact]
    public void HigherPriorityPreemptsLowerButNotTheOtherWayRound()
    {
        LinuxInit();
        Unmask(1);
        Unmask(5);
        _pic.Input(5).SetLevel(true);
        Assert.Equal(0x35, _pic.Acknowledge());
        _pic.Input(1).SetLevel(true);
        Assert.True(_pic.HasInterrupt); // IRQ1 outranks the IRQ5 in service
        Assert.Equal(0x31, _pic.Acknowledge());
        _pic.Input(5).SetLevel(false);
        _pic.Input(5).SetLevel(true);
        Assert.False(_pic.HasInterrupt); // IRQ5 waits for both EOIs
        MasterCmd(0x20); // non-specific EOI ends IRQ1 (highest in service)
        Assert.Equal(0x20u, MasterIsr());
        Assert.False(_pic.HasInterrupt);
        MasterCmd(0x20);
        Assert.True(_pic.HasInterrupt);
    }

    [Fact]
    public void AcknowledgeWithNothingPendingIsSpuriousIrq7()
    {
        LinuxInit();
        Assert.Equal(0x37, _pic.Acknowledge());
        Assert.Equal(0u, MasterIsr()); // Linux's i8259A_irq_real sees no ISR bit: spurious
        Assert.Equal(1, _pic.SpuriousAcknowledges.Value);
    }

    [Fact]
    public void LevelTriggeredInputViaElcrStaysPendingWhileHigh()
    {
        LinuxInit();
        _pic.ElcrPort.PortWrite(1, 1, 1 << 3); // IRQ 11 level-triggered
        Unmask(11);
        _pic.Input(11).SetLevel(true);
        Assert.Equal(0x3B, _pic.Acknowledge());
        SlaveCmd(0x63);
        MasterCmd(0x62);
        Assert.True(_pic.HasInterrupt); // still asserted: interrupts again
        _pic.Input(11).SetLevel(false);
        Assert.False(_pic.HasInterrupt); // and a level request vanishes with the line
    }

    [Fact]
    public void EdgeRequestSurvivesTheLineDropping()
    {
        LinuxInit();
        Unmask(6);
        _pic.Input(6).SetLevel(true);
        _pic.Input(6).SetLevel(false);
        Assert.True(_pic.HasInterrupt);
        Assert.Equal(0x36, _pic.Acknowledge());
    }

    [Fact]
    public void ElcrReservedBitsReadZero()
    {
        _pic.ElcrPort.PortWrite(0, 1, 0xFF);
        _pic.ElcrPort.PortWrite(1, 1, 0xFF);
        Assert.Equal(0xF8u, _pic.ElcrPort.PortRead(0, 1));
        Assert.Equal(0xDEu, _pic.ElcrPort.PortRead(1, 1));
        Assert.Equal(0xDEF8u, _pic.ElcrPort.PortRead(0, 2));
        Assert.Equal(2, _pic.ReservedElcrWrites.Value);
    }

    [Fact]
    public void AutoEoiSetsNoIsrBit()
    {
        LinuxInit(autoEoi: true);
        Unmask(0);
        _pic.Input(0).SetLevel(true);
        Assert.Equal(0x30, _pic.Acknowledge());
        Assert.Equal(0u, MasterIsr());
    }

    [Fact]
    public void PollCommandAcknowledges()
    {
        LinuxInit();
        Unmask(7);
        _pic.Input(7).SetLevel(true);
        MasterCmd(0x0C);
        Assert.Equal(0x87u, _pic.MasterPort.PortRead(0, 1));
        Assert.Equal(0x80u, MasterIsr());
        MasterCmd(0x0C);
        Assert.Equal(0u, _pic.MasterPort.PortRead(0, 1));
    }

    [Fact]
    public void SpecialMaskModeLetsLowerPrioritiesIn()
    {
        LinuxInit();
        Unmask(3);
        Unmask(5);
        _pic.Input(3).SetLevel(true);
        Assert.Equal(0x33, _pic.Acknowledge());
        MasterData(_pic.MasterPort.PortRead(1, 1) | 0x08); // mask the in-service IRQ3
        _pic.Input(5).SetLevel(true);
        Assert.False(_pic.HasInterrupt);
        MasterCmd(0x68); // OCW3: set special mask mode
        Assert.True(_pic.HasInterrupt);
        Assert.Equal(0x35, _pic.Acknowledge());
    }

    [Fact]
    public void RotateOnNonSpecificEoiMakesTheServicedIrqLowest()
    {
        LinuxInit();
        Unmask(0);
        Unmask(1);
        _pic.Input(0).SetLevel(true);
        Assert.Equal(0x30, _pic.Acknowledge());
        MasterCmd(0xA0); // rotate on non-specific EOI
        _pic.Input(0).SetLevel(false);
        _pic.Input(0).SetLevel(true);
        _pic.Input(1).SetLevel(true);
        Assert.Equal(0x31, _pic.Acknowledge()); // IRQ0 is now the lowest priority
    }

    [Fact]
    public void IcwSequenceResetsMaskAndIsr()
    {
        LinuxInit();
        Unmask(4);
        _pic.Input(4).SetLevel(true);
        _pic.Acknowledge();
        MasterCmd(0x11);
        Assert.Equal(0u, _pic.MasterPort.PortRead(1, 1));
        Assert.Equal(0u, MasterIsr());
    }

    [Fact]
    public void CascadeInputIsNotAnIrq()
    {
        LinuxInit();
        MasterData(0);
        _pic.Input(2).SetLevel(true);
        Assert.False(_pic.HasInterrupt);
        Assert.Equal(1, _pic.CascadeInputWrites.Value);
    }

    [Fact]
    public void IntChangedReportsBothEdges()
    {
        LinuxInit();
        Unmask(1);
        _pic.Input(1).SetLevel(true);
        _pic.Acknowledge();
        Assert.Equal([true, false], _intChanges);
    }

    [Fact]
    public async Task ConcurrentRaisesAndAcknowledgesKeepTheInvariant()
    {
        LinuxInit();
        MasterData(0);
        SlaveData(0);
        var raisers = Enumerable.Range(0, 2).Select(t => Task.Run(() =>
        {
            for (int i = 0; i < 2000; i++)
            {
                int irq = t == 0 ? 4 : 10;
                _pic.Input(irq).SetLevel(true);
                _pic.Input(irq).SetLevel(false);
            }
        })).ToArray();
        int acks = 0;
        while (!raisers.All(r => r.IsCompleted) || _pic.HasInterrupt)
        {
            if (_pic.HasInterrupt)
            {
                byte v = _pic.Acknowledge();
                if (v >= 0x38)
                {
                    SlaveCmd(0x20);
                }
                MasterCmd(0x20);
                acks++;
            }
        }
        await Task.WhenAll(raisers);
        Assert.True(acks > 0);
        Assert.Equal(0u, MasterIsr());
        Assert.Equal(0u, SlaveIsr());
    }
}
