using System.Text.Json;
using SharpVisor.Core;
using SharpVisor.Devices.Pci;

namespace SharpVisor.Devices.Tests.Pci;

/// <summary>
/// A PCI function's state: saved from a programmed function, restored into a fresh one on another
/// machine, the copy decodes its BARs at the same place, reads the same configuration, MSI-X table
/// and PBA, and delivers the same pending interrupts; a state that changes anything read-only is refused.
/// </summary>
public sealed class PciFunctionStateTests
{
    const int Dev = 5;

    static TestFunction Function()
    {
        var f = new TestFunction { InterruptPin = 1 };
        f.AddBar(0, PciBarKind.Memory32, 0x1000);
        f.AddBar(2, PciBarKind.Memory64, 0x4000); // MSI-X table at 0, PBA at 0x2000
        f.PciExpress();
        f.PowerManagement();
        f.Msi(is64Bit: true, perVectorMask: true);
        f.MsiX(vectors: 4, tableBar: 2, tableOffset: 0, pbaBar: 2, pbaOffset: 0x2000);
        return f;
    }

    static (PciTestRig Rig, TestFunction F, RecordingIrqLine Intx) Machine()
    {
        var rig = new PciTestRig();
        var f = Function();
        var intx = new RecordingIrqLine();
        rig.Bus.Add(f, Dev, 0, intx);
        return (rig, f, intx);
    }

    static ulong Bar(PciTestRig rig, int index) => rig.EcamRead(0, Dev, 0, PciConfig.Bar0 + 4 * index, 4) & ~0xFUL
        | (index == 2 ? (ulong)rig.EcamRead(0, Dev, 0, PciConfig.Bar0 + 12, 4) << 32 : 0);

    static string Observe(PciTestRig rig, TestFunction f, RecordingIrqLine intx)
    {
        var config = new uint[1024];
        for (int o = 0; o < 4096; o += 4)
        {
            config[o / 4] = rig.EcamRead(0, Dev, 0, o, 4);
        }
        ulong msix = Bar(rig, 2);
        var table = Enumerable.Range(0, 4 * 4 + 2).Select(i => i < 16 ? rig.Memory.Read(msix + 4UL * (uint)i, 4) : rig.Memory.Read(msix + 0x2000, 8));
        lock (rig.Msi.Messages)
        {
            return $"{string.Join(',', config)} | {string.Join(',', table)} | intx={intx.Level} bm={f.BusMasterEnabled} | "
                + string.Join(';', rig.Msi.Messages);
        }
    }

    [Fact]
    public void A_restored_function_reads_maps_and_interrupts_like_the_original()
    {
        var (rigA, a, intxA) = Machine();
        using var _ = rigA;
        PciFirmware.AssignResources(rigA.Bus);
        uint command = rigA.EcamRead(0, Dev, 0, PciConfig.Command, 2);
        rigA.EcamWrite(0, Dev, 0, PciConfig.Command, 2, command | (uint)(PciCommand.MemorySpace | PciCommand.BusMaster));
        rigA.EcamWrite(0, Dev, 0, PciConfig.CacheLineSize, 1, 0x10);
        ulong msix = Bar(rigA, 2);
        for (uint v = 0; v < 4; v++)
        {
            rigA.Memory.Write(msix + 16 * v, 4, 0xFEE0_0000 | v << 12);
            rigA.Memory.Write(msix + 16 * v + 8, 4, 0x30 + v);
            rigA.Memory.Write(msix + 16 * v + 12, 4, v == 3 ? 1u : 0u); // vector 3 stays masked
        }
        int cap = a.MsiXCapabilityOffset;
        rigA.EcamWrite(0, Dev, 0, cap + 2, 2, 0xC000); // enable + function mask
        a.Raise(1);                                      // pending in the PBA
        a.Raise(3);
        a.Raise(2);

        var state = a.SaveFunctionState();
        var (rigB, b, intxB) = Machine();
        using var __ = rigB;
        ((IPersistent<PciFunctionState>)b).RestoreState(state);
        Assert.Equal(JsonSerializer.Serialize(state), JsonSerializer.Serialize(b.SaveFunctionState()));
        Assert.Equal(Observe(rigA, a, intxA), Observe(rigB, b, intxB));
        // The BAR decodes at the restored address on the new machine.
        Assert.Equal(0xA5A5_0010UL, rigB.Memory.Read(Bar(rigB, 0) + 0x10, 4));

        foreach (var (rig, f) in new[] { (rigA, a), (rigB, b) })
        {
            rig.EcamWrite(0, Dev, 0, cap + 2, 2, 0x8000);                 // function mask off: 1 and 2 go out
            rig.Memory.Write(Bar(rig, 2) + 16 * 3 + 12, 4, 0);            // unmask 3
            f.Raise(0);
        }
        Assert.Equal(Observe(rigA, a, intxA), Observe(rigB, b, intxB));
        Assert.Equal(4, rigB.Msi.Messages.Count);
    }

