using System.Text;
using SharpVisor.Devices.Legacy;

namespace SharpVisor.Devices.Tests.Legacy;

public class Uart16550Tests
{
    const ushort Rbr = 0, Thr = 0, Ier = 1, Iir = 2, Fcr = 2, Lcr = 3, Mcr = 4, Lsr = 5, Msr = 6, Scr = 7;

    readonly RecordingIrqLine _irq = new();
    readonly List<byte> _sent = [];
    readonly Uart16550 _uart;

    public Uart16550Tests() => _uart = new Uart16550(_irq, b => _sent.Add(b));

    uint In(ushort reg) => _uart.PortRead(reg, 1);
    void Out(ushort reg, uint value) => _uart.PortWrite(reg, 1, value);

    [Fact]
    public void LinuxAutoconfigFindsA16550A()
    {
        // drivers/tty/serial/8250/8250_port.c autoconfig(): IER probe.
        Out(Ier, 0);
        Assert.Equal(0u, In(Ier) & 0x0F);
        Out(Ier, 0x0F);
        Assert.Equal(0x0Fu, In(Ier) & 0x0F);
        Out(Ier, 0);

        // Scratch register.
        Out(Scr, 0xA5);
        Assert.Equal(0xA5u, In(Scr));
        Out(Scr, 0x5A);
        Assert.Equal(0x5Au, In(Scr));

        // FIFO detection: IIR bits 7:6 = 11 after enabling the FIFO.
        Out(Lcr, 0);
        Out(Fcr, 0x01);
        Assert.Equal(3u, In(Iir) >> 6);

        // autoconfig_16550a: with DLAB set, offset 2 must not read 0 (else it is an ST16C650 EFR),
        // and IIR bit 4/5 must be 0 so it is neither a NatSemi part nor a 16750.
        Out(Lcr, 0x80);
        Assert.NotEqual(0u, In(Iir));
        Out(Lcr, 0xBF);
        Assert.NotEqual(0u, In(Iir));
        Out(Lcr, 0);
        Out(Fcr, 0x01 | 0x20);
        Assert.Equal(6u, In(Iir) >> 5);
        // IER bits 7:4 do not stick (not an XScale UART with UUE).
        Out(Ier, 0x40);
        Assert.Equal(0u, In(Ier) & 0x40);
        Out(Ier, 0);

        // Loopback test: MCR = LOOP | OUT2 | RTS must show DCD | CTS in MSR.
        Out(Mcr, 0x10 | 0x0A);
        Assert.Equal(0x90u, In(Msr) & 0xF0);
        Out(Mcr, 0);
        Assert.NotEqual(0xFFu, In(Lsr));
    }

    [Fact]
    public void ThreInterruptIsReassertedWhenEtbeiIsSetAgain()
    {
        // serial8250_do_startup's UART_BUG_THRE test.
        Out(Mcr, 0x08); // OUT2
        Out(Ier, 0x02);
        uint iir1 = In(Iir);
        Assert.Equal(0x02u, iir1 & 0x0F);
        Out(Ier, 0);
        Out(Ier, 0x02);
        uint iir = In(Iir);
        Assert.Equal(0x02u, iir & 0x0F);
        Assert.Equal(0x01u, In(Iir) & 0x0F); // the IIR read cleared it
        Out(Ier, 0);
    }

    [Fact]
    public void ThreInterruptDrivesIrqOnlyWithOut2()
    {
        Out(Ier, 0x02);
        Assert.False(_irq.Level);
        Out(Mcr, 0x08);
        Assert.True(_irq.Level);
        _ = In(Iir);
        Assert.False(_irq.Level);
        Out(Thr, (byte)'x'); // writing THR transmits and re-arms THRE
        Assert.True(_irq.Level);
        Out(Ier, 0);
        Assert.False(_irq.Level);
    }

    [Fact]
    public void TransmittedBytesReachTheSinkAndLsrShowsEmpty()
    {
        foreach (byte b in "hello\n"u8)
        {
            Assert.Equal(0x60u, In(Lsr) & 0x60); // wait_for_xmitr: THRE | TEMT
            Out(Thr, b);
        }
        Assert.Equal("hello\n", Encoding.ASCII.GetString([.. _sent]));
        Assert.Equal(6, _uart.TransmittedBytes.Value);
    }

