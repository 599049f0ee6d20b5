using SharpVisor.Core;
using SharpVisor.Devices.Pci;

namespace SharpVisor.Devices.Tests.Pci;

/// <summary>
/// The PCI Express and ATS capabilities as Linux discovers them: pci_find_capability walks the list
/// from 0x34 (drivers/pci/pci.c), pci_cfg_space_size reads 0x100 only for PCIe functions
/// (drivers/pci/probe.c), pci_find_ext_capability walks the extended chain through ECAM, and
/// pci_enable_ats writes Enable and STU (drivers/pci/ats.c).
/// </summary>
public class PciAtsCapabilityTests
{
    static int FindCapability(PciTestRig rig, int device, byte id)
    {
        if ((rig.Cf8Read(0, device, 0, PciConfig.Status, 2) & (uint)PciStatus.CapabilitiesList) == 0)
        {
            return 0;
        }
        int pos = (int)rig.Cf8Read(0, device, 0, PciConfig.CapabilitiesPointer, 1) & ~3;
        for (int ttl = 48; pos >= 0x40 && ttl > 0; ttl--)   // Linux's PCI_FIND_CAP_TTL bounds the walk
        {
            if (rig.Cf8Read(0, device, 0, pos, 1) == id)
            {
                return pos;
            }
            pos = (int)rig.Cf8Read(0, device, 0, pos + 1, 1) & ~3;
        }
        return 0;
    }

    /// <summary>The extended capability chain from 0x100, asserting it terminates within 4 KiB.</summary>
    static List<(int Offset, ushort Id, int Version)> ExtendedChain(PciTestRig rig, int device)
    {
        var chain = new List<(int, ushort, int)>();
        int pos = 0x100;
        for (int ttl = (4096 - 256) / 8; ttl > 0; ttl--)
        {
            uint header = rig.EcamRead(0, device, 0, pos, 4);
            if (header == 0 || header == uint.MaxValue)
            {
                return chain;
            }
            chain.Add((pos, (ushort)header, (int)(header >> 16) & 0xF));
            pos = (int)(header >> 20) & 0xFFC;
            if (pos < 0x100)
            {
                return chain;
            }
        }
        Assert.Fail("the extended capability chain does not terminate");
        return chain;
    }

    [Fact]
    public void AtsFunctionIsAPcieIntegratedEndpointWithAnAtsExtendedCapability()
    {
        using var rig = new PciTestRig();
        var f = new TestFunction();
        f.Msi(is64Bit: true, perVectorMask: false);
        f.AddAtsCapability();
        rig.Bus.Add(f, 3, 0);

        int pcie = FindCapability(rig, 3, PciCapabilityId.PciExpress);
        Assert.NotEqual(0, pcie);
        Assert.NotEqual(0, FindCapability(rig, 3, PciCapabilityId.Msi));   // the earlier list is intact
        uint flags = rig.Cf8Read(0, 3, 0, pcie + 2, 2);
        Assert.Equal(2u, flags & 0xF);                                        // capability version 2
        Assert.Equal((uint)PciExpressDeviceType.RootComplexIntegratedEndpoint, (flags >> 4) & 0xF);
        Assert.Equal(0u, rig.Cf8Read(0, 3, 0, pcie + 0x0C, 4));               // an RCiEP has no link

        var chain = ExtendedChain(rig, 3);
        var ats = Assert.Single(chain);
        Assert.Equal((0x100, PciCapabilityId.ExtendedAts, 1), ats);
        // ATS Capability: Page Aligned Request (Linux pci_ats_page_aligned refuses ATS without it),
        // Invalidate Queue Depth 0 (= 32).
        Assert.Equal(1u << 5, rig.EcamRead(0, 3, 0, 0x104, 2));
        Assert.Equal(0u, rig.EcamRead(0, 3, 0, 0x106, 2));
        // Beyond the chain, extended space reads 0 (not all ones: the function has 4 KiB).
        Assert.Equal(0u, rig.EcamRead(0, 3, 0, 0x108, 4));
        Assert.False(f.AtsEnabled);                                           // the identity provider has no ATS
    }

