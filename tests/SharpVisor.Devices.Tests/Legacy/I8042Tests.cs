using SharpVisor.Devices.Legacy;

namespace SharpVisor.Devices.Tests.Legacy;

public class I8042Tests
{
    const uint Obf = 0x01, Ibf = 0x02, AuxData = 0x20, Timeout = 0x40;

    readonly RecordingIrqLine _irq1 = new();
    readonly RecordingIrqLine _irq12 = new();
    int _resets;
    readonly I8042 _kbc;

    public I8042Tests() => _kbc = new I8042(_irq1, _irq12, () => _resets++);

    uint Status => _kbc.CommandPort.PortRead(0, 1);
    uint Data => _kbc.DataPort.PortRead(0, 1);
    void Command(byte c) => _kbc.CommandPort.PortWrite(0, 1, c);
    void Write(byte d) => _kbc.DataPort.PortWrite(0, 1, d);

    [Fact]
    public void EmptyControllerHasNothingToFlush()
    {
        // i8042_flush reads status until OBF clears; the input buffer is never busy (kb_wait).
        Assert.Equal(0u, Status & (Obf | Ibf));
    }

    [Fact]
    public void SelfTestAnswers55()
    {
        Command(0xAA);
        Assert.Equal(Obf, Status & (Obf | AuxData | Timeout));
        Assert.Equal(0x55u, Data);
        Assert.Equal(0u, Status & Obf);
    }

    [Fact]
    public void InterfaceTestsPass()
    {
        Command(0xAB);
        Assert.Equal(0x00u, Data);
        Command(0xA9);
        Assert.Equal(0x00u, Data);
    }

    [Fact]
    public void CommandByteReadWrite()
    {
        Command(0x20);
        uint ctr = Data;
        Assert.Equal(0x47u, ctr);
        Command(0x60);
        Write(0x65);
        Command(0x20);
        Assert.Equal(0x65u, Data);
    }

    [Fact]
    public void RepliesRaiseIrq1OnlyWhenEnabledInCommandByte()
    {
        Command(0xAA);
        Assert.True(_irq1.Level);
        _ = Data;
        Assert.False(_irq1.Level);

        Command(0x60);
        Write(0x44); // interrupts off, as i8042_controller_init does while probing
        Command(0xAA);
        Assert.False(_irq1.Level);
        Assert.Equal(Obf, Status & Obf);
    }

    [Fact]
    public void EachQueuedReplyGetsItsOwnEdge()
    {
        Command(0x20);
        Command(0xAA);
        Assert.Equal(1, _irq1.RisingEdges);
        _ = Data;
        Assert.Equal(2, _irq1.RisingEdges);
        Assert.Equal(0x55u, Data);
    }

    [Fact]
    public void AbsentKeyboardAnswersWithTimeout()
    {
        Write(0xF2); // atkbd GET ID
        uint status = Status;
        Assert.Equal(Obf | Timeout, status & (Obf | Timeout | AuxData));
        Assert.Equal(0xFEu, Data);
    }

    [Fact]
    public void AuxLoopbackEchoesAsMouseDataOnIrq12()
    {
        // i8042_check_aux: I8042_CMD_AUX_LOOP with 0x5a must come back.
        Command(0xD3);
        Write(0x5A);
        Assert.Equal(Obf | AuxData, Status & (Obf | AuxData | Timeout));
        Assert.True(_irq12.Level);
        Assert.False(_irq1.Level);
        Assert.Equal(0x5Au, Data);
        Assert.False(_irq12.Level);
    }

    [Fact]
    public void AbsentMouseAnswersWithTimeout()
    {
        Command(0xD4);
        Write(0xFF);
        Assert.Equal(Obf | AuxData | Timeout, Status & (Obf | AuxData | Timeout));
        Assert.Equal(0xFEu, Data);
    }

    [Fact]
    public void AuxEnableDisableToggleCommandByteBit5()
    {
        Command(0xA7);
        Command(0x20);
        Assert.Equal(0x20u, Data & 0x20);
        Command(0xA8);
        Command(0x20);
        Assert.Equal(0u, Data & 0x20);
    }

    [Fact]
    public void PulseResetLineCallsReset()
    {
        // Linux reboot=kbd: outb(0xfe, 0x64).
        Command(0xFE);
        Assert.Equal(1, _resets);
        Command(0xFF); // pulsing no line does nothing
        Assert.Equal(1, _resets);
    }

    [Fact]
    public void OutputPortWriteWithResetLowResets()
    {
        Command(0xD0);
        uint port = Data;
        Assert.Equal(3u, port & 3);
        Command(0xD1);
        Write((byte)(port & ~1u));
        Assert.Equal(1, _resets);
    }

    [Fact]
    public void UnknownCommandsAreCounted()
    {
        Command(0x99);
        Assert.Equal(1, _kbc.UnknownCommands.Value);
        Assert.Equal(0u, Status & Obf);
    }
}
