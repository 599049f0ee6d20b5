using SharpVisor.Devices.Pci;

namespace SharpVisor.Devices.Tests.Pci;

public sealed class EduDeviceTests : IDisposable
{
    const int Dev = 3;
    readonly PciTestRig _rig = new();
    readonly RecordingIrqLine _line = new();
    readonly EduDevice _edu = new();
    readonly ulong _bar;

    public EduDeviceTests()
    {
        _rig.Bus.Add(_edu, Dev, 0, _line);
        _bar = PciFirmware.AssignResources(_rig.Bus).Single(a => a.Function == _edu).Address;
        // What a driver does in probe: pci_enable_device (done by firmware here) and pci_set_master.
        _rig.EcamWrite(0, Dev, 0, PciConfig.Command, 2, (uint)(PciCommand.MemorySpace | PciCommand.BusMaster));
    }

    public void Dispose() => _rig.Dispose();

    uint Read32(int reg) => (uint)_rig.Memory.Read(_bar + (ulong)reg, 4);
    void Write32(int reg, uint value) => _rig.Memory.Write(_bar + (ulong)reg, 4, value);
    ulong Read64(int reg) => _rig.Memory.Read(_bar + (ulong)reg, 8);
    void Write64(int reg, ulong value) => _rig.Memory.Write(_bar + (ulong)reg, 8, value);

    void Dma(ulong source, ulong destination, ulong count, ulong command)
    {
        Write64(EduDevice.RegDmaSource, source);
        Write64(EduDevice.RegDmaDestination, destination);
        Write64(EduDevice.RegDmaCount, count);
        Write64(EduDevice.RegDmaCommand, command);
    }

    [Fact]
    public void IdentifiesAsQemuEdu()
    {
        Assert.Equal(0x11E8_1234u, _rig.EcamRead(0, Dev, 0, 0, 4));
        Assert.Equal(0xFF00_0010u, _rig.EcamRead(0, Dev, 0, PciConfig.RevisionId, 4));
        Assert.Equal(1u, _rig.EcamRead(0, Dev, 0, PciConfig.InterruptPin, 1));
        Assert.Equal(1UL << 20, _rig.Memory.Regions.Single(r => r.Base == _bar).Size);
        Assert.Equal(EduDevice.Identification, Read32(EduDevice.RegIdentification));
        Assert.Equal(0x05u, _rig.EcamRead(0, Dev, 0, _edu.MsiCapabilityOffset, 1)); // MSI capability
    }

    [Fact]
    public void LivenessRegisterInverts()
    {
        Write32(EduDevice.RegLiveness, 0x1234_5678);
        Assert.Equal(~0x1234_5678u, Read32(EduDevice.RegLiveness));
        Write32(EduDevice.RegLiveness, 0);
        Assert.Equal(0xFFFF_FFFFu, Read32(EduDevice.RegLiveness));
    }

    [Fact]
    public void RegistersBelow0x80TakeOnlyDwordAccesses()
    {
        Assert.Equal(0xFFFFUL, _rig.Memory.Read(_bar, 2));
        Assert.Equal(ulong.MaxValue, _rig.Memory.Read(_bar, 8));
        _rig.Memory.Write(_bar + EduDevice.RegLiveness, 2, 0);
        Assert.Equal(0u, Read32(EduDevice.RegLiveness)); // the narrow write was ignored
    }

    [Theory]
    [InlineData(0u, 1u)]
    [InlineData(5u, 120u)]
    [InlineData(12u, 479001600u)]
    [InlineData(13u, 1932053504u)] // 13! mod 2^32, as the 32-bit register holds it
    [InlineData(40u, 0u)]
    public void FactorialIsComputedAndBusyBitReadsClear(uint n, uint expected)
    {
        Write32(EduDevice.RegFactorial, n);
        Assert.Equal(0u, Read32(EduDevice.RegStatus) & EduDevice.StatusComputing);
        Assert.Equal(expected, Read32(EduDevice.RegFactorial));
        Assert.False(_line.Level); // no interrupt unless status bit 7 asked for one
    }

    [Fact]
    public void FactorialRaisesInterruptWhenStatusBit7IsSet()
    {
        Write32(EduDevice.RegStatus, EduDevice.StatusRaiseOnFactorial | EduDevice.StatusComputing);
        Assert.Equal(EduDevice.StatusRaiseOnFactorial, Read32(EduDevice.RegStatus)); // bit 0 is read-only
        Write32(EduDevice.RegFactorial, 4);
        Assert.Equal(24u, Read32(EduDevice.RegFactorial));
        Assert.Equal(EduDevice.FactorialInterrupt, Read32(EduDevice.RegInterruptStatus));
        Assert.True(_line.Level);
        Write32(EduDevice.RegInterruptAcknowledge, EduDevice.FactorialInterrupt);
        Assert.False(_line.Level);
    }