    [Fact]
    public void DivisorLatchIsSeparateFromThrAndIer()
    {
        Out(Ier, 0x05);
        Out(Lcr, 0x83);
        Out(Rbr, 0x01);   // DLL: 115200 baud
        Out(Ier, 0x00);   // DLM
        Assert.Equal(0x01u, In(Rbr));
        Assert.Equal(0x00u, In(Ier));
        Out(Lcr, 0x03);
        Assert.Equal(0x05u, In(Ier));
        Assert.Empty(_sent);
    }

    [Fact]
    public void ReceivedBytesAreReadInOrderWithDataReady()
    {
        Out(Fcr, 0x01);
        _uart.Receive("abc"u8);
        string got = "";
        while ((In(Lsr) & 1) != 0)
        {
            got += (char)In(Rbr);
        }
        Assert.Equal("abc", got);
    }

    [Fact]
    public void FifoBelowTriggerReportsCharacterTimeoutAboveReportsDataAvailable()
    {
        Out(Fcr, 0x81); // FIFO on, trigger 8 (what Linux uses for a 16550A)
        Out(Mcr, 0x08);
        Out(Ier, 0x01);
        _uart.Receive("abc"u8);
        Assert.Equal(0xCCu, In(Iir));
        Assert.True(_irq.Level);
        _uart.Receive("defghij"u8);
        Assert.Equal(0xC4u, In(Iir));
        for (int i = 0; i < 10; i++)
        {
            _ = In(Rbr);
        }
        Assert.Equal(0xC1u, In(Iir));
        Assert.False(_irq.Level);
    }

    [Fact]
    public void LongInputIsHeldInTheBacklogNotOverrun()
    {
        Out(Fcr, 0x01);
        byte[] input = new byte[100];
        for (int i = 0; i < input.Length; i++)
        {
            input[i] = (byte)i;
        }
        Assert.Equal(100, _uart.Receive(input));
        for (int i = 0; i < input.Length; i++)
        {
            Assert.Equal(1u, In(Lsr) & 0x03); // data ready, no overrun
            Assert.Equal((uint)i, In(Rbr));
        }
        Assert.Equal(0u, In(Lsr) & 1);
    }

    [Fact]
    public void WithoutFifoTheReceiverHoldsOneByte()
    {
        _uart.Receive("xy"u8);
        Out(Ier, 0x01);
        Assert.Equal(0x04u, In(Iir)); // no FIFO bits, RDA
        Assert.Equal((uint)'x', In(Rbr));
        Assert.Equal((uint)'y', In(Rbr));
        Assert.Equal(0x01u, In(Iir));
    }

    [Fact]
    public void FcrClearsReceiveFifo()
    {
        Out(Fcr, 0x01);
        Out(Mcr, 0x10);
        Out(Thr, 1);
        Out(Thr, 2);
        Assert.Equal(1u, In(Lsr) & 1);
        Out(Fcr, 0x03);
        Assert.Equal(0u, In(Lsr) & 1);
    }

    [Fact]
    public void LoopbackFeedsTransmitterIntoReceiverAndMutesTheIrq()
    {
        Out(Fcr, 0x01);
        Out(Mcr, 0x18); // LOOP | OUT2
        Out(Ier, 0x01);
        Out(Thr, 0x42);
        Assert.Empty(_sent);
        Assert.Equal(0xC4u, In(Iir)); // trigger level 1: one byte is enough
        Assert.False(_irq.Level); // OUT2 pin is forced inactive in loopback
        Assert.Equal(0x42u, In(Rbr));
        _uart.Receive("z"u8); // the serial input is disconnected in loopback
        Assert.Equal(0u, In(Lsr) & 1);
        Out(Mcr, 0x08);
        Assert.Equal(1u, In(Lsr) & 1);
        Assert.Equal((uint)'z', In(Rbr));
    }

