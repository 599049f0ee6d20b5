using SharpVisor.Core;
using SharpVisor.Devices.Pci;

namespace SharpVisor.Devices.Tests.Pci;

public sealed class PciInterruptTests
{
    const int Dev = 2;

    static TestFunction FullFunction()
    {
        var f = new TestFunction { InterruptPin = 1 };
        f.AddBar(0, PciBarKind.Memory32, 16 << 10); // MSI-X table at 0, PBA at 0x2000
        f.PciExpress();
        f.Msi(is64Bit: true, perVectorMask: true);
        f.MsiX(vectors: 70, tableBar: 0, tableOffset: 0, pbaBar: 0, pbaOffset: 0x2000);
        f.Extended(PciCapabilityId.ExtendedVendorSpecific, 8);
        f.Extended(PciCapabilityId.ExtendedAdvancedErrorReporting, 0x48);
        return f;
    }

    /// <summary>Walks the capability list like Linux __pci_find_next_cap_ttl (at most 48 hops).</summary>
    static List<(byte Id, int Offset)> WalkCapabilities(PciTestRig rig, int device)
    {
        var found = new List<(byte, int)>();
        if ((rig.EcamRead(0, device, 0, PciConfig.Status, 2) & (uint)PciStatus.CapabilitiesList) == 0)
        {
            return found;
        }
        int pos = (int)rig.EcamRead(0, device, 0, PciConfig.CapabilitiesPointer, 1);
        for (int ttl = 48; ttl > 0 && pos >= 0x40; ttl--)
        {
            pos &= ~3;
            uint header = rig.EcamRead(0, device, 0, pos, 2);
            found.Add(((byte)header, pos));
            pos = (int)(header >> 8);
        }
        return found;
    }

    [Fact]
    public void CapabilityWalkFindsPcieMsiAndMsiX()
    {
        using var rig = new PciTestRig();
        var f = FullFunction();
        rig.Bus.Add(f, Dev, 0);
        var caps = WalkCapabilities(rig, Dev);
        Assert.Equal([PciCapabilityId.PciExpress, PciCapabilityId.Msi, PciCapabilityId.MsiX], caps.Select(c => c.Id));
        Assert.All(caps, c => Assert.InRange(c.Offset, 0x40, 0xFC));
        Assert.Equal(f.MsiCapabilityOffset, caps[1].Offset);

        // Extended list at 0x100 (PCIe Base 4.0, 7.6.3): ID, version, next offset in bits 31:20.
        var ext = new List<ushort>();
        int pos = 0x100;
        for (int ttl = 0; ttl < 16 && pos != 0; ttl++)
        {
            uint header = rig.EcamRead(0, Dev, 0, pos, 4);
            ext.Add((ushort)header);
            Assert.Equal(1u, (header >> 16) & 0xF);
            pos = (int)(header >> 20);
        }
        Assert.Equal([PciCapabilityId.ExtendedVendorSpecific, PciCapabilityId.ExtendedAdvancedErrorReporting], ext);
    }

    [Fact]
    public void PciExpressCapabilityDescribesAVersion2EndpointOnAX1Link()
    {
        using var rig = new PciTestRig();
        var f = FullFunction();
        rig.Bus.Add(f, Dev, 0);
        int cap = f.PciExpressCapabilityOffset;
        uint flags = rig.EcamRead(0, Dev, 0, cap + 2, 2);
        Assert.Equal(2u, flags & 0xF);                 // capability version 2
        Assert.Equal(0u, (flags >> 4) & 0xF);          // PCI Express Endpoint
        uint devCap = rig.EcamRead(0, Dev, 0, cap + 4, 4);
        Assert.Equal(0u, devCap & 7);                  // 128-byte max payload supported
        Assert.NotEqual(0u, devCap & (1u << 15));      // role-based error reporting
        uint linkCap = rig.EcamRead(0, Dev, 0, cap + 0x0C, 4);
        uint linkSta = rig.EcamRead(0, Dev, 0, cap + 0x12, 2);
        Assert.Equal(1u, linkCap & 0xF);               // 2.5 GT/s
        Assert.Equal(1u, (linkCap >> 4) & 0x3F);       // x1
        Assert.Equal(linkCap & 0xF, linkSta & 0xF);    // trained at the maximum speed...
        Assert.Equal((linkCap >> 4) & 0x3F, (linkSta >> 4) & 0x3F); // ...and width
        // Device Control: Linux programs max payload / read request size; reserved bits stay 0.
        rig.EcamWrite(0, Dev, 0, cap + 8, 2, 0xFFFF);
        Assert.Equal(0x79FFu, rig.EcamRead(0, Dev, 0, cap + 8, 2));
    }

