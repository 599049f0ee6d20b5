using SharpVisor.Devices.Interrupts;
using static SharpVisor.Devices.Tests.Interrupts.ApicTestBoard;

namespace SharpVisor.Devices.Tests.Interrupts;

public class X2ApicMsrTests
{
    const ulong Enable = 1 << 11;
    const ulong Extd = 1 << 10;
    const ulong Base = 0xFEE0_0000;

    [Fact]
    public void X2ApicMsrsFaultInXApicMode()
    {
        var board = new ApicTestBoard(1);
        Assert.False(board.Apics[0].TryReadMsr(0x802, out _));
        Assert.False(board.Apics[0].TryWriteMsr(0x808, 0));
    }

    [Theory]
    [InlineData(0x80Bu)] // EOI is write-only
    [InlineData(0x83Fu)] // SELF_IPI is write-only
    [InlineData(0x809u)] // APR does not exist in x2APIC mode
    [InlineData(0x80Cu)] // RRD
    [InlineData(0x80Eu)] // DFR does not exist in x2APIC mode
    [InlineData(0x831u)] // ICR2 folded into the 64-bit ICR
    [InlineData(0x82Fu)] // CMCI LVT: max LVT is 5
    [InlineData(0x800u)] // reserved
    [InlineData(0x8FFu)] // reserved
    public void ReadsThatFault(uint msr)
    {
        var board = new ApicTestBoard(1);
        EnableX2Apic(board.Apics[0]);
        Assert.False(board.Apics[0].TryReadMsr(msr, out _));
    }

    [Theory]
    [InlineData(0x802u, 0UL)]  // ID is read-only
    [InlineData(0x803u, 0UL)]  // version
    [InlineData(0x80Au, 0UL)]  // PPR
    [InlineData(0x80Du, 0UL)]  // LDR is derived from the ID
    [InlineData(0x810u, 0UL)]  // ISR
    [InlineData(0x818u, 0UL)]  // TMR
    [InlineData(0x820u, 0UL)]  // IRR
    [InlineData(0x839u, 0UL)]  // current count
    [InlineData(0x80Eu, 0UL)]  // DFR
    [InlineData(0x80Bu, 1UL)]  // EOI takes only zero
    [InlineData(0x828u, 1UL)]  // ESR takes only zero
    [InlineData(0x83Fu, 0x100UL)] // SELF_IPI bits 31:8 reserved
    [InlineData(0x808u, 1UL << 32)] // upper half of a 32-bit register
    public void WritesThatFault(uint msr, ulong value)
    {
        var board = new ApicTestBoard(1);
        EnableX2Apic(board.Apics[0]);
        Assert.False(board.Apics[0].TryWriteMsr(msr, value));
    }

    [Fact]
    public void LegalX2ApicAccesses()
    {
        var board = new ApicTestBoard(6);
        var apic = board.Apics[5];
        EnableX2Apic(apic);
        Assert.True(apic.TryReadMsr(0x802, out ulong id));
        Assert.Equal(5UL, id);
        Assert.True(apic.TryReadMsr(0x803, out ulong ver));
        Assert.Equal(0x0005_0014UL, ver);
        Assert.True(apic.TryWriteMsr(0x80B, 0));
        Assert.True(apic.TryWriteMsr(0x828, 0));
        Assert.True(apic.TryWriteMsr(0x808, 0x20));
        Assert.True(apic.TryReadMsr(0x808, out ulong tpr));
        Assert.Equal(0x20UL, tpr);
    }

    [Fact]
    public void SelfIpiMsrSetsOwnIrr()
    {
        var board = new ApicTestBoard(2);
        var apic = board.Apics[1];
        EnableX2Apic(apic);
        Assert.True(apic.TryWriteMsr(0x83F, 0x62));
        Assert.True(apic.TryReadMsr(0x823, out ulong irr3));
        Assert.Equal(1UL << 2, irr3);
        Assert.Equal(0x62, apic.AcknowledgeInterrupt());
        Assert.False(board.Apics[0].HasPendingInterrupt);
    }

    [Fact]
    public void ApicBaseLegalTransitions()
    {
        var board = new ApicTestBoard(2);
        var apic = board.Apics[0];
        Assert.True(apic.TryWriteMsr(LocalApic.MsrApicBase, Base | Enable | Extd)); // xAPIC → x2APIC
        Assert.True(apic.IsX2ApicMode);
        Assert.True(apic.TryReadMsr(LocalApic.MsrApicBase, out ulong v));
        Assert.Equal(Base | Enable | Extd | (1 << 8), v); // BSP flag kept
        Assert.True(apic.TryWriteMsr(LocalApic.MsrApicBase, Base)); // x2APIC → disabled
        Assert.False(apic.IsEnabled);
        Assert.True(apic.TryWriteMsr(LocalApic.MsrApicBase, Base | Enable)); // disabled → xAPIC
        Assert.True(apic.IsEnabled);
        Assert.False(apic.IsX2ApicMode);
    }

    [Fact]
    public void ApicBaseIllegalTransitionsFault()
    {
        var board = new ApicTestBoard(1);
        var apic = board.Apics[0];
        Assert.False(apic.TryWriteMsr(LocalApic.MsrApicBase, Base | Extd)); // EXTD without EN is invalid
        Assert.False(apic.TryWriteMsr(LocalApic.MsrApicBase, Base | Enable | 1)); // reserved bit 0
        Assert.False(apic.TryWriteMsr(LocalApic.MsrApicBase, Base | Enable | (1 << 9))); // reserved bit 9

        Assert.True(apic.TryWriteMsr(LocalApic.MsrApicBase, Base)); // disable
        Assert.False(apic.TryWriteMsr(LocalApic.MsrApicBase, Base | Enable | Extd)); // disabled → x2APIC
        Assert.True(apic.TryWriteMsr(LocalApic.MsrApicBase, Base | Enable));
        Assert.True(apic.TryWriteMsr(LocalApic.MsrApicBase, Base | Enable | Extd));
        Assert.False(apic.TryWriteMsr(LocalApic.MsrApicBase, Base | Enable)); // x2APIC → xAPIC
        Assert.True(apic.IsX2ApicMode);
    }

    [Fact]
    public void DisabledApicIgnoresMessagesAndLetsThePicThrough()
    {
        var board = new ApicTestBoard(1);
        var apic = board.Apics[0];
        Assert.True(apic.TryWriteMsr(LocalApic.MsrApicBase, Base));
        board.Bus.Deliver(Fixed(0, 0x40));
        Assert.Equal(1, board.Bus.NoTarget.Value);
        board.Pic.Pending = true;
        Assert.True(apic.HasPendingInterrupt);
        Assert.Equal(0x08, apic.AcknowledgeInterrupt());
    }

    [Fact]
    public void UnrelatedMsrsAreNotOurs()
    {
        Assert.True(LocalApic.IsApicMsr(0x1B));
        Assert.True(LocalApic.IsApicMsr(0x6E0));
        Assert.True(LocalApic.IsApicMsr(0x830));
        Assert.False(LocalApic.IsApicMsr(0x10));
        Assert.False(LocalApic.IsApicMsr(0x900));
    }
}