    [Fact]
    public void A_restored_intx_condition_drives_the_new_line()
    {
        var (rigA, a, _) = Machine();
        using var _a = rigA;
        a.Raise(0); // no MSI enabled: INTx
        var (rigB, b, intxB) = Machine();
        using var _b = rigB;
        b.RestoreFunctionState(a.SaveFunctionState());
        Assert.True(intxB.Level);
        Assert.NotEqual(0u, rigB.EcamRead(0, Dev, 0, PciConfig.Status, 2) & (uint)PciStatus.InterruptStatus);
        b.Lower();
        Assert.False(intxB.Level);
    }

    [Theory]
    [InlineData(PciConfig.DeviceId, 0x77)]
    [InlineData(PciConfig.ClassCode + 2, 0x03)]
    [InlineData(PciConfig.Bar0, 0x08)]                 // BAR type bits: prefetchable
    [InlineData(PciConfig.CapabilitiesPointer, 0x44)]
    [InlineData(PciConfig.HeaderType, 0x80)]
    [InlineData(0x200, 0x01)]                          // extended space past every capability
    public void A_change_to_a_read_only_byte_is_refused(int offset, byte value)
    {
        var (rig, f, _) = Machine();
        using var _r = rig;
        PciFirmware.AssignResources(rig.Bus);
        var good = f.SaveFunctionState();
        var config = good.Config.ToArray();
        config[offset] ^= value;
        var e = Assert.Throws<InvalidStateException>(() => f.RestoreFunctionState(good with { Config = config }));
        Assert.Contains($"0x{offset:x3}", e.Message);
        Assert.Equal(JsonSerializer.Serialize(good), JsonSerializer.Serialize(f.SaveFunctionState()));
    }

    [Fact]
    public void Bad_msi_x_power_and_intx_fields_are_refused()
    {
        var (rig, f, _) = Machine();
        using var _r = rig;
        var good = f.SaveFunctionState();
        var pm = good.Config.ToArray();
        pm[f.PowerManagementCapabilityOffset + 4] = 1; // D1 is not supported
        var table = good.MsixTable.ToArray();
        table[12] = 0x81;                               // reserved Vector Control bit
        PciFunctionState[] bad =
        [
            good with { Version = 7 },
            good with { Config = pm },
            good with { MsixTable = table },
            good with { MsixTable = good.MsixTable[..16] },
            good with { MsixPba = [0x10, 0, 0, 0, 0, 0, 0, 0] }, // vector 4 of 4
            good with { IntxAsserted = true },                   // Interrupt Status says otherwise
        ];
        foreach (var s in bad)
        {
            Assert.Throws<InvalidStateException>(() => f.RestoreFunctionState(s));
            Assert.Equal(JsonSerializer.Serialize(good), JsonSerializer.Serialize(f.SaveFunctionState()));
        }
        // Writable bits may differ: the same state with a new cache line size and D3hot is taken.
        var ok = good.Config.ToArray();
        ok[PciConfig.CacheLineSize] = 0x20;
        ok[f.PowerManagementCapabilityOffset + 4] |= 3;
        f.RestoreFunctionState(good with { Config = ok });
        Assert.Equal(0x20u, rig.EcamRead(0, Dev, 0, PciConfig.CacheLineSize, 1));
        Assert.True(f.InD3Hot);
    }
}