    static void ProgramMsi(PciTestRig rig, TestFunction f, ulong address, ushort data, bool enable = true)
    {
        int cap = f.MsiCapabilityOffset;
        rig.EcamWrite(0, Dev, 0, cap + 4, 4, (uint)address);
        rig.EcamWrite(0, Dev, 0, cap + 8, 4, (uint)(address >> 32));
        rig.EcamWrite(0, Dev, 0, cap + 0xC, 2, data);
        if (enable)
        {
            rig.EcamWrite(0, Dev, 0, cap + 2, 2, 1);
        }
    }

    [Fact]
    public void MsiIsSentWithTheRequesterIdAndHonoursTheMaskBit()
    {
        using var rig = new PciTestRig();
        var f = FullFunction();
        rig.Bus.Add(f, Dev, 0);
        int cap = f.MsiCapabilityOffset;
        uint control = rig.EcamRead(0, Dev, 0, cap + 2, 2);
        Assert.Equal(1u << 7 | 1u << 8, control); // 64-bit, per-vector masking, 1 vector, disabled
        ProgramMsi(rig, f, 0xFEE0_1000, 0x4041);
        Assert.True(f.MsiEnabled);

        f.Raise();
        Assert.Equal([(0xFEE0_1000UL, 0x4041u, (ushort)(Dev << 3))], rig.Msi.Messages);

        // Masked: the pending bit is set and nothing is sent until the mask clears.
        rig.EcamWrite(0, Dev, 0, cap + 0x10, 4, 1);
        f.Raise();
        Assert.Single(rig.Msi.Messages);
        Assert.Equal(1u, rig.EcamRead(0, Dev, 0, cap + 0x14, 4));
        rig.EcamWrite(0, Dev, 0, cap + 0x10, 4, 0);
        Assert.Equal(2, rig.Msi.Messages.Count);
        Assert.Equal(0u, rig.EcamRead(0, Dev, 0, cap + 0x14, 4));
        // The pending register is read-only to software.
        rig.EcamWrite(0, Dev, 0, cap + 0x14, 4, 1);
        Assert.Equal(0u, rig.EcamRead(0, Dev, 0, cap + 0x14, 4));
    }

    [Fact]
    public void MsiAddressLowBitsAreReadOnly()
    {
        using var rig = new PciTestRig();
        var f = FullFunction();
        rig.Bus.Add(f, Dev, 0);
        rig.EcamWrite(0, Dev, 0, f.MsiCapabilityOffset + 4, 4, 0xFEE0_0003);
        Assert.Equal(0xFEE0_0000u, rig.EcamRead(0, Dev, 0, f.MsiCapabilityOffset + 4, 4));
    }

    sealed class MsiXRig : IDisposable
    {
        public readonly PciTestRig Rig = new();
        public readonly TestFunction Function = FullFunction();
        public readonly ulong BarBase;

        public MsiXRig()
        {
            Rig.Bus.Add(Function, Dev, 0);
            BarBase = PciFirmware.AssignResources(Rig.Bus).Single(a => a.Function == Function).Address;
        }

        public int Cap => Function.MsiXCapabilityOffset;

        public void ProgramEntry(int vector, ulong address, uint data, bool masked)
        {
            ulong entry = BarBase + (ulong)vector * 16;
            Rig.Memory.Write(entry, 8, address);
            Rig.Memory.Write(entry + 8, 4, data);
            Rig.Memory.Write(entry + 12, 4, masked ? 1u : 0u);
        }

