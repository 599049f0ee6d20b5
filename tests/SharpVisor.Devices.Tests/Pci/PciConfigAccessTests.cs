using SharpVisor.Devices.Pci;

namespace SharpVisor.Devices.Tests.Pci;

public sealed class PciConfigAccessTests
{
    [Fact]
    public void HostBridgeAndLpcIdentifyAsQ35()
    {
        using var rig = new PciTestRig();
        // Linux (and every PCI probe) keys on vendor/device and class code.
        Assert.Equal(0x29C0_8086u, rig.EcamRead(0, 0, 0, 0x00, 4));
        Assert.Equal(0x0600_00u, rig.EcamRead(0, 0, 0, 0x08, 4) >> 8);
        Assert.Equal(0x2918_8086u, rig.EcamRead(0, 0x1F, 0, 0x00, 4));
        Assert.Equal(0x0601_00u, rig.EcamRead(0, 0x1F, 0, 0x08, 4) >> 8);
        // PCIEXBAR of the MCH reports the ECAM window: base 0xB0000000, 256 buses, enabled.
        Assert.Equal(0xB000_0001u, rig.EcamRead(0, 0, 0, Q35HostBridgeFunction.PciExBar, 4));
    }

    [Fact]
    public void Cf8AndEcamSeeTheSameBytes()
    {
        using var rig = new PciTestRig();
        var edu = new EduDevice();
        rig.Bus.Add(edu, 3, 0);
        PciFirmware.AssignResources(rig.Bus);
        foreach (var (dev, fn) in new[] { (0, 0), (3, 0), (0x1F, 0) })
        {
            for (int reg = 0; reg < 256; reg += 4)
            {
                uint viaEcam = rig.EcamRead(0, dev, fn, reg, 4);
                Assert.Equal(viaEcam, rig.Cf8Read(0, dev, fn, reg, 4));
                for (int b = 0; b < 4; b++)
                {
                    Assert.Equal((viaEcam >> (8 * b)) & 0xFF, rig.Cf8Read(0, dev, fn, reg + b, 1));
                    Assert.Equal((viaEcam >> (8 * b)) & 0xFF, rig.EcamRead(0, dev, fn, reg + b, 1));
                }
                Assert.Equal(viaEcam & 0xFFFF, rig.Cf8Read(0, dev, fn, reg, 2));
                Assert.Equal(viaEcam >> 16, rig.Cf8Read(0, dev, fn, reg + 2, 2));
            }
        }
    }

    [Fact]
    public void WritesThroughOneMechanismAreSeenThroughTheOther()
    {
        using var rig = new PciTestRig();
        rig.Bus.Add(new EduDevice(), 3, 0);
        rig.Cf8Write(0, 3, 0, PciConfig.InterruptLine, 1, 0x2B);
        Assert.Equal(0x2Bu, rig.EcamRead(0, 3, 0, PciConfig.InterruptLine, 1));
        rig.EcamWrite(0, 3, 0, PciConfig.CacheLineSize, 1, 0x10);
        Assert.Equal(0x10u, rig.Cf8Read(0, 3, 0, PciConfig.CacheLineSize, 1));
        // Read-only registers ignore writes from either side.
        rig.Cf8Write(0, 3, 0, PciConfig.VendorId, 4, 0xFFFF_FFFF);
        rig.EcamWrite(0, 3, 0, PciConfig.RevisionId, 4, 0);
        Assert.Equal(0x11E8_1234u, rig.EcamRead(0, 3, 0, 0, 4));
        Assert.Equal(0xFF00_0010u, rig.EcamRead(0, 3, 0, PciConfig.RevisionId, 4));
    }

    [Fact]
    public void AbsentFunctionsReadAllOnes()
    {
        using var rig = new PciTestRig();
        // Linux pci_bus_read_dev_vendor_id treats 0xFFFFFFFF as "no device".
        Assert.Equal(0xFFFF_FFFFu, rig.EcamRead(0, 5, 0, 0, 4));
        Assert.Equal(0xFFFF_FFFFu, rig.Cf8Read(0, 5, 0, 0, 4));
        Assert.Equal(0xFFFFu, rig.Cf8Read(0, 5, 0, 2, 2));
        Assert.Equal(0xFFu, rig.Cf8Read(0, 5, 0, 3, 1));
        Assert.Equal(0xFFFF_FFFFu, rig.EcamRead(0, 0, 1, 0, 4));
        // Other buses are empty (no bridges).
        Assert.Equal(0xFFFF_FFFFu, rig.EcamRead(1, 0, 0, 0, 4));
        Assert.Equal(0xFFFF_FFFFu, rig.Cf8Read(1, 0, 0, 0, 4));
        // Writes to absent functions vanish without effect.
        rig.EcamWrite(0, 5, 0, PciConfig.Command, 2, 7);
        Assert.Equal(0xFFFF_FFFFu, rig.EcamRead(0, 5, 0, 0, 4));
    }

