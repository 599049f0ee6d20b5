using SharpVisor.Core;
using SharpVisor.Devices.Pci;

namespace SharpVisor.Devices.Tests.Pci;

/// <summary>A q35-like machine without CPUs: 16 MiB RAM, the memory map, the port bus and the root complex.</summary>
sealed class PciTestRig : IDisposable
{
    public readonly GuestMemory Ram;
    public readonly PhysicalMemoryMap Memory;
    public readonly PortBus Ports = new();
    public readonly RecordingMsiSink Msi = new();
    public readonly PciHostBridge Host;

    public PciTestRig(ulong ramBytes = 16 << 20, int busCount = 256, IDmaSpaceProvider? dma = null)
    {
        Ram = new GuestMemory(ramBytes);
        Memory = new PhysicalMemoryMap(Ram);
        Host = new PciHostBridge(Memory, Ports, Msi, dma ?? new IdentityDmaSpaceProvider(Ram), busCount: busCount);
    }

    public PciBus Bus => Host.Bus;

    public static uint Cf8Address(int bus, int device, int function, int register) =>
        0x8000_0000u | (uint)bus << 16 | (uint)device << 11 | (uint)function << 8 | ((uint)register & 0xFC);

    public uint Cf8Read(int bus, int device, int function, int register, int size)
    {
        Ports.Write(0xCF8, 4, Cf8Address(bus, device, function, register));
        return Ports.Read((ushort)(0xCFC + (register & 3)), size);
    }

    public void Cf8Write(int bus, int device, int function, int register, int size, uint value)
    {
        Ports.Write(0xCF8, 4, Cf8Address(bus, device, function, register));
        Ports.Write((ushort)(0xCFC + (register & 3)), size, value);
    }

    public ulong EcamAddress(int bus, int device, int function, int register) =>
        Host.EcamBase + ((ulong)bus << 20 | (ulong)device << 15 | (ulong)function << 12 | (uint)register);

    public uint EcamRead(int bus, int device, int function, int register, int size) =>
        (uint)Memory.Read(EcamAddress(bus, device, function, register), size);

    public void EcamWrite(int bus, int device, int function, int register, int size, uint value) =>
        Memory.Write(EcamAddress(bus, device, function, register), size, value);

    public void Dispose() => Ram.Dispose();
}

sealed class RecordingMsiSink : IMsiSink
{
    public readonly List<(ulong Address, uint Data, ushort RequesterId)> Messages = [];

    public void SendMsi(ulong address, uint data, ushort requesterId)
    {
        lock (Messages)
        {
            Messages.Add((address, data, requesterId));
        }
    }
}

sealed class RecordingIrqLine : IIrqLine
{
    public bool Level { get; private set; }
    public int Changes { get; private set; }

    public void SetLevel(bool asserted)
    {
        Level = asserted;
        Changes++;
    }
}

/// <summary>A configurable function for exercising the base class.</summary>
sealed class TestFunction(ushort deviceId = 0x0001) : PciFunction("test", 0x1B36, deviceId, 0x05_80_00, 0x01, 0x1AF4, 0x1100)
{
    public readonly List<(int Bar, ulong Offset, int Size, ulong Value, bool Write)> Accesses = [];

    public new byte InterruptPin
    {
        get => base.InterruptPin;
        init => base.InterruptPin = value;
    }

    public void AddBar(int index, PciBarKind kind, ulong size, bool prefetchable = false) => DefineBar(index, kind, size, prefetchable);
    public int Msi(bool is64Bit, bool perVectorMask) => AddMsiCapability(is64Bit, perVectorMask);
    public int MsiX(int vectors, int tableBar, uint tableOffset, int pbaBar, uint pbaOffset) =>
        AddMsiXCapability(vectors, tableBar, tableOffset, pbaBar, pbaOffset);
    public int PciExpress() => AddPciExpressCapability();
    public int PowerManagement() => AddPowerManagementCapability();
    public int Extended(ushort id, int length) => AddExtendedCapability(id, 1, length);
    public int Capability(byte id, int length) => AddCapability(id, length);
    public void Raise(int vector = 0) => RaiseInterrupt(vector);
    public void Lower() => LowerInterrupt();
    public void SetStatus(PciStatus bits) => SetStatusBits(bits);
    public IDmaSpace DmaSpace => Dma;
    public Func<int, int, uint, uint>? ReadHook { get; set; }
    public void Set(int offset, int size, uint value) => SetConfig(offset, size, value);

    protected override uint OnConfigRead(int offset, int size, uint value) => ReadHook?.Invoke(offset, size, value) ?? value;

    protected override ulong BarRead(int bar, ulong offset, int size)
    {
        lock (Accesses)
        {
            Accesses.Add((bar, offset, size, 0, false));
        }
        return 0xA5A5_0000UL + offset;
    }

    protected override void BarWrite(int bar, ulong offset, int size, ulong value)
    {
        lock (Accesses)
        {
            Accesses.Add((bar, offset, size, value, true));
        }
    }
}

static class TestFunctionExtensions
{
    public static void AddAtsCapabilityTwice(this TestFunction f)
    {
        f.AddAtsCapability();
        f.AddAtsCapability();
    }
}
