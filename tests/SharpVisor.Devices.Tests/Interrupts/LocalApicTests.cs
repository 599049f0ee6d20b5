using SharpVisor.Core;
using SharpVisor.Devices.Interrupts;
using static SharpVisor.Devices.Tests.Interrupts.ApicTestBoard;

namespace SharpVisor.Devices.Tests.Interrupts;

public class LocalApicTests
{
    [Fact]
    public void IdAndVersionRegisters()
    {
        var board = new ApicTestBoard(3);
        Assert.Equal(2u << 24, Read(board.Apics[2], ApicRegs.Id));
        // Linux lapic_get_maxlvt reads bits 23:16; integrated APIC when version >= 0x10.
        Assert.Equal(0x0005_0014u, Read(board.Apics[0], ApicRegs.Version));
        Assert.Equal(0xFEE0_0900UL, board.Apics[0].ApicBase); // BSP + enabled
        Assert.Equal(0xFEE0_0800UL, board.Apics[1].ApicBase);
    }

    [Fact]
    public void FixedInterruptGoesIrrToIsrAndEoiClearsIt()
    {
        var board = new ApicTestBoard(1);
        var apic = board.Apics[0];
        SoftwareEnable(apic);
        int before = board.Signals[0].Notifications;
        apic.Accept(Fixed(0, 0x41));
        Assert.True(IrrHas(apic, 0x41));
        Assert.Equal(before + 1, board.Signals[0].Notifications);
        Assert.True(apic.HasPendingInterrupt);

        Assert.Equal(0x41, apic.AcknowledgeInterrupt());
        Assert.False(IrrHas(apic, 0x41));
        Assert.True(IsrHas(apic, 0x41));
        Assert.Equal(0x40u, Read(apic, ApicRegs.Ppr)); // in-service class
        Assert.False(apic.HasPendingInterrupt);

        apic.MmioWrite(ApicRegs.Eoi, 4, 0);
        Assert.False(IsrHas(apic, 0x41));
        Assert.Equal(0u, Read(apic, ApicRegs.Ppr));
    }

    [Fact]
    public void HigherVectorPreemptsOnlyAcrossPriorityClasses()
    {
        var board = new ApicTestBoard(1);
        var apic = board.Apics[0];
        SoftwareEnable(apic);
        apic.Accept(Fixed(0, 0x51));
        Assert.Equal(0x51, apic.AcknowledgeInterrupt());
        apic.Accept(Fixed(0, 0x5F)); // same class as the one in service: held
        Assert.False(apic.HasPendingInterrupt);
        apic.Accept(Fixed(0, 0x61)); // higher class: nests
        Assert.Equal(0x61, apic.AcknowledgeInterrupt());
        apic.MmioWrite(ApicRegs.Eoi, 4, 0); // ends 0x61 (highest in service)
        Assert.True(IsrHas(apic, 0x51));
        apic.MmioWrite(ApicRegs.Eoi, 4, 0); // ends 0x51
        Assert.Equal(0x5F, apic.AcknowledgeInterrupt());
    }

    [Fact]
    public void TprMasksItsClassAndBelow()
    {
        var board = new ApicTestBoard(1);
        var apic = board.Apics[0];
        SoftwareEnable(apic);
        apic.MmioWrite(ApicRegs.Tpr, 4, 0x50);
        apic.Accept(Fixed(0, 0x55));
        Assert.False(apic.HasPendingInterrupt);
        Assert.Equal(0x50u, Read(apic, ApicRegs.Ppr));

        int before = board.Signals[0].Notifications;
        apic.MmioWrite(ApicRegs.Tpr, 4, 0x40);
        Assert.True(board.Signals[0].Notifications > before); // lowering TPR wakes the vCPU to re-check
        Assert.True(apic.HasPendingInterrupt);
        Assert.Equal(0x55, apic.AcknowledgeInterrupt());
    }

    [Fact]
    public void Cr8IsTheTprPriorityClass()
    {
        var board = new ApicTestBoard(1);
        var apic = board.Apics[0];
        SoftwareEnable(apic);
        apic.MmioWrite(ApicRegs.Tpr, 4, 0x5A);
        Assert.Equal(5UL, apic.ReadCr8());
        apic.WriteCr8(3);
        Assert.Equal(0x30u, Read(apic, ApicRegs.Tpr));
        apic.Accept(Fixed(0, 0x35));
        Assert.False(apic.HasPendingInterrupt);
        apic.WriteCr8(2);
        Assert.True(apic.HasPendingInterrupt);
    }

    [Fact]
    public void SoftwareDisabledApicDropsFixedAndAcknowledgeGivesSpurious()
    {
        var board = new ApicTestBoard(2);
        var apic = board.Apics[1];
        apic.Accept(Fixed(1, 0x41));
        Assert.False(IrrHas(apic, 0x41));
        Assert.Equal(1, apic.Dropped.Value);

        SoftwareEnable(apic, spurious: 0xEF);
        Assert.False(apic.HasPendingInterrupt);
        Assert.Equal(0xEF, apic.AcknowledgeInterrupt());
    }