        public ulong Pba(int qword) => Rig.Memory.Read(BarBase + 0x2000 + (ulong)qword * 8, 8);

        public void Dispose() => Rig.Dispose();
    }

    [Fact]
    public void MsiXTableIsReachableThroughTheBarAndStartsMasked()
    {
        using var m = new MsiXRig();
        uint control = m.Rig.EcamRead(0, Dev, 0, m.Cap + 2, 2);
        Assert.Equal(69u, control & 0x7FF); // table size N-1
        Assert.Equal(0u, m.Rig.EcamRead(0, Dev, 0, m.Cap + 4, 4)); // BIR 0, offset 0
        Assert.Equal(0x2000u, m.Rig.EcamRead(0, Dev, 0, m.Cap + 8, 4));
        for (int v = 0; v < 70; v++)
        {
            Assert.Equal(1UL, m.Rig.Memory.Read(m.BarBase + (ulong)v * 16 + 12, 4));
        }
        m.ProgramEntry(5, 0xFEE0_2000, 0x31, masked: true);
        Assert.Equal(0xFEE0_2000UL, m.Rig.Memory.Read(m.BarBase + 5 * 16, 8));
        Assert.Equal(0x31UL, m.Rig.Memory.Read(m.BarBase + 5 * 16 + 8, 4));
        // Reserved Vector Control bits read 0.
        m.Rig.Memory.Write(m.BarBase + 5 * 16 + 12, 4, 0xFFFF_FFFF);
        Assert.Equal(1UL, m.Rig.Memory.Read(m.BarBase + 5 * 16 + 12, 4));
        // Accesses other than aligned dword/qword are ignored (table unchanged).
        m.Rig.Memory.Write(m.BarBase + 5 * 16, 1, 0);
        Assert.Equal(0xFEE0_2000UL, m.Rig.Memory.Read(m.BarBase + 5 * 16, 8));
        // The rest of the BAR still reaches the device.
        Assert.Equal(0xA5A5_3000UL, m.Rig.Memory.Read(m.BarBase + 0x3000, 4));
    }

    [Fact]
    public void MaskedMsiXVectorSetsItsPendingBitAndIsDeliveredOnUnmask()
    {
        using var m = new MsiXRig();
        m.ProgramEntry(65, 0xFEE0_0000, 0x51, masked: true);
        m.Rig.EcamWrite(0, Dev, 0, m.Cap + 2, 2, 0x8000); // MSI-X enable
        Assert.True(m.Function.MsiXEnabled);

        m.Function.Raise(65);
        Assert.Empty(m.Rig.Msi.Messages);
        Assert.Equal(1UL << 1, m.Pba(1)); // vector 65 = qword 1, bit 1
        Assert.True(m.Function.IsMsiXPending(65));

        m.Rig.Memory.Write(m.BarBase + 65 * 16 + 12, 4, 0); // unmask
        Assert.Equal([(0xFEE0_0000UL, 0x51u, (ushort)(Dev << 3))], m.Rig.Msi.Messages);
        Assert.Equal(0UL, m.Pba(1));

        // Unmasked now: the next raise goes straight out.
        m.Function.Raise(65);
        Assert.Equal(2, m.Rig.Msi.Messages.Count);
        // PBA writes are ignored.
        m.Rig.Memory.Write(m.BarBase + 0x2000, 8, ulong.MaxValue);
        Assert.Equal(0UL, m.Pba(0));
    }

