using SharpVisor.Core;
using SharpVisor.Devices.Interrupts;
using static SharpVisor.Devices.Tests.Interrupts.ApicTestBoard;

namespace SharpVisor.Devices.Tests.Interrupts;

public class IoApicTests
{
    const ushort RequesterId = 0xF0F8; // QEMU's q35 IOAPIC source ID (bus 0xF0, dev 0x1F, fn 0)
    const uint Level = 1 << 15;
    const uint Masked = 1 << 16;
    const uint RemoteIrr = 1 << 14;

    static void WriteIndirect(IoApic ioapic, uint index, uint value)
    {
        ioapic.MmioWrite(0x00, 4, index);
        ioapic.MmioWrite(0x10, 4, value);
    }

    static uint ReadIndirect(IoApic ioapic, uint index)
    {
        ioapic.MmioWrite(0x00, 4, index);
        return (uint)ioapic.MmioRead(0x10, 4);
    }

    static void Program(IoApic ioapic, int pin, uint low, uint high)
    {
        WriteIndirect(ioapic, 0x11 + 2u * (uint)pin, high);
        WriteIndirect(ioapic, 0x10 + 2u * (uint)pin, low);
    }

    /// <summary>A board whose IOAPIC reaches the local APICs through the no-IOMMU MSI sink.</summary>
    static (ApicTestBoard Board, IoApic IoApic, CompatibilityMsiSink Sink) Wired(int cpus)
    {
        var board = new ApicTestBoard(cpus);
        var sink = new CompatibilityMsiSink(board.Bus);
        var ioapic = new IoApic(sink, RequesterId);
        foreach (var apic in board.Apics)
        {
            apic.EoiListener = ioapic;
            SoftwareEnable(apic);
        }
        return (board, ioapic, sink);
    }

    [Fact]
    public void IdentificationRegisters()
    {
        var ioapic = new IoApic(new RecordingMsiSink(), RequesterId, id: 2);
        Assert.Equal(2u << 24, ReadIndirect(ioapic, 0));
        // Linux io_apic.c reads max redirection entry from bits 23:16 and the version from 7:0.
        Assert.Equal(0x0017_0020u, ReadIndirect(ioapic, 1));
        WriteIndirect(ioapic, 0, 5u << 24);
        Assert.Equal(5u << 24, ReadIndirect(ioapic, 0));
        Assert.Equal(5u << 24, ReadIndirect(ioapic, 2)); // arbitration ID follows
        WriteIndirect(ioapic, 1, 0);
        Assert.Equal(0x0017_0020u, ReadIndirect(ioapic, 1)); // read-only
    }

    [Fact]
    public void EntriesStartMaskedAndKeepReadOnlyBits()
    {
        var ioapic = new IoApic(new RecordingMsiSink(), RequesterId);
        for (int pin = 0; pin < IoApic.PinCount; pin++)
        {
            Assert.Equal(Masked, ReadIndirect(ioapic, 0x10 + 2u * (uint)pin));
        }
        WriteIndirect(ioapic, 0x10, 0xFFFF_FFFF);
        Assert.Equal(0x0001_AFFFu, ReadIndirect(ioapic, 0x10)); // delivery status, remote IRR, reserved stay 0
    }

    [Fact]
    public void EdgePinFormsACompatibilityMessageWithTheRequesterId()
    {
        var sink = new RecordingMsiSink();
        var ioapic = new IoApic(sink, RequesterId);
        Program(ioapic, 4, 0x31, 3u << 24); // vector 0x31, fixed, physical, dest 3
        ioapic.GetPin(4).SetLevel(true);
        ioapic.GetPin(4).SetLevel(true); // no new edge
        ioapic.GetPin(4).SetLevel(false);
        ioapic.GetPin(4).SetLevel(true);
        Assert.Equal(2, sink.Messages.Count);
        Assert.Equal((0xFEE0_3000UL, 0x31u, RequesterId), sink.Messages[0]);
    }

    [Fact]
    public void LogicalLowestPriorityEntryEncodesModeInAddressAndData()
    {
        var sink = new RecordingMsiSink();
        var ioapic = new IoApic(sink, RequesterId);
        Program(ioapic, 9, 0x41 | (1 << 8) | (1 << 11) | Level, 0x0Fu << 24);
        ioapic.GetPin(9).SetLevel(true);
        var (address, data, _) = Assert.Single(sink.Messages);
        Assert.Equal(0xFEE0_F004UL, address);
        Assert.Equal(0x41u | (1 << 8) | (1 << 14) | (1 << 15), data);
        var decoded = MsiMessage.DecodeCompatibility(address, data);
        Assert.Equal(new ApicInterrupt(0x0F, true, ApicDeliveryMode.LowestPriority, 0x41, true, true), decoded);
    }

