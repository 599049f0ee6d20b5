using System.Text.Json;
using SharpVisor.Core;
using SharpVisor.Devices.Pci;

namespace SharpVisor.Devices.Tests.Pci;

/// <summary>
/// The edu device's saved state (issue 9): its PCI function plus its own registers and DMA buffer.
/// A device driven part way is saved, a fresh one restored from it, and both must then read and
/// behave alike; a state out of range is refused and changes nothing.
/// </summary>
public sealed class EduStateTests
{
    const int Dev = 3;
    const ulong Source = 0x10_0000, Destination = 0x20_0000;

    /// <summary>One edu device on a bus of its own, as the board puts it (INTx, bus mastering on).</summary>
    sealed class Bench : IDisposable
    {
        public readonly PciTestRig Rig = new();
        public readonly RecordingIrqLine Line = new();
        public readonly EduDevice Edu = new();
        readonly ulong _bar;

        public Bench()
        {
            Rig.Bus.Add(Edu, Dev, 0, Line);
            _bar = PciFirmware.AssignResources(Rig.Bus).Single(a => a.Function == Edu).Address;
            Rig.EcamWrite(0, Dev, 0, PciConfig.Command, 2, (uint)(PciCommand.MemorySpace | PciCommand.BusMaster));
            var pattern = new byte[EduDevice.DmaBufferSize];
            for (int i = 0; i < pattern.Length; i++)
            {
                pattern[i] = (byte)(i * 13 + 7);
            }
            Assert.True(Rig.Ram.TryWrite(Source, pattern));
        }

        public uint Read32(int reg) => (uint)Rig.Memory.Read(_bar + (ulong)reg, 4);
        public void Write32(int reg, uint value) => Rig.Memory.Write(_bar + (ulong)reg, 4, value);
        public ulong Read64(int reg) => Rig.Memory.Read(_bar + (ulong)reg, 8);
        public void Write64(int reg, ulong value) => Rig.Memory.Write(_bar + (ulong)reg, 8, value);

        public void Dma(ulong source, ulong destination, ulong count, ulong command)
        {
            Write64(EduDevice.RegDmaSource, source);
            Write64(EduDevice.RegDmaDestination, destination);
            Write64(EduDevice.RegDmaCount, count);
            Write64(EduDevice.RegDmaCommand, command);
        }

        /// <summary>Everything a driver reads, plus the INTx line.</summary>
        public string Observe() =>
            $"live={Read32(EduDevice.RegLiveness):x} fact={Read32(EduDevice.RegFactorial):x} status={Read32(EduDevice.RegStatus):x} "
            + $"irq={Read32(EduDevice.RegInterruptStatus):x} src={Read64(EduDevice.RegDmaSource):x} dst={Read64(EduDevice.RegDmaDestination):x} "
            + $"cnt={Read64(EduDevice.RegDmaCount):x} cmd={Read64(EduDevice.RegDmaCommand):x} intx={Line.Level} "
            + $"pcistatus={Rig.EcamRead(0, Dev, 0, PciConfig.Status, 2):x}";

        public byte[] RamAt(ulong address, int length)
        {
            var b = new byte[length];
            Assert.True(Rig.Ram.TryRead(address, b));
            return b;
        }

        public void Dispose() => Rig.Dispose();
    }

    static string Json<T>(T value) => JsonSerializer.Serialize(value);

    /// <summary>A device part way through a driver's work: every register set, an interrupt pending on INTx, data in the buffer.</summary>
    static Bench Driven()
    {
        var b = new Bench();
        b.Write32(EduDevice.RegLiveness, 0x1234_5678);
        b.Write32(EduDevice.RegFactorial, 12);
        b.Write32(EduDevice.RegStatus, EduDevice.StatusRaiseOnFactorial);
        b.Dma(Source, EduDevice.DmaBufferAddress + 0x100, 0x300, EduDevice.DmaCommandStart); // RAM → buffer
        b.Dma(Source, EduDevice.DmaBufferAddress + EduDevice.DmaBufferSize - 8, 0x10, EduDevice.DmaCommandStart | EduDevice.DmaCommandRaiseInterrupt); // past the buffer: error bit, interrupt
        b.Write32(EduDevice.RegInterruptRaise, 0x40);
        Assert.True(b.Line.Level);
        return b;
    }