    [Fact]
    public void MsiXFunctionMaskHoldsEveryVectorUntilCleared()
    {
        using var m = new MsiXRig();
        m.ProgramEntry(0, 0xFEE0_0000, 0x40, masked: false);
        m.ProgramEntry(3, 0xFEE0_1000, 0x43, masked: false);
        m.Rig.EcamWrite(0, Dev, 0, m.Cap + 2, 2, 0xC000); // enable + function mask
        m.Function.Raise(0);
        m.Function.Raise(3);
        Assert.Empty(m.Rig.Msi.Messages);
        Assert.Equal(0b1001UL, m.Pba(0));
        m.Rig.EcamWrite(0, Dev, 0, m.Cap + 2, 2, 0x8000);
        Assert.Equal([0x40u, 0x43u], m.Rig.Msi.Messages.Select(x => x.Data));
        Assert.Equal(0UL, m.Pba(0));
        // A vector beyond the table is dropped and counted, never thrown.
        m.Function.Raise(70);
        Assert.Equal(1, m.Function.InterruptsDropped.Value);
    }

    [Fact]
    public void MsiXTakesPrecedenceOverMsi()
    {
        using var m = new MsiXRig();
        ProgramMsi(m.Rig, m.Function, 0xFEE0_0000, 0x99);
        m.ProgramEntry(0, 0xFEE0_0000, 0x77, masked: false);
        m.Rig.EcamWrite(0, Dev, 0, m.Cap + 2, 2, 0x8000);
        m.Function.Raise(0);
        Assert.Equal(0x77u, m.Rig.Msi.Messages.Single().Data);
    }

    [Fact]
    public void IntxFollowsTheConditionInterruptDisableAndMsiEnable()
    {
        using var rig = new PciTestRig();
        var line = new RecordingIrqLine();
        var f = FullFunction();
        rig.Bus.Add(f, Dev, 0, line);
        Assert.Equal(1u, rig.EcamRead(0, Dev, 0, PciConfig.InterruptPin, 1));

        f.Raise();
        Assert.True(line.Level);
        Assert.NotEqual(0u, rig.EcamRead(0, Dev, 0, PciConfig.Status, 2) & (uint)PciStatus.InterruptStatus);

        // Interrupt Disable drops the pin but the status bit still shows the condition
        // (Linux pci_check_and_mask_intx relies on that for shared-line handlers).
        rig.EcamWrite(0, Dev, 0, PciConfig.Command, 2, (uint)PciCommand.InterruptDisable);
        Assert.False(line.Level);
        Assert.NotEqual(0u, rig.EcamRead(0, Dev, 0, PciConfig.Status, 2) & (uint)PciStatus.InterruptStatus);
        rig.EcamWrite(0, Dev, 0, PciConfig.Command, 2, 0);
        Assert.True(line.Level);

        f.Lower();
        Assert.False(line.Level);
        Assert.Equal(0u, rig.EcamRead(0, Dev, 0, PciConfig.Status, 2) & (uint)PciStatus.InterruptStatus);

        // With MSI enabled, raising sends a message and leaves INTx alone.
        ProgramMsi(rig, f, 0xFEE0_0000, 0x30);
        int changes = line.Changes;
        f.Raise();
        Assert.Single(rig.Msi.Messages);
        Assert.False(line.Level);
        Assert.Equal(changes, line.Changes);
    }

    [Fact]
    public void WiredOrLineStaysAssertedWhileAnySourceIs()
    {
        var output = new RecordingIrqLine();
        var shared = new WiredOrIrqLine(output);
        var a = shared.CreateInput();
        var b = shared.CreateInput();
        a.SetLevel(true);
        b.SetLevel(true);
        a.SetLevel(false);
        Assert.True(output.Level);
        b.SetLevel(false);
        Assert.False(output.Level);
        Assert.Equal(2, output.Changes);
    }