    [Fact]
    public void RaiseAndAcknowledgeDriveIntxLevel()
    {
        Write32(EduDevice.RegInterruptRaise, 0x3);
        Assert.Equal(0x3u, Read32(EduDevice.RegInterruptStatus));
        Assert.True(_line.Level);
        Write32(EduDevice.RegInterruptAcknowledge, 0x1);
        Assert.True(_line.Level); // a bit is still set
        Write32(EduDevice.RegInterruptAcknowledge, 0x2);
        Assert.False(_line.Level);
        Assert.Equal(0u, Read32(EduDevice.RegInterruptStatus));
    }

    [Fact]
    public void RaiseSendsMsiWhenEnabled()
    {
        int cap = _edu.MsiCapabilityOffset;
        Assert.Equal(1u << 7, _rig.EcamRead(0, Dev, 0, cap + 2, 2)); // 64-bit, no masking, 1 vector
        _rig.EcamWrite(0, Dev, 0, cap + 4, 4, 0xFEE0_0000);
        _rig.EcamWrite(0, Dev, 0, cap + 0xC, 2, 0x0045);
        _rig.EcamWrite(0, Dev, 0, cap + 2, 2, 1);
        Write32(EduDevice.RegInterruptRaise, 0x10);
        Assert.Equal([(0xFEE0_0000UL, 0x45u, (ushort)(Dev << 3))], _rig.Msi.Messages);
        Assert.False(_line.Level);
        Assert.Equal(0x10u, Read32(EduDevice.RegInterruptStatus)); // still needs acknowledging
    }

    [Fact]
    public void DmaCopiesRamToBufferAndBackToRam()
    {
        byte[] pattern = Enumerable.Range(0, 100).Select(i => (byte)(i * 7 + 3)).ToArray();
        Assert.True(_rig.Ram.TryWrite(0x10_0000, pattern));

        // edu.rst example: RAM → buffer, then buffer → RAM 100 bytes later.
        Dma(0x10_0000, EduDevice.DmaBufferAddress, 100, EduDevice.DmaCommandStart);
        Assert.Equal(0UL, Read64(EduDevice.RegDmaCommand) & EduDevice.DmaCommandStart);
        Dma(EduDevice.DmaBufferAddress, 0x10_0064, 100, EduDevice.DmaCommandStart | EduDevice.DmaCommandToRam);
        Assert.Equal(0UL, Read64(EduDevice.RegDmaCommand) & (EduDevice.DmaCommandStart | EduDevice.DmaCommandError));

        byte[] copy = new byte[100];
        Assert.True(_rig.Ram.TryRead(0x10_0064, copy));
        Assert.Equal(pattern, copy);
        Assert.Equal(2, _edu.DmaTransfers.Value);
        Assert.Equal(0, _edu.DmaErrors.Value);
        // Offsets inside the buffer work too: copy the last 10 bytes at buffer offset 0xFF6.
        Dma(0x10_0000, EduDevice.DmaBufferAddress + 0xFF6, 10, EduDevice.DmaCommandStart);
        Dma(EduDevice.DmaBufferAddress + 0xFF6, 0x20_0000, 10, EduDevice.DmaCommandStart | EduDevice.DmaCommandToRam);
        byte[] tail = new byte[10];
        Assert.True(_rig.Ram.TryRead(0x20_0000, tail));
        Assert.Equal(pattern[..10], tail);
    }

    [Fact]
    public void DmaCompletionRaisesInterrupt0x100WhenAsked()
    {
        Dma(0x10_0000, EduDevice.DmaBufferAddress, 16, EduDevice.DmaCommandStart | EduDevice.DmaCommandRaiseInterrupt);
        Assert.Equal(EduDevice.DmaInterrupt, Read32(EduDevice.RegInterruptStatus));
        Assert.True(_line.Level);
    }

    [Fact]
    public void DmaToNonRamReportsErrorAndLeavesRamUnchanged()
    {
        ulong ramEnd = _rig.Ram.LowRamEnd;
        byte[] before = new byte[32];
        Assert.True(_rig.Ram.TryRead(ramEnd - 32, before));
        Dma(EduDevice.DmaBufferAddress, ramEnd - 16, 64, EduDevice.DmaCommandStart | EduDevice.DmaCommandToRam | EduDevice.DmaCommandRaiseInterrupt);

        ulong command = Read64(EduDevice.RegDmaCommand);
        Assert.Equal(0UL, command & EduDevice.DmaCommandStart);
        Assert.NotEqual(0UL, command & EduDevice.DmaCommandError);
        Assert.Equal(1, _edu.DmaErrors.Value);
        byte[] after = new byte[32];
        Assert.True(_rig.Ram.TryRead(ramEnd - 32, after));
        Assert.Equal(before, after);
        // The completion interrupt still comes, so a driver sleeping on it wakes up.
        Assert.Equal(EduDevice.DmaInterrupt, Read32(EduDevice.RegInterruptStatus));

        // The next successful DMA clears the error bit.
        Dma(0x1000, EduDevice.DmaBufferAddress, 8, EduDevice.DmaCommandStart);
        Assert.Equal(0UL, Read64(EduDevice.RegDmaCommand));
    }