    [Fact]
    public void EdgeOnMaskedPinIsLost()
    {
        var sink = new RecordingMsiSink();
        var ioapic = new IoApic(sink, RequesterId);
        Program(ioapic, 1, Masked | 0x31, 0);
        ioapic.GetPin(1).SetLevel(true);
        Program(ioapic, 1, 0x31, 0);
        Assert.Empty(sink.Messages);
        Assert.Equal(1, ioapic.EdgesLostWhileMasked.Value);
    }

    [Fact]
    public void LevelPinSetsRemoteIrrAndIsRedeliveredAfterEoiWhileAsserted()
    {
        var (board, ioapic, _) = Wired(2);
        var cpu = board.Apics[1];
        Program(ioapic, 16, Level | 0x40, 1u << 24);
        var pin = ioapic.GetPin(16);

        pin.SetLevel(true);
        Assert.True(IrrHas(cpu, 0x40));
        Assert.True(TmrHas(cpu, 0x40));
        Assert.NotEqual(0UL, ioapic.ReadRedirectionEntry(16) & RemoteIrr);
        Assert.Equal(1, ioapic.Delivered.Value);

        // The handler runs, the device keeps the line up (e.g. a second event), the driver EOIs.
        Assert.Equal(0x40, cpu.AcknowledgeInterrupt());
        pin.SetLevel(true);
        Assert.Equal(1, ioapic.Delivered.Value); // Remote IRR holds it back
        cpu.MmioWrite(ApicRegs.Eoi, 4, 0);
        Assert.Equal(2, ioapic.Delivered.Value); // still asserted: delivered again
        Assert.True(IrrHas(cpu, 0x40));

        // This time the handler clears the device before the EOI.
        Assert.Equal(0x40, cpu.AcknowledgeInterrupt());
        pin.SetLevel(false);
        cpu.MmioWrite(ApicRegs.Eoi, 4, 0);
        Assert.Equal(2, ioapic.Delivered.Value);
        Assert.Equal(0UL, ioapic.ReadRedirectionEntry(16) & RemoteIrr);
        Assert.False(cpu.HasPendingInterrupt);
    }

    [Fact]
    public void EoiRegisterClearsRemoteIrr()
    {
        // With interrupt remapping Linux EOIs through this register with the RTE's vector
        // (io_apic.c ioapic_ir_ack_level → eoi_ioapic_pin).
        var sink = new RecordingMsiSink();
        var ioapic = new IoApic(sink, RequesterId);
        Program(ioapic, 5, Level | 0x05, 0);
        ioapic.GetPin(5).SetLevel(true);
        ioapic.MmioWrite(0x40, 4, 0x06); // other vector: nothing
        Assert.NotEqual(0UL, ioapic.ReadRedirectionEntry(5) & RemoteIrr);
        ioapic.MmioWrite(0x40, 4, 0x05);
        Assert.Equal(2, sink.Messages.Count); // cleared and, still asserted, re-delivered
        ioapic.GetPin(5).SetLevel(false);
        ioapic.MmioWrite(0x40, 4, 0x05);
        Assert.Equal(0UL, ioapic.ReadRedirectionEntry(5) & RemoteIrr);
    }

    [Fact]
    public void SwitchingToEdgeClearsRemoteIrr()
    {
        // The pre-0x20 EOI emulation in Linux io_apic.c __eoi_ioapic_pin.
        var sink = new RecordingMsiSink();
        var ioapic = new IoApic(sink, RequesterId);
        Program(ioapic, 7, Level | 0x37, 0);
        ioapic.GetPin(7).SetLevel(true);
        WriteIndirect(ioapic, 0x10 + 14, Masked | 0x37);
        Assert.Equal(0UL, ioapic.ReadRedirectionEntry(7) & RemoteIrr);
        WriteIndirect(ioapic, 0x10 + 14, Level | 0x37); // unmask as level, line still up
        Assert.Equal(2, sink.Messages.Count);
    }

    [Fact]
    public void LevelNmiEntryBehavesAsEdgeAndNeverWedges()
    {
        var sink = new RecordingMsiSink();
        var ioapic = new IoApic(sink, RequesterId);
        Program(ioapic, 6, Level | (4 << 8), 0); // NMI
        ioapic.GetPin(6).SetLevel(true);
        ioapic.GetPin(6).SetLevel(false);
        ioapic.GetPin(6).SetLevel(true);
        Assert.Equal(2, sink.Messages.Count);
        Assert.Equal(0UL, ioapic.ReadRedirectionEntry(6) & RemoteIrr);
    }

