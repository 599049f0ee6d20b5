using SharpVisor.Devices.Legacy;
using static SharpVisor.Devices.Tests.Persistence.StateRoundTrip;

namespace SharpVisor.Devices.Tests.Persistence;

public class UartStateTests
{
    static Uart16550 Build(Rig rig) => new(rig.Line("irq4"), b => rig.Log($"tx {b:x2}"), "com1");

    static void W(Uart16550 u, int reg, uint v) => u.PortWrite((ushort)reg, 1, v);

    /// <summary>Divisor latch, FIFO at trigger 14, every interrupt enabled, a full FIFO with input waiting behind it, an overrun and modem deltas pending.</summary>
    static void Drive(Uart16550 u, Rig rig)
    {
        W(u, 3, 0x80);
        W(u, 0, 0x01);
        W(u, 1, 0x00);
        W(u, 3, 0x1B);
        W(u, 2, 0xC7);
        W(u, 1, 0x0F);
        W(u, 4, 0x0B);
        W(u, 7, 0x5A);
        u.Receive("hello, serial world!"u8);
        u.PortRead(0, 1);
        u.PortRead(0, 1);
        W(u, 0, 'A');
        // Loopback with a full FIFO: the looped byte overruns; leaving loopback changes the modem lines.
        W(u, 4, 0x1F);
        W(u, 0, 'B');
        W(u, 4, 0x0B);
        rig.Advance(1000);
    }

    static void ReadAll(Uart16550 u, Rig rig, List<string> reads)
    {
        for (int round = 0; round < 24; round++)
        {
            // IIR first (it clears THRE), then LSR (clears errors), MSR (clears deltas), then RBR.
            foreach (int reg in (ReadOnlySpan<int>)[2, 5, 6, 1, 3, 4, 7, 0])
            {
                reads.Add($"{reg}:{u.PortRead((ushort)reg, 1):x2}");
            }
            if (round == 5)
            {
                u.Receive("more"u8);
                W(u, 0, 'C');
            }
            if (round == 10)
            {
                W(u, 3, 0x9B);
                reads.Add($"dll:{u.PortRead(0, 1):x2} dlm:{u.PortRead(1, 1):x2}");
                W(u, 3, 0x1B);
            }
            rig.Advance(100);
        }
    }

    [Fact]
    public void RestoredUartReadsAndInterruptsAsTheOriginal()
        => Check<Uart16550, Uart16550.State>(Build, Drive, ReadAll);

    [Fact]
    public void RestoredUartWithFifosOffAndThrePending()
        => Check<Uart16550, Uart16550.State>(Build, (u, rig) =>
        {
            W(u, 4, 0x08);
            W(u, 1, 0x03);
            u.Receive("xy"u8);
        }, ReadAll);

    [Fact]
    public void RestoredUartRereadsTheLastByteFromAnEmptyRbr()
        => Check<Uart16550, Uart16550.State>(Build, (u, rig) =>
        {
            u.Receive("z"u8);
            u.PortRead(0, 1);
        }, ReadAll);

    [Fact]
    public void OutOfRangeFieldsAreRefusedAndChangeNothing()
    {
        var rig = new Rig();
        var u = Build(rig);
        var fresh = u.SaveState();
        Drive(u, rig);
        Refused(u, rig, fresh with { Version = 2 }, "version 2");
        Refused(u, rig, fresh with { Ier = 0x10 }, "Ier");
        Refused(u, rig, fresh with { Mcr = 0x20 }, "Mcr");
        Refused(u, rig, fresh with { Fcr = 0x06 }, "Fcr");
        Refused(u, rig, fresh with { LsrErrors = 0x01 }, "LsrErrors");
        Refused(u, rig, fresh with { MsrDeltas = 0x10 }, "MsrDeltas");
        Refused(u, rig, fresh with { RxFifo = new byte[2] }, "RxFifo");
        Refused(u, rig, fresh with { Fcr = 0x01, RxFifo = new byte[17] }, "RxFifo");
        Refused(u, rig, fresh with { PendingInput = new byte[64 * 1024 + 1] }, "PendingInput");
        Refused(u, rig, fresh with { PendingInput = new byte[1] }, "PendingInput");
    }
}
