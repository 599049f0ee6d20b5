using SharpVisor.Core;
using SharpVisor.Devices.Interrupts;
using static SharpVisor.Devices.Tests.Persistence.StateRoundTrip;

namespace SharpVisor.Devices.Tests.Persistence;

public class IoApicStateTests
{
    sealed class LoggedSink(Rig rig) : IMsiSink
    {
        public void SendMsi(ulong address, uint data, ushort requesterId) => rig.Log($"msi {address:x} {data:x} from {requesterId:x}");
    }

    static IoApic Build(Rig rig) => new(new LoggedSink(rig), 0xF0, 2);

    static void Rte(IoApic io, int pin, ulong value)
    {
        io.MmioWrite(0x00, 4, (ulong)(0x10 + 2 * pin + 1));
        io.MmioWrite(0x10, 4, value >> 32);
        io.MmioWrite(0x00, 4, (ulong)(0x10 + 2 * pin));
        io.MmioWrite(0x10, 4, value & 0xFFFF_FFFF);
    }

    /// <summary>
    /// An edge pin, a masked level pin that is asserted, an unmasked level pin delivered and not
    /// yet EOIed (Remote IRR), a remappable-format entry, a new ID and IOREGSEL left pointing
    /// at a redirection entry.
    /// </summary>
    static void Drive(IoApic io, Rig rig)
    {
        io.MmioWrite(0x00, 4, 0);
        io.MmioWrite(0x10, 4, 5u << 24);
        Rte(io, 4, (1UL << 56) | 0x31);
        Rte(io, 9, (1UL << 16) | (1UL << 15) | 0x39);
        Rte(io, 10, (3UL << 56) | (1UL << 15) | (1UL << 11) | 0x3A);
        Rte(io, 16, (0x1234UL << 49) | (1UL << 48) | (1UL << 15) | 0x40);
        io.GetPin(10).SetLevel(true);
        io.GetPin(9).SetLevel(true);
        io.GetPin(16).SetLevel(true);
        io.MmioWrite(0x00, 4, 0x10 + 2 * 9);
    }

    static void After(IoApic io, Rig rig, List<string> reads)
    {
        void ReadAll(string when)
        {
            var line = new System.Text.StringBuilder(when);
            line.Append($" sel{io.MmioRead(0x00, 4):x} win{io.MmioRead(0x10, 4):x}");
            for (uint index = 0; index < 0x10 + 48; index++)
            {
                io.MmioWrite(0x00, 4, index);
                line.Append($" {io.MmioRead(0x10, 4):x}");
            }
            reads.Add(line.ToString());
        }
        ReadAll("start");
        io.MmioWrite(0x00, 4, 0x10 + 2 * 9);
        io.MmioWrite(0x10, 4, (1UL << 15) | 0x39); // unmask the asserted level pin: delivered now
        io.OnEoi(0x3A);                            // still asserted: delivered again
        io.GetPin(10).SetLevel(false);
        io.OnEoi(0x3A);
        io.MmioWrite(0x40, 4, 0x40);               // EOI register
        io.GetPin(4).SetLevel(true);
        io.GetPin(4).SetLevel(false);
        io.GetPin(4).SetLevel(true);
        io.GetPin(16).SetLevel(false);
        ReadAll("end");
    }

    [Fact]
    public void RestoredIoApicDeliversAndReadsAsTheOriginal()
        => Check<IoApic, IoApic.State>(Build, Drive, After);

    [Fact]
    public void OutOfRangeFieldsAreRefusedAndChangeNothing()
    {
        var rig = new Rig();
        var io = Build(rig);
        var fresh = io.SaveState();
        Drive(io, rig);
        ulong[] Entries(int pin, ulong value)
        {
            var entries = (ulong[])fresh.Redirection.Clone();
            entries[pin] = value;
            return entries;
        }
        Refused(io, rig, fresh with { Version = 7 }, "version 7");
        Refused(io, rig, fresh with { Id = 16 }, "Id");
        Refused(io, rig, fresh with { Select = 0x100 }, "Select");
        Refused(io, rig, fresh with { Redirection = new ulong[23] }, "Redirection");
        Refused(io, rig, fresh with { PinAsserted = new bool[25] }, "PinAsserted");
        Refused(io, rig, fresh with { Redirection = Entries(3, 1UL << 12) }, "Redirection[3]");
        Refused(io, rig, fresh with { Redirection = Entries(5, 1UL << 17) }, "Redirection[5]");
        Refused(io, rig, fresh with { Redirection = Entries(7, (1UL << 14) | 0x30) }, "Redirection[7]");
    }
}