    [Fact]
    public void SoftwareDisableMasksLvtAndKeepsItMasked()
    {
        var board = new ApicTestBoard(1);
        var apic = board.Apics[0];
        SoftwareEnable(apic);
        apic.MmioWrite(ApicRegs.LvtTimer, 4, 0x30);
        Assert.Equal(0x30u, Read(apic, ApicRegs.LvtTimer));
        apic.MmioWrite(ApicRegs.Svr, 4, 0xFF);
        Assert.Equal(0x1_0030u, Read(apic, ApicRegs.LvtTimer));
        apic.MmioWrite(ApicRegs.LvtTimer, 4, 0x31);
        Assert.Equal(0x1_0031u, Read(apic, ApicRegs.LvtTimer));
    }

    [Fact]
    public void EoiOfLevelTriggeredVectorIsBroadcastButEdgeIsNot()
    {
        var board = new ApicTestBoard(1);
        var apic = board.Apics[0];
        var listener = new RecordingEoiListener();
        apic.EoiListener = listener;
        SoftwareEnable(apic);

        apic.Accept(Fixed(0, 0x30, level: true));
        Assert.True(TmrHas(apic, 0x30));
        apic.AcknowledgeInterrupt();
        apic.MmioWrite(ApicRegs.Eoi, 4, 0);

        apic.Accept(Fixed(0, 0x31));
        Assert.False(TmrHas(apic, 0x31));
        apic.AcknowledgeInterrupt();
        apic.MmioWrite(ApicRegs.Eoi, 4, 0);

        Assert.Equal([0x30], listener.Vectors);
    }

    [Fact]
    public void EsrIsWriteBeforeRead()
    {
        var board = new ApicTestBoard(1);
        var apic = board.Apics[0];
        SoftwareEnable(apic);
        apic.Accept(Fixed(0, 0x05)); // vectors 0-15 are illegal
        Assert.False(IrrHas(apic, 0x05));
        Assert.Equal(0u, Read(apic, ApicRegs.Esr)); // not yet latched
        apic.MmioWrite(ApicRegs.Esr, 4, 0);
        Assert.Equal(0x40u, Read(apic, ApicRegs.Esr)); // receive illegal vector
        apic.MmioWrite(ApicRegs.Esr, 4, 0);
        Assert.Equal(0u, Read(apic, ApicRegs.Esr));
    }

    [Fact]
    public void ErrorRaisesLvtErrorInterruptWhenUnmasked()
    {
        var board = new ApicTestBoard(1);
        var apic = board.Apics[0];
        SoftwareEnable(apic);
        apic.MmioWrite(ApicRegs.LvtError, 4, 0xFE);
        _ = apic.MmioRead(0x2F0, 4); // CMCI LVT does not exist (max LVT 5): illegal register
        Assert.True(IrrHas(apic, 0xFE));
        apic.MmioWrite(ApicRegs.Esr, 4, 0);
        Assert.Equal(0x80u, Read(apic, ApicRegs.Esr));
    }

    [Fact]
    public void LogicalDestinationRegistersKeepOnlyDefinedBits()
    {
        var board = new ApicTestBoard(1);
        var apic = board.Apics[0];
        Assert.Equal(0xFFFF_FFFFu, Read(apic, ApicRegs.Dfr));
        apic.MmioWrite(ApicRegs.Dfr, 4, 0x0000_0000);
        Assert.Equal(0x0FFF_FFFFu, Read(apic, ApicRegs.Dfr));
        apic.MmioWrite(ApicRegs.Ldr, 4, 0x12_34_56_78);
        Assert.Equal(0x1200_0000u, Read(apic, ApicRegs.Ldr));
    }

    [Fact]
    public void BspLint0StartsInVirtualWireModeAndPullsFromThePic()
    {
        var board = new ApicTestBoard(2);
        var bsp = board.Apics[0];
        Assert.False(bsp.HasPendingInterrupt);
        board.Pic.Pending = true;
        bsp.Lint0.SetLevel(true);
        Assert.True(board.Signals[0].Notifications > 0);
        Assert.True(bsp.HasPendingInterrupt); // before the kernel touches the APIC at all
        Assert.Equal(0x08, bsp.AcknowledgeInterrupt());
        Assert.Equal(1, board.Pic.Acks);

        // Linux masks LINT0 on the BSP once the IOAPIC takes over (apic.c setup_local_APIC).
        SoftwareEnable(bsp);
        bsp.MmioWrite(ApicRegs.LvtLint0, 4, 0x1_0700);
        board.Pic.Pending = true;
        Assert.False(bsp.HasPendingInterrupt);
        Assert.Equal(0xFF, bsp.AcknowledgeInterrupt()); // spurious, the PIC is not asked
        Assert.Equal(1, board.Pic.Acks);
    }