    [Fact]
    public void BusMasterOffRefusesDmaAndOnAllowsIt()
    {
        using var rig = new PciTestRig();
        var f = new TestFunction();
        rig.Bus.Add(f, Dev, 0);
        rig.Ram.WriteU32(0x1000, 0xDEAD_BEEF);
        Span<byte> buffer = stackalloc byte[4];
        // Linux drivers call pci_set_master before DMA; until then the function may not master.
        Assert.Equal(DmaStatus.Blocked, f.DmaSpace.Read(0x1000, buffer));
        Assert.Equal(DmaStatus.Blocked, f.DmaSpace.Write(0x1000, [1, 2, 3, 4]));
        Assert.Equal(2, f.DmaRefused.Value);
        Assert.Equal(0xDEAD_BEEFu, rig.Ram.ReadU32(0x1000));

        rig.EcamWrite(0, Dev, 0, PciConfig.Command, 2, (uint)PciCommand.BusMaster);
        Assert.Equal(DmaStatus.Ok, f.DmaSpace.Read(0x1000, buffer));
        Assert.Equal(0xDEAD_BEEFu, BitConverter.ToUInt32(buffer));
        Assert.Equal(DmaStatus.Ok, f.DmaSpace.Write(0x1000, [1, 2, 3, 4]));
        Assert.Equal(0x0403_0201u, rig.Ram.ReadU32(0x1000));
    }

    sealed class RecordingProvider(GuestMemory ram) : IDmaSpaceProvider
    {
        public readonly List<ushort> Requesters = [];
        public IDmaSpace ForRequester(ushort requesterId)
        {
            Requesters.Add(requesterId);
            return new IdentityDmaSpace(ram);
        }
    }

    [Fact]
    public void EachFunctionGetsTheDmaSpaceOfItsRequesterId()
    {
        using var ram = new GuestMemory(1 << 20);
        var provider = new RecordingProvider(ram);
        var memory = new PhysicalMemoryMap(ram);
        var host = new PciHostBridge(memory, new PortBus(), null, provider);
        host.Bus.Add(new TestFunction(), 3, 2);
        Assert.Equal([(ushort)0x0000, (ushort)0x00F8, (ushort)0x001A], provider.Requesters);
    }

    [Fact]
    public void DevicesCanComputeAndUpdateRegisters()
    {
        using var rig = new PciTestRig();
        var f = new TestFunction();
        int cap = f.Capability(PciCapabilityId.VendorSpecific, 8);
        rig.Bus.Add(f, Dev, 0);
        f.ReadHook = (offset, size, value) => offset == cap + 4 ? 0x1234_5678u : value;
        Assert.Equal(0x1234_5678u, rig.EcamRead(0, Dev, 0, cap + 4, 4));
        f.ReadHook = null;
        f.Set(cap + 4, 4, 0xAABB_CCDD);
        Assert.Equal(0xAABB_CCDDu, rig.Cf8Read(0, Dev, 0, cap + 4, 4));
        rig.EcamWrite(0, Dev, 0, cap + 4, 4, 0); // still read-only to the guest
        Assert.Equal(0xAABB_CCDDu, rig.EcamRead(0, Dev, 0, cap + 4, 4));
    }

    [Fact]
    public async Task ConcurrentRaisesAndMaskTogglesLoseNoInterrupt()
    {
        using var m = new MsiXRig();
        m.ProgramEntry(1, 0xFEE0_0000, 0x61, masked: false);
        m.Rig.EcamWrite(0, Dev, 0, m.Cap + 2, 2, 0x8000);
        ulong control = m.BarBase + 16 + 12;
        var raisers = Enumerable.Range(0, 2).Select(_ => Task.Run(() =>
        {
            for (int i = 0; i < 2000; i++)
            {
                m.Function.Raise(1);
            }
        })).ToArray();
        for (int i = 0; i < 500; i++)
        {
            m.Rig.Memory.Write(control, 4, (ulong)(i & 1 ^ 1));
        }
        await Task.WhenAll(raisers);
        m.Rig.Memory.Write(control, 4, 0);
        // Each raise was sent at once (4000 - masked of them) or set the pending bit; every unmask
        // that found the bit set sent one message. So between 1 and "masked" extra messages went
        // out for the masked raises, and the final unmask left nothing pending.
        long masked = m.Function.InterruptsMasked.Value;
        int sent = m.Rig.Msi.Messages.Count;
        Assert.False(m.Function.IsMsiXPending(1));
        Assert.InRange(sent, 4000 - masked + (masked > 0 ? 1 : 0), 4000);
        Assert.All(m.Rig.Msi.Messages, x => Assert.Equal(0x61u, x.Data));
    }
}
