using SharpVisor.Core;
using SharpVisor.Devices.Interrupts;
using static SharpVisor.Devices.Tests.Interrupts.ApicTestBoard;

namespace SharpVisor.Devices.Tests.Interrupts;

public class IpiAndBusTests
{
    // ICR low fields (SDM Vol. 3A figure 11-12).
    const uint DmInit = 5 << 8;
    const uint DmStartup = 6 << 8;
    const uint DmNmi = 4 << 8;
    const uint DmLowest = 1 << 8;
    const uint Logical = 1 << 11;
    const uint LevelAssert = 1 << 14;
    const uint LevelTrigger = 1 << 15;
    const uint ShorthandSelf = 1 << 18;
    const uint ShorthandAll = 2 << 18;
    const uint ShorthandOthers = 3 << 18;

    [Fact]
    public void InitSipiSipiReachesTheTargetVcpuInXApicMode()
    {
        // Linux smpboot.c wakeup_secondary_cpu_via_init: INIT assert, INIT de-assert, then two SIPIs.
        var board = new ApicTestBoard(4);
        var bsp = board.Apics[0];
        SoftwareEnable(bsp);
        SendIpi(bsp, 2, DmInit | LevelAssert | LevelTrigger);
        SendIpi(bsp, 2, DmInit | LevelTrigger); // de-assert: ignored
        SendIpi(bsp, 2, DmStartup | 0x9A);
        SendIpi(bsp, 2, DmStartup | 0x9A);

        Assert.Equal(["INIT", "SIPI 9a", "SIPI 9a"], board.Signals[2].Events);
        Assert.Empty(board.Signals[1].Events);
        Assert.Empty(board.Signals[3].Events);
        Assert.Empty(board.Signals[0].Events);
        Assert.Equal(0u, Read(bsp, ApicRegs.IcrLow) & (1 << 12)); // delivery status idle: Linux polls it
    }

    [Fact]
    public void InitSipiSipiReachesTheTargetVcpuInX2ApicMode()
    {
        var board = new ApicTestBoard(10);
        var bsp = board.Apics[0];
        EnableX2Apic(bsp);
        Assert.True(bsp.TryWriteMsr(0x830, (9UL << 32) | DmInit | LevelAssert | LevelTrigger));
        Assert.True(bsp.TryWriteMsr(0x830, (9UL << 32) | DmInit | LevelTrigger));
        Assert.True(bsp.TryWriteMsr(0x830, (9UL << 32) | DmStartup | 0x10));
        Assert.Equal(["INIT", "SIPI 10"], board.Signals[9].Events);
        Assert.True(bsp.TryReadMsr(0x830, out ulong icr));
        Assert.Equal((9UL << 32) | DmStartup | 0x10, icr);
    }

    [Fact]
    public void ShootdownAcrossNineX2ApicCpusWithAcknowledgeAndEoi()
    {
        // A TLB-shootdown-like round: CPU 4 sends CALL_FUNCTION (0xFB) to all others, each one
        // takes it, EOIs, and answers with a physical IPI back (Linux x2apic_phys style).
        var board = new ApicTestBoard(9);
        foreach (var a in board.Apics)
        {
            EnableX2Apic(a);
        }
        Assert.True(board.Apics[4].TryWriteMsr(0x830, ShorthandOthers | 0xFB));
        Assert.False(board.Apics[4].HasPendingInterrupt);
        for (int i = 0; i < 9; i++)
        {
            var apic = board.Apics[i];
            if (i == 4)
            {
                continue;
            }
            Assert.True(apic.HasPendingInterrupt);
            Assert.Equal(0xFB, apic.AcknowledgeInterrupt());
            Assert.True(apic.TryWriteMsr(0x80B, 0));
            Assert.True(apic.TryWriteMsr(0x830, (4UL << 32) | (0xF0u + (uint)i)));
        }
        var sender = board.Apics[4];
        for (int i = 8; i >= 0; i--)
        {
            if (i == 4)
            {
                continue;
            }
            Assert.Equal(0xF0 + i, sender.AcknowledgeInterrupt());
            Assert.True(sender.TryWriteMsr(0x80B, 0));
        }
        Assert.False(sender.HasPendingInterrupt);
    }