    [Fact]
    public void Lint1InNmiModeRaisesNmiOnRisingEdge()
    {
        var board = new ApicTestBoard(1);
        var apic = board.Apics[0];
        SoftwareEnable(apic);
        apic.MmioWrite(ApicRegs.LvtLint1, 4, 0x400); // NMI, unmasked
        apic.Lint1.SetLevel(true);
        apic.Lint1.SetLevel(true);
        apic.Lint1.SetLevel(false);
        Assert.Equal(1, board.Signals[0].Nmis);
    }

    [Fact]
    public void ExtIntMessageAsksThePic()
    {
        var board = new ApicTestBoard(1);
        var apic = board.Apics[0];
        SoftwareEnable(apic);
        apic.MmioWrite(ApicRegs.LvtLint0, 4, 0x1_0700); // LINT0 masked: only the message path is open
        board.Pic.Pending = true;
        Assert.False(apic.HasPendingInterrupt);
        apic.Accept(new ApicInterrupt(0, false, ApicDeliveryMode.ExtInt, 0, false));
        Assert.True(apic.HasPendingInterrupt);
        Assert.Equal(0x08, apic.AcknowledgeInterrupt());
    }

    [Fact]
    public void InitMessageResetsRegistersButKeepsModeAndId()
    {
        var board = new ApicTestBoard(2);
        var apic = board.Apics[1];
        EnableX2Apic(apic);
        Assert.True(apic.TryWriteMsr(0x808, 0x70));
        apic.Accept(new ApicInterrupt(1, false, ApicDeliveryMode.Init, 0, false));
        Assert.Equal(1, board.Signals[1].Inits);
        Assert.True(apic.IsX2ApicMode);
        Assert.True(apic.TryReadMsr(0x808, out ulong tpr));
        Assert.Equal(0UL, tpr);
        Assert.True(apic.TryReadMsr(0x80F, out ulong svr));
        Assert.Equal(0xFFUL, svr);
        Assert.True(apic.TryReadMsr(0x802, out ulong id));
        Assert.Equal(1UL, id);
    }

    [Fact]
    public void MmioPageIsGoneInX2ApicMode()
    {
        var board = new ApicTestBoard(1);
        var apic = board.Apics[0];
        EnableX2Apic(apic);
        Assert.Equal(0UL, apic.MmioRead(ApicRegs.Version, 4));
        apic.MmioWrite(ApicRegs.Tpr, 4, 0x30);
        Assert.True(apic.TryReadMsr(0x808, out ulong tpr));
        Assert.Equal(0UL, tpr);
    }

    [Fact]
    public void NonAlignedMmioWriteIsIgnored()
    {
        var board = new ApicTestBoard(1);
        var apic = board.Apics[0];
        apic.MmioWrite(ApicRegs.Tpr + 1, 1, 0x30);
        apic.MmioWrite(ApicRegs.Tpr, 2, 0x30);
        Assert.Equal(0u, Read(apic, ApicRegs.Tpr));
        apic.MmioWrite(ApicRegs.Tpr, 4, 0x30);
        Assert.Equal(0x30UL, apic.MmioRead(ApicRegs.Tpr, 1)); // byte reads of a register work
    }

    [Fact]
    public void SameVectorTwiceCoalescesInIrr()
    {
        var board = new ApicTestBoard(1);
        var apic = board.Apics[0];
        SoftwareEnable(apic);
        apic.Accept(Fixed(0, 0x40));
        apic.Accept(Fixed(0, 0x40));
        Assert.Equal(0x40, apic.AcknowledgeInterrupt());
        apic.MmioWrite(ApicRegs.Eoi, 4, 0);
        Assert.False(apic.HasPendingInterrupt);
    }

    [Fact]
    public void ConcurrentAcceptAndAcknowledgeLoseNothing()
    {
        // Two threads raise 200 distinct vectors (no coalescing possible) while the vCPU thread
        // acknowledges and EOIs: every vector must come out exactly once.
        var board = new ApicTestBoard(1);
        var apic = board.Apics[0];
        SoftwareEnable(apic);
        var producers = new[] { (First: 0x20, Count: 100), (First: 0x84, Count: 100) }.Select(r => new Thread(() =>
        {
            for (int v = r.First; v < r.First + r.Count; v++)
            {
                apic.Accept(Fixed(0, (byte)v));
            }
        })).ToArray();
        foreach (var t in producers)
        {
            t.Start();
        }
        var seen = new int[256];
        int total = 0;
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (total < 200 && DateTime.UtcNow < deadline)
        {
            if (!apic.HasPendingInterrupt)
            {
                Thread.Yield();
                continue;
            }
            byte v = apic.AcknowledgeInterrupt();
            Assert.NotEqual(0xFF, v);
            apic.MmioWrite(ApicRegs.Eoi, 4, 0);
            seen[v]++;
            total++;
        }
        foreach (var t in producers)
        {
            t.Join();
        }
        Assert.Equal(200, total);
        for (int v = 0x20; v < 0xE8; v++)
        {
            Assert.Equal(1, seen[v]);
        }
        Assert.False(apic.HasPendingInterrupt);
    }
}