    [Fact]
    public void Cf8WithoutEnableBitReadsAllOnesAndLatchesDwordsOnly()
    {
        using var rig = new PciTestRig();
        rig.Ports.Write(0xCF8, 4, 0x0000_0000); // bus 0 dev 0 fn 0, but bit 31 clear
        Assert.Equal(0xFFFF_FFFFu, rig.Ports.Read(0xCFC, 4));
        rig.Ports.Write(0xCF8, 4, 0x8000_0003); // low two bits read-only zero
        Assert.Equal(0x8000_0000u, rig.Ports.Read(0xCF8, 4));
        Assert.Equal(0x29C0_8086u, rig.Ports.Read(0xCFC, 4));
        // A byte write to 0xCF8 is not CONFIG_ADDRESS and leaves it alone.
        rig.Ports.Write(0xCF8, 1, 0);
        Assert.Equal(0x8000_0000u, rig.Ports.Read(0xCF8, 4));
        // 0xCF9 (ICH9 reset control) is left for its owner.
        Assert.Null(rig.Ports.DeviceAt(0xCF9));
    }

    [Fact]
    public void EcamWindowCanBeSmallerAndOutOfRangeBusesAreAbsent()
    {
        using var rig = new PciTestRig(busCount: 64);
        Assert.Equal(64UL << 20, rig.Host.EcamSize);
        Assert.Equal(63, rig.Host.EndBus);
        Assert.Equal(0xB000_0005u, rig.EcamRead(0, 0, 0, Q35HostBridgeFunction.PciExBar, 4));
        Assert.True(rig.Memory.TryFindMmio(rig.Host.EcamBase + (63UL << 20), out _));
        Assert.False(rig.Memory.TryFindMmio(rig.Host.EcamBase + (64UL << 20), out _));
    }

    [Fact]
    public void MisalignedEcamAccessIsCountedNotForwarded()
    {
        using var rig = new PciTestRig();
        Assert.Equal(0xFFFF_FFFFu, rig.EcamRead(0, 0, 0, 0x02, 4));
        Assert.Equal(1, rig.Host.Ecam.BadAccesses.Value);
    }

    [Fact]
    public void MultiFunctionBitFollowsTheFunctionsPresent()
    {
        using var rig = new PciTestRig();
        var f0 = new TestFunction();
        rig.Bus.Add(f0, 2, 0);
        Assert.Equal(0x00u, rig.EcamRead(0, 2, 0, PciConfig.HeaderType, 1));
        rig.Bus.Add(new TestFunction(), 2, 3);
        // Linux pci_scan_slot probes functions 1-7 only when function 0 has header type bit 7.
        Assert.Equal(0x80u, rig.EcamRead(0, 2, 0, PciConfig.HeaderType, 1));
        Assert.Equal(0x00u, rig.EcamRead(0, 2, 3, PciConfig.HeaderType, 1));
        Assert.Equal(0x00u, rig.EcamRead(0, 0, 0, PciConfig.HeaderType, 1));
        Assert.Equal((ushort)(2 << 3 | 3), rig.Bus.Find(2, 3)!.RequesterId);
    }

    [Fact]
    public void ConventionalFunctionHasNoExtendedSpaceButPcieFunctionDoes()
    {
        using var rig = new PciTestRig();
        rig.Bus.Add(new EduDevice(), 3, 0);
        var pcie = new TestFunction();
        pcie.PciExpress();
        rig.Bus.Add(pcie, 4, 0);
        // Linux pci_cfg_space_size_ext: 0xFFFFFFFF at 0x100 means 256 bytes; 0 is an empty ext list.
        Assert.Equal(0xFFFF_FFFFu, rig.EcamRead(0, 3, 0, 0x100, 4));
        Assert.Equal(0u, rig.EcamRead(0, 4, 0, 0x100, 4));
    }

    [Fact]
    public void StatusErrorBitsAreWriteOneToClear()
    {
        using var rig = new PciTestRig();
        var f = new TestFunction();
        f.Capability(PciCapabilityId.VendorSpecific, 8);
        rig.Bus.Add(f, 2, 0);
        f.SetStatus(PciStatus.ReceivedMasterAbort | PciStatus.DetectedParityError);
        uint status = rig.EcamRead(0, 2, 0, PciConfig.Status, 2);
        Assert.Equal((uint)(PciStatus.ReceivedMasterAbort | PciStatus.DetectedParityError | PciStatus.CapabilitiesList), status);
        // Writing 0 changes nothing; writing 1 clears only that bit; the capability bit is read-only.
        rig.EcamWrite(0, 2, 0, PciConfig.Status, 2, 0);
        Assert.Equal(status, rig.EcamRead(0, 2, 0, PciConfig.Status, 2));
        rig.EcamWrite(0, 2, 0, PciConfig.Status, 2, (uint)(PciStatus.ReceivedMasterAbort | PciStatus.CapabilitiesList));
        Assert.Equal((uint)(PciStatus.DetectedParityError | PciStatus.CapabilitiesList), rig.EcamRead(0, 2, 0, PciConfig.Status, 2));
        // A dword write to the command register with status bits 0 leaves status alone (Linux pci_write_config_word
        // of the command register is a 16-bit access; a 32-bit write must not clear error bits it has 0 for).
        rig.EcamWrite(0, 2, 0, PciConfig.Command, 4, 0x0000_0002);
        Assert.Equal((uint)(PciStatus.DetectedParityError | PciStatus.CapabilitiesList), rig.EcamRead(0, 2, 0, PciConfig.Status, 2));
    }