    [Fact]
    public void A_restored_device_reads_and_behaves_as_the_original()
    {
        using var original = Driven();
        var state = original.Edu.SaveState();
        using var restored = new Bench();
        restored.Edu.RestoreState(state);
        Assert.Equal(original.Observe(), restored.Observe());
        Assert.Equal(Json(state), Json(restored.Edu.SaveState()));

        foreach (var b in new[] { original, restored })
        {
            b.Dma(EduDevice.DmaBufferAddress, Destination, EduDevice.DmaBufferSize, EduDevice.DmaCommandStart | EduDevice.DmaCommandToRam); // buffer → RAM
            b.Write32(EduDevice.RegInterruptAcknowledge, 0x140);
            b.Write32(EduDevice.RegFactorial, 13);
            b.Write32(EduDevice.RegLiveness, 0x42);
        }
        Assert.Equal(original.RamAt(Destination, EduDevice.DmaBufferSize), restored.RamAt(Destination, EduDevice.DmaBufferSize));
        Assert.Contains(original.RamAt(Destination, EduDevice.DmaBufferSize), x => x != 0); // the buffer's contents did travel
        Assert.Equal(original.Observe(), restored.Observe());
        Assert.Equal(original.Line.Level, restored.Line.Level);
        Assert.True(restored.Line.Level); // the factorial interrupt (status bit 7) kept it up
        restored.Write32(EduDevice.RegInterruptAcknowledge, EduDevice.FactorialInterrupt);
        Assert.False(restored.Line.Level);
    }

    public static TheoryData<string> BadFields() =>
    [
        "version", "missing function", "function of another device", "short buffer", "missing buffer",
        "factorial value", "computing bit", "dma start bit", "unknown dma bit", "intx without status",
    ];

    [Theory]
    [MemberData(nameof(BadFields))]
    public void A_bad_field_is_refused_and_changes_nothing(string field)
    {
        using var b = Driven();
        var good = b.Edu.SaveState();
        var bad = field switch
        {
            "version" => good with { Version = 2 },
            "missing function" => good with { Function = null! },
            "function of another device" => good with { Function = good.Function with { Config = WithByte(good.Function.Config, PciConfig.DeviceId, 0x12) } },
            "short buffer" => good with { DmaBuffer = new byte[100] },
            "missing buffer" => good with { DmaBuffer = null! },
            "factorial value" => good with { Factorial = 7 }, // no n! is 7
            "computing bit" => good with { Status = good.Status | EduDevice.StatusComputing },
            "dma start bit" => good with { DmaCommand = good.DmaCommand | EduDevice.DmaCommandStart },
            "unknown dma bit" => good with { DmaCommand = good.DmaCommand | 0x100 },
            "intx without status" => good with { InterruptStatus = 0 },
            _ => throw new ArgumentException(field),
        };
        string before = b.Observe();
        var e = Assert.Throws<InvalidStateException>(() => b.Edu.RestoreState(bad));
        Assert.DoesNotContain('\n', e.Message);
        Assert.Equal(Json(good), Json(b.Edu.SaveState()));
        Assert.Equal(before, b.Observe());
    }

    [Fact]
    public void Every_factorial_the_register_can_hold_is_accepted()
    {
        using var b = new Bench();
        for (uint n = 0; n <= 40; n++)
        {
            b.Write32(EduDevice.RegFactorial, n);
            var state = b.Edu.SaveState();
            using var fresh = new Bench();
            fresh.Edu.RestoreState(state);
            Assert.Equal(b.Read32(EduDevice.RegFactorial), fresh.Read32(EduDevice.RegFactorial));
        }
    }

    static byte[] WithByte(byte[] bytes, int offset, byte value)
    {
        var copy = bytes.ToArray();
        copy[offset] = value;
        return copy;
    }
}