    [Fact]
    public void LoopbackOverrunRaisesReceiverLineStatusFirst()
    {
        Out(Fcr, 0x01);
        Out(Mcr, 0x10);
        Out(Ier, 0x07);
        for (int i = 0; i < 17; i++)
        {
            Out(Thr, (uint)i);
        }
        Assert.Equal(0xC6u, In(Iir)); // RLS outranks RDA
        uint lsr = In(Lsr);
        Assert.Equal(0x02u, lsr & 0x02);
        Assert.Equal(0u, In(Lsr) & 0x02); // error bits clear on read
        Assert.Equal(0xC4u, In(Iir));
        Assert.Equal(1, _uart.Overruns.Value);
    }

    [Fact]
    public void ModemStatusDeltasInLoopback()
    {
        Out(Mcr, 0x10);
        _ = In(Msr);
        Out(Ier, 0x08);
        Out(Mcr, 0x10 | 0x01); // DTR -> DSR
        Assert.Equal(0x00u, In(Iir) & 0x0F);
        uint msr = In(Msr);
        Assert.Equal(0x20u, msr & 0x20);
        Assert.Equal(0x02u, msr & 0x0F); // DDSR
        Assert.Equal(0u, In(Msr) & 0x0F);
        Assert.Equal(0x01u, In(Iir) & 0x0F);
        Out(Mcr, 0x10 | 0x04); // OUT1 -> RI
        _ = In(Msr);
        Out(Mcr, 0x10);
        Assert.Equal(0x04u, In(Msr) & 0x04); // TERI on RI's trailing edge
    }

    [Fact]
    public void OutsideLoopbackTheTerminalLooksConnected()
    {
        Assert.Equal(0xB0u, In(Msr) & 0xF0);
    }

    [Fact]
    public void InterruptPriorityOrder()
    {
        Out(Fcr, 0x01);
        Out(Mcr, 0x08);
        Out(Ier, 0x0F);
        // THRE is pending from enabling ETBEI, data is more important.
        _uart.Receive("a"u8);
        Assert.Equal(0xC4u, In(Iir));
        _ = In(Rbr);
        Assert.Equal(0xC2u, In(Iir));
        Assert.Equal(0xC1u, In(Iir));
    }

    [Fact]
    public void WritesToStatusRegistersAreIgnoredAndCounted()
    {
        Out(Lsr, 0xFF);
        Out(Msr, 0xFF);
        Assert.Equal(0x60u, In(Lsr));
        Assert.Equal(2, _uart.ReadOnlyRegisterWrites.Value);
    }

    [Fact]
    public void BacklogOverflowIsCounted()
    {
        var big = new byte[70_000];
        int accepted = _uart.Receive(big);
        Assert.True(accepted < big.Length);
        Assert.Equal(big.Length - accepted, _uart.BacklogDrops.Value);
    }

    [Fact]
    public void SinkMayEchoIntoTheReceiverOnTheSameThread()
    {
        Uart16550? uart = null;
        uart = new Uart16550(new RecordingIrqLine(), b => uart!.Receive([b]));
        uart.PortWrite(Thr, 1, 0x41);
        Assert.Equal(1u, uart.PortRead(Lsr, 1) & 1);
        Assert.Equal(0x41u, uart.PortRead(Rbr, 1));
    }

    [Fact]
    public async Task TerminalInputFromAnotherThreadArrivesCompleteAndInOrder()
    {
        _uart.PortWrite(Fcr, 1, 0x01);
        var writer = Task.Run(() =>
        {
            for (int i = 0; i < 5000; i++)
            {
                _uart.Receive([(byte)i]);
            }
        });
        var got = new List<byte>();
        while (got.Count < 5000)
        {
            if ((In(Lsr) & 1) != 0)
            {
                got.Add((byte)In(Rbr));
            }
            else if (writer.IsCompleted && (In(Lsr) & 1) == 0 && got.Count < 5000)
            {
                break;
            }
        }
        await writer;
        Assert.Equal(5000, got.Count);
        for (int i = 0; i < got.Count; i++)
        {
            Assert.Equal((byte)i, got[i]);
        }
    }

    [Fact]
    public void StreamSinkReceivesBytes()
    {
        var stream = new MemoryStream();
        var uart = new Uart16550(new RecordingIrqLine(), stream);
        uart.PortWrite(Thr, 1, 0x41);
        Assert.Equal([0x41], stream.ToArray());
    }
}