    [Fact]
    public void UnmaskingAnAssertedLevelPinDelivers()
    {
        var sink = new RecordingMsiSink();
        var ioapic = new IoApic(sink, RequesterId);
        Program(ioapic, 20, Masked | Level | 0x50, 0);
        ioapic.GetPin(20).SetLevel(true);
        Assert.Empty(sink.Messages);
        WriteIndirect(ioapic, 0x10 + 40, Level | 0x50);
        Assert.Single(sink.Messages);
    }

    [Fact]
    public void RemappableEntryFormsARemappableMessage()
    {
        var sink = new RecordingMsiSink();
        var ioapic = new IoApic(sink, RequesterId);
        // Interrupt index 0x8123: bits 14:0 in RTE 63:49, bit 15 in RTE 11; format bit 48 (VT-d 5.1.5.1).
        uint high = (0x0123u << 17) | (1u << 16);
        uint low = (1u << 11) | Level | 0x02; // vector = pin, as Linux programs it with remapping
        Program(ioapic, 2, low, high);
        ioapic.GetPin(2).SetLevel(true);
        var (address, data, rid) = Assert.Single(sink.Messages);
        Assert.True(MsiMessage.IsRemappable(address));
        ulong index = ((address >> 5) & 0x7FFF) | (((address >> 2) & 1) << 15);
        Assert.Equal(0x8123UL, index);
        Assert.Equal(0xFEE0_0000UL, address & 0xFFF0_0000);
        Assert.Equal(0x02u, data & 0xFF);
        Assert.Equal(RequesterId, rid);
    }

    [Fact]
    public void CompatibilitySinkDropsRemappableMessages()
    {
        var (board, ioapic, sink) = Wired(1);
        Program(ioapic, 3, 0x33, 1u << 16); // remappable with index 0
        ioapic.GetPin(3).SetLevel(true);
        Assert.Equal(1, sink.DroppedRemappable.Value);
        Assert.False(board.Apics[0].HasPendingInterrupt);

        sink.SendMsi(0xFED0_0000, 0x33, 0x0008); // not the interrupt range
        Assert.Equal(1, sink.DroppedBadAddress.Value);
        sink.SendMsi(0xFEE0_0000, 0x34, 0x0008);
        Assert.True(IrrHas(board.Apics[0], 0x34));
    }

    [Fact]
    public void EdgePinReachesTheLocalApicEndToEnd()
    {
        var (board, ioapic, _) = Wired(3);
        Program(ioapic, 8, 0x38, 2u << 24);
        ioapic.GetPin(8).SetLevel(true);
        Assert.True(IrrHas(board.Apics[2], 0x38));
        Assert.False(TmrHas(board.Apics[2], 0x38));
        Assert.False(board.Apics[0].HasPendingInterrupt);
    }

    [Fact]
    public void ExtIntEntryLetsTheBspTakeTheVectorFromThePic()
    {
        // Through-IOAPIC virtual wire (MP spec 3.6.2.2): pin 0 in ExtINT mode, the 8259 supplies the vector.
        var (board, ioapic, _) = Wired(2);
        var bsp = board.Apics[0];
        bsp.MmioWrite(ApicRegs.LvtLint0, 4, 0x1_0700); // LINT0 masked: only the IOAPIC path is open
        board.Pic.Pending = true;
        board.Pic.Vector = 0x30;
        Assert.False(bsp.HasPendingInterrupt);
        Program(ioapic, 0, 7 << 8, 0);
        ioapic.GetPin(0).SetLevel(true);
        Assert.True(bsp.HasPendingInterrupt);
        Assert.Equal(0x30, bsp.AcknowledgeInterrupt());
        Assert.False(board.Apics[1].HasPendingInterrupt);
    }

    [Fact]
    public void ReservedAccessesAreHarmless()
    {
        var sink = new RecordingMsiSink();
        var ioapic = new IoApic(sink, RequesterId);
        Assert.Equal(0u, ReadIndirect(ioapic, 0x80));
        WriteIndirect(ioapic, 0x80, 1);
        ioapic.MmioWrite(0x10, 1, 0xFF); // byte write to the window: ignored
        ioapic.MmioWrite(0x20, 4, 0xFF);
        Assert.True(ioapic.GuestErrors.Value >= 3);
        Assert.Throws<ArgumentOutOfRangeException>(() => ioapic.GetPin(24));
    }
}