    [Fact]
    public void DmaAtItsOwnBarNeverReentersTheDevice()
    {
        // The IDmaSpace reaches RAM only, never MMIO, so a DMA aimed at the device's own BAR cannot
        // write the liveness register (nor recurse into the DMA engine): it fails as "not RAM".
        // A device without the 28-bit mask, so the bus address really is the BAR's.
        var edu28 = new EduDevice(dmaMask: ulong.MaxValue);
        using var rig = new PciTestRig();
        rig.Bus.Add(edu28, Dev, 0);
        ulong bar = PciFirmware.AssignResources(rig.Bus).Single(a => a.Function == edu28).Address;
        rig.EcamWrite(0, Dev, 0, PciConfig.Command, 2, (uint)(PciCommand.MemorySpace | PciCommand.BusMaster));
        rig.Memory.Write(bar + EduDevice.RegLiveness, 4, 0);
        rig.Memory.Write(bar + EduDevice.RegDmaSource, 8, EduDevice.DmaBufferAddress);
        rig.Memory.Write(bar + EduDevice.RegDmaDestination, 8, bar + EduDevice.RegLiveness);
        rig.Memory.Write(bar + EduDevice.RegDmaCount, 8, 4);
        rig.Memory.Write(bar + EduDevice.RegDmaCommand, 8, EduDevice.DmaCommandStart | EduDevice.DmaCommandToRam);
        Assert.NotEqual(0UL, rig.Memory.Read(bar + EduDevice.RegDmaCommand, 8) & EduDevice.DmaCommandError);
        Assert.Equal(0xFFFF_FFFFUL, rig.Memory.Read(bar + EduDevice.RegLiveness, 4));
        Assert.Equal(0, edu28.DmaAddressesClamped.Value);
    }

    [Fact]
    public void DmaOutsideTheDeviceBufferIsRefused()
    {
        _rig.Ram.WriteU64(0x5000, 0x1122_3344_5566_7788);
        Dma(0x5000, EduDevice.DmaBufferAddress + 0xFFC, 8, EduDevice.DmaCommandStart); // runs past the end
        Assert.NotEqual(0UL, Read64(EduDevice.RegDmaCommand) & EduDevice.DmaCommandError);
        Dma(0x5000, 0x1000, 8, EduDevice.DmaCommandStart); // not the buffer at all
        Assert.NotEqual(0UL, Read64(EduDevice.RegDmaCommand) & EduDevice.DmaCommandError);
        Dma(0x5000, EduDevice.DmaBufferAddress, ulong.MaxValue, EduDevice.DmaCommandStart); // absurd count
        Assert.NotEqual(0UL, Read64(EduDevice.RegDmaCommand) & EduDevice.DmaCommandError);
        Assert.Equal(3, _edu.DmaErrors.Value);
        Assert.Equal(0, _edu.DmaTransfers.Value);
    }

    [Fact]
    public void DmaWithBusMasterOffIsRefusedAndLeavesRamUnchanged()
    {
        _rig.EcamWrite(0, Dev, 0, PciConfig.Command, 2, (uint)PciCommand.MemorySpace);
        _rig.Ram.WriteU32(0x6000, 0xAAAA_AAAA);
        _rig.Ram.WriteU32(0x7000, 0x5555_5555);
        Dma(0x6000, EduDevice.DmaBufferAddress, 4, EduDevice.DmaCommandStart);
        Dma(EduDevice.DmaBufferAddress, 0x7000, 4, EduDevice.DmaCommandStart | EduDevice.DmaCommandToRam);
        Assert.NotEqual(0UL, Read64(EduDevice.RegDmaCommand) & EduDevice.DmaCommandError);
        Assert.Equal(0x5555_5555u, _rig.Ram.ReadU32(0x7000));
        Assert.Equal(2, _edu.DmaRefused.Value);
        Assert.Equal(2, _edu.DmaErrors.Value);
    }

    [Fact]
    public void DmaAddressesAreClampedToTheDmaMask()
    {
        _rig.Ram.WriteU32(0x8000, 0xCAFE_F00D);
        Dma(0x1000_8000, EduDevice.DmaBufferAddress, 4, EduDevice.DmaCommandStart); // bit 28 is beyond the mask
        Dma(EduDevice.DmaBufferAddress, 0x9000, 4, EduDevice.DmaCommandStart | EduDevice.DmaCommandToRam);
        Assert.Equal(0xCAFE_F00Du, _rig.Ram.ReadU32(0x9000));
        Assert.Equal(1, _edu.DmaAddressesClamped.Value);
    }

    [Fact]
    public void CommandWithoutStartBitIsIgnoredAndDwordWritesFillWholeRegisters()
    {
        Write64(EduDevice.RegDmaSource, 0xFFFF_FFFF_FFFF_FFFF);
        Write32(EduDevice.RegDmaSource, 0x1234);
        Assert.Equal(0x1234UL, Read64(EduDevice.RegDmaSource));
        Write64(EduDevice.RegDmaCommand, EduDevice.DmaCommandToRam);
        Assert.Equal(0UL, Read64(EduDevice.RegDmaCommand));
        Assert.Equal(0, _edu.DmaTransfers.Value + _edu.DmaErrors.Value);
    }
}