    [Fact]
    public void CommandRegisterKeepsOnlyImplementedBits()
    {
        using var rig = new PciTestRig();
        rig.Bus.Add(new TestFunction(), 2, 0);
        rig.EcamWrite(0, 2, 0, PciConfig.Command, 2, 0xFFFF);
        Assert.Equal((uint)(PciCommand.IoSpace | PciCommand.MemorySpace | PciCommand.BusMaster | PciCommand.ParityErrorResponse
            | PciCommand.SerrEnable | PciCommand.InterruptDisable), rig.EcamRead(0, 2, 0, PciConfig.Command, 2));
    }

    [Fact]
    public void LpcReportsPmBaseOnlyWhenGiven()
    {
        using var plain = new PciTestRig();
        Assert.Equal(0u, plain.EcamRead(0, 0x1F, 0, Ich9LpcBridge.PmBase, 4));
        Assert.Equal(0u, plain.EcamRead(0, 0x1F, 0, Ich9LpcBridge.AcpiControl, 1));

        using var ram = new SharpVisor.Core.GuestMemory(1 << 20);
        var host = new PciHostBridge(new SharpVisor.Core.PhysicalMemoryMap(ram), new SharpVisor.Core.PortBus(), null,
            new IdentityDmaSpaceProvider(ram), pmBase: 0x600);
        Assert.Equal(0x601u, host.Bus.ConfigRead(0, 0x1F << 3, Ich9LpcBridge.PmBase, 4));
        Assert.Equal(0x80u, host.Bus.ConfigRead(0, 0x1F << 3, Ich9LpcBridge.AcpiControl, 1));
        host.Bus.ConfigWrite(0, 0x1F << 3, Ich9LpcBridge.PmBase, 4, 0x1001);
        Assert.Equal(0x601u, host.Bus.ConfigRead(0, 0x1F << 3, Ich9LpcBridge.PmBase, 4)); // fixed by the VMM
    }

    [Fact]
    public void IntxRoutingSwizzlesPinsOverFourGsis()
    {
        Assert.Equal(16, PciIntxRouting.Gsi(0, 1));
        Assert.Equal(17, PciIntxRouting.Gsi(1, 1));
        Assert.Equal(17, PciIntxRouting.Gsi(0, 2));
        Assert.Equal(19, PciIntxRouting.Gsi(3, 1));
        Assert.Equal(16, PciIntxRouting.Gsi(4, 1));
        Assert.Equal(16, PciIntxRouting.Gsi(3, 2));

        using var rig = new PciTestRig();
        rig.Bus.Add(new EduDevice(), 5, 0);
        PciFirmware.AssignResources(rig.Bus, interruptLine: PciIntxRouting.InterruptLine);
        Assert.Equal(17u, rig.EcamRead(0, 5, 0, PciConfig.InterruptLine, 1));
    }

    [Fact]
    public void CountersOfEveryFunctionCanBeRegistered()
    {
        using var rig = new PciTestRig();
        rig.Bus.Add(new EduDevice(), 3, 0);
        var registry = new SharpVisor.Core.CounterRegistry();
        rig.Host.RegisterCounters(registry);
        var names = registry.All.Select(c => c.Name).ToList();
        Assert.Contains("pci.bar_conflicts", names);
        Assert.Contains("pci.edu.dma_errors", names);
        Assert.Contains("pci.edu.dma_refused", names);
    }

    [Fact]
    public void RouterSharesOneGsiBetweenFunctionsThatSwizzleToIt()
    {
        var gsis = new Dictionary<int, RecordingIrqLine>();
        var route = PciIntxRouting.CreateRouter(gsi => gsis[gsi] = new RecordingIrqLine());
        using var rig = new PciTestRig();
        var a = new EduDevice();
        var b = new EduDevice();
        rig.Bus.Add(a, 3, 0, route(3, a.InterruptPin)); // GSI 19
        rig.Bus.Add(b, 7, 0, route(7, b.InterruptPin)); // GSI 19 too
        Assert.Null(route(4, 0));
        Assert.Equal([19], gsis.Keys);
        var bars = PciFirmware.AssignResources(rig.Bus);
        rig.Memory.Write(bars.Single(x => x.Function == a).Address + EduDevice.RegInterruptRaise, 4, 1);
        rig.Memory.Write(bars.Single(x => x.Function == b).Address + EduDevice.RegInterruptRaise, 4, 1);
        rig.Memory.Write(bars.Single(x => x.Function == a).Address + EduDevice.RegInterruptAcknowledge, 4, 1);
        Assert.True(gsis[19].Level); // b still asserts the shared line
        rig.Memory.Write(bars.Single(x => x.Function == b).Address + EduDevice.RegInterruptAcknowledge, 4, 1);
        Assert.False(gsis[19].Level);
    }
}