    [Fact]
    public void FixedIpiToAllExcludingSelf()
    {
        // Linux's TLB shootdown and reschedule broadcasts use the all-but-self shorthand.
        var board = new ApicTestBoard(4);
        foreach (var a in board.Apics)
        {
            SoftwareEnable(a);
        }
        SendIpi(board.Apics[1], 0, ShorthandOthers | 0xFB);
        Assert.True(IrrHas(board.Apics[0], 0xFB));
        Assert.False(IrrHas(board.Apics[1], 0xFB));
        Assert.True(IrrHas(board.Apics[2], 0xFB));
        Assert.True(IrrHas(board.Apics[3], 0xFB));
    }

    [Fact]
    public void SelfAndAllIncludingSelfShorthands()
    {
        var board = new ApicTestBoard(3);
        foreach (var a in board.Apics)
        {
            SoftwareEnable(a);
        }
        SendIpi(board.Apics[2], 0, ShorthandSelf | 0x50);
        Assert.True(IrrHas(board.Apics[2], 0x50));
        Assert.False(IrrHas(board.Apics[0], 0x50));

        SendIpi(board.Apics[2], 0, ShorthandAll | 0x60);
        Assert.All(board.Apics, a => Assert.True(IrrHas(a, 0x60)));
    }

    [Fact]
    public void NmiIpiRaisesNmiOnTarget()
    {
        var board = new ApicTestBoard(2);
        SendIpi(board.Apics[0], 1, DmNmi);
        Assert.Equal(1, board.Signals[1].Nmis);
        Assert.Equal(0, board.Signals[0].Nmis);
    }

    [Fact]
    public void IllegalIpiVectorSetsSendIllegalVectorError()
    {
        var board = new ApicTestBoard(2);
        SoftwareEnable(board.Apics[0]);
        SoftwareEnable(board.Apics[1]);
        SendIpi(board.Apics[0], 1, 0x0E);
        Assert.False(IrrHas(board.Apics[1], 0x0E));
        board.Apics[0].MmioWrite(ApicRegs.Esr, 4, 0);
        Assert.Equal(0x20u, Read(board.Apics[0], ApicRegs.Esr));
    }

    [Fact]
    public void PhysicalBroadcastFromAnIoApicMessageReachesX2ApicCpusToo()
    {
        var board = new ApicTestBoard(3);
        EnableX2Apic(board.Apics[0]);
        SoftwareEnable(board.Apics[1]);
        SoftwareEnable(board.Apics[2]);
        board.Bus.Deliver(Fixed(0xFF, 0x70));
        Assert.All(board.Apics, a => Assert.True(a.HasPendingInterrupt));
    }

    [Fact]
    public void X2ApicIpiTo0xFFIsApicId255NotBroadcast()
    {
        var board = new ApicTestBoard(3);
        foreach (var a in board.Apics)
        {
            EnableX2Apic(a);
        }
        Assert.True(board.Apics[0].TryWriteMsr(0x830, (0xFFUL << 32) | 0x70));
        Assert.False(board.Apics[1].HasPendingInterrupt);
        Assert.Equal(1, board.Bus.NoTarget.Value);
        Assert.True(board.Apics[0].TryWriteMsr(0x830, (0xFFFF_FFFFUL << 32) | 0x71));
        Assert.All(board.Apics, a => Assert.True(a.HasPendingInterrupt));
    }

    [Fact]
    public void LogicalFlatModeMatchesAnyCommonBit()
    {
        var board = new ApicTestBoard(4);
        for (int i = 0; i < 4; i++)
        {
            SoftwareEnable(board.Apics[i]);
            board.Apics[i].MmioWrite(ApicRegs.Ldr, 4, (1u << i) << 24); // Linux default_init_apic_ldr
        }
        board.Bus.Deliver(new ApicInterrupt(0b1010, true, ApicDeliveryMode.Fixed, 0x40, false));
        Assert.False(board.Apics[0].HasPendingInterrupt);
        Assert.True(board.Apics[1].HasPendingInterrupt);
        Assert.False(board.Apics[2].HasPendingInterrupt);
        Assert.True(board.Apics[3].HasPendingInterrupt);
    }