    [Fact]
    public void ReadOnlyFieldsIgnoreWritesAndControlTakesEnableAndStu()
    {
        using var rig = new PciTestRig();
        var f = new TestFunction();
        f.AddAtsCapability();
        rig.Bus.Add(f, 3, 0);
        int pcie = FindCapability(rig, 3, PciCapabilityId.PciExpress);
        uint flagsBefore = rig.Cf8Read(0, 3, 0, pcie + 2, 2);
        rig.Cf8Write(0, 3, 0, pcie + 2, 2, 0xFFFF);
        Assert.Equal(flagsBefore, rig.Cf8Read(0, 3, 0, pcie + 2, 2));
        rig.EcamWrite(0, 3, 0, 0x100, 4, 0xFFFF_FFFF);                        // header
        Assert.Equal(0x0001_000Fu, rig.EcamRead(0, 3, 0, 0x100, 4));
        rig.EcamWrite(0, 3, 0, 0x104, 2, 0xFFFF);                             // ATS Capability
        Assert.Equal(1u << 5, rig.EcamRead(0, 3, 0, 0x104, 2));
        rig.EcamWrite(0, 3, 0, 0x106, 2, 0xFFFF);                             // ATS Control: only Enable and STU stick
        Assert.Equal(0x801Fu, rig.EcamRead(0, 3, 0, 0x106, 2));
        rig.EcamWrite(0, 3, 0, 0x106, 2, 0);
        Assert.Equal(0u, rig.EcamRead(0, 3, 0, 0x106, 2));
    }

    [Fact]
    public void ConventionalFunctionHasNoExtendedSpace()
    {
        using var rig = new PciTestRig();
        var f = new TestFunction();
        f.Msi(is64Bit: true, perVectorMask: false);
        rig.Bus.Add(f, 3, 0);
        Assert.Equal(0, FindCapability(rig, 3, PciCapabilityId.PciExpress));
        Assert.Equal(0xFFFF_FFFFu, rig.EcamRead(0, 3, 0, 0x100, 4));
        Assert.Equal(0, f.AtsCapabilityOffset);
    }

    [Fact]
    public void AtsOnTopOfAnExistingPcieCapabilityKeepsItsType()
    {
        using var rig = new PciTestRig();
        var f = new TestFunction();
        int pcie = f.PciExpress();
        f.Extended(PciCapabilityId.ExtendedAdvancedErrorReporting, 0x48);
        f.AddAtsCapability();
        rig.Bus.Add(f, 3, 0);
        Assert.Equal((uint)PciExpressDeviceType.Endpoint, (rig.Cf8Read(0, 3, 0, pcie + 2, 2) >> 4) & 0xF);
        var chain = ExtendedChain(rig, 3);
        Assert.Equal([PciCapabilityId.ExtendedAdvancedErrorReporting, PciCapabilityId.ExtendedAts], chain.Select(c => c.Id));
        Assert.Equal(f.AtsCapabilityOffset, chain[1].Offset);
        Assert.Throws<InvalidOperationException>(() => new TestFunction().AddAtsCapabilityTwice());
        Assert.Throws<InvalidOperationException>(f.AddAtsCapability);        // layout fixed once on a bus
    }

    [Fact]
    public void WithoutAnAtsProviderEnableChangesNothingForDma()
    {
        using var rig = new PciTestRig();
        var f = new TestFunction();
        f.AddAtsCapability();
        rig.Bus.Add(f, 3, 0);
        rig.Cf8Write(0, 3, 0, PciConfig.Command, 2, (uint)PciCommand.BusMaster);
        rig.EcamWrite(0, 3, 0, f.AtsCapabilityOffset + 6, 2, 0x8000);
        Assert.False(f.AtsEnabled);
        Assert.Equal(DmaStatus.Ok, f.DmaSpace.Write(0x1000, [0x5A]));
        Assert.Equal(0x5Au, rig.Ram.ReadU32(0x1000) & 0xFF);
        Assert.DoesNotContain(f.Counters, c => c.Name.Contains("devtlb"));
    }
}