    [Fact]
    public void LogicalClusterModeMatchesClusterAndMember()
    {
        var board = new ApicTestBoard(3);
        uint[] ldr = [0x11, 0x12, 0x21]; // cluster 1 members 0 and 1, cluster 2 member 0
        for (int i = 0; i < 3; i++)
        {
            SoftwareEnable(board.Apics[i]);
            board.Apics[i].MmioWrite(ApicRegs.Dfr, 4, 0x0FFF_FFFF);
            board.Apics[i].MmioWrite(ApicRegs.Ldr, 4, ldr[i] << 24);
        }
        board.Bus.Deliver(new ApicInterrupt(0x13, true, ApicDeliveryMode.Fixed, 0x40, false));
        Assert.True(board.Apics[0].HasPendingInterrupt);
        Assert.True(board.Apics[1].HasPendingInterrupt);
        Assert.False(board.Apics[2].HasPendingInterrupt);
    }

    [Fact]
    public void X2ApicClusterModeUsesDerivedLogicalId()
    {
        var board = new ApicTestBoard(20);
        foreach (var a in board.Apics)
        {
            EnableX2Apic(a);
        }
        // x2APIC ID 17 = cluster 1, member bit 1 (SDM 11.12.10.2; Linux x2apic_cluster.c).
        Assert.True(board.Apics[17].TryReadMsr(0x80D, out ulong ldr));
        Assert.Equal(0x0001_0002UL, ldr);
        Assert.True(board.Apics[0].TryWriteMsr(0x830, (0x0001_0006UL << 32) | Logical | 0x44));
        for (int i = 0; i < 20; i++)
        {
            Assert.Equal(i is 17 or 18, board.Apics[i].HasPendingInterrupt);
        }
    }

    [Fact]
    public void LowestPriorityPicksTheLeastBusyCpu()
    {
        var board = new ApicTestBoard(3);
        for (int i = 0; i < 3; i++)
        {
            SoftwareEnable(board.Apics[i]);
            board.Apics[i].MmioWrite(ApicRegs.Ldr, 4, (1u << i) << 24);
        }
        board.Apics[0].MmioWrite(ApicRegs.Tpr, 4, 0x20);
        board.Apics[1].MmioWrite(ApicRegs.Tpr, 4, 0x10);
        board.Apics[2].MmioWrite(ApicRegs.Tpr, 4, 0x30);
        var msg = new ApicInterrupt(0x7, true, ApicDeliveryMode.LowestPriority, 0x80, false);
        board.Bus.Deliver(msg);
        Assert.True(IrrHas(board.Apics[1], 0x80));
        Assert.False(IrrHas(board.Apics[0], 0x80));
        Assert.False(IrrHas(board.Apics[2], 0x80));
    }

    [Fact]
    public void LowestPriorityRotatesAmongEquals()
    {
        var board = new ApicTestBoard(2);
        SoftwareEnable(board.Apics[0]);
        SoftwareEnable(board.Apics[1]);
        var msg = new ApicInterrupt(0xFF, false, ApicDeliveryMode.LowestPriority, 0x80, false);
        board.Bus.Deliver(msg);
        board.Bus.Deliver(msg with { Vector = 0x90 });
        bool first0 = IrrHas(board.Apics[0], 0x80);
        Assert.NotEqual(first0, IrrHas(board.Apics[1], 0x80));
        Assert.Equal(first0, IrrHas(board.Apics[1], 0x90));
    }

    [Fact]
    public void XApicIdWriteChangesPhysicalRouting()
    {
        var board = new ApicTestBoard(2);
        var apic = board.Apics[1];
        SoftwareEnable(apic);
        apic.MmioWrite(ApicRegs.Id, 4, 0x05u << 24);
        Assert.Equal(0x05u << 24, Read(apic, ApicRegs.Id));
        board.Bus.Deliver(Fixed(1, 0x40));
        Assert.Equal(1, board.Bus.NoTarget.Value);
        board.Bus.Deliver(Fixed(5, 0x41));
        Assert.True(IrrHas(apic, 0x41));
    }

    [Fact]
    public void MessagesToAMissingApicAreCounted()
    {
        var board = new ApicTestBoard(2);
        board.Bus.Deliver(Fixed(7, 0x40));
        Assert.Equal(1, board.Bus.NoTarget.Value);
    }

    [Fact]
    public void AttachOutOfOrderIsAVmmBug()
    {
        var clock = new VirtualClock(ClockMode.Deterministic);
        var timers = new TimerQueue(clock);
        var bus = new ApicBus();
        var apic = new LocalApic(1, bus, new RecordingSignals(), timers, new TimeStampCounter(clock, 1_000_000_000));
        Assert.Throws<InvalidOperationException>(() => bus.Attach(apic));
    }
}
