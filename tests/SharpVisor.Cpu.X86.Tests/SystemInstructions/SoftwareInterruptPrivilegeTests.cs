using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace SharpVisor.Cpu.X86.Tests.SystemInstructions;

/// <summary>
/// Privilege rules for software interrupts (SDM Vol. 3A 6.12.1.1) and the classes of the double-fault
/// rules (SDM Vol. 3A 6.15, Table 6-4/6-5): INT n, INT3 and INTO through a gate whose DPL is below CPL
/// raise #GP(vector·8+2), delivered as an ordinary #GP — the software interrupt is benign, so a fault
/// while delivering it is never a double fault, whatever its vector number. INT1 (ICEBP) skips the
/// DPL check. A user process on Linux executing <c>int $8</c> must get SIGSEGV, not panic the kernel.
/// </summary>
public class SoftwareInterruptPrivilegeTests
{
    const ulong KernelEntry = 0x10000, UserCode = 0x20000, Rsp0 = 0x80000, UserStack = 0x60000;

    /// <summary>A 64-bit kernel: every vector has a DPL-0 interrupt gate to its own HLT; ring 3 runs at <see cref="UserCode"/>.</summary>
    static SysMachine UserModeMachine(Action<Assembler> userCode, Action<SysMachine>? gates = null)
    {
        var m = new SysMachine();
        m.EnterLongMode();
        m.Ram.WriteU64(SysMachine.Tss + 4, Rsp0);
        for (int v = 0; v < 256; v++)
        {
            m.SetGate(v, SysMachine.HandlerOf(v));
            m.Asm(SysMachine.HandlerOf(v), 64, a => a.hlt());
        }
        gates?.Invoke(m);
        m.Asm(UserCode, 64, userCode);
        m.Asm(KernelEntry, 64, a =>
        {
            a.mov(ax, SysMachine.TssSel);
            a.ltr(ax);
            a.push(SysMachine.UserData | 3);
            a.push((int)UserStack);
            a.push(0x202);
            a.push(SysMachine.UserCode64 | 3);
            a.push((int)UserCode);
            a.iretq();
        });
        m.Cpu.Rsp = 0x70000;
        m.Cpu.Rip = KernelEntry;
        Assert.Null(m.StepUntil(UserCode));
        Assert.Equal(3, m.Cpu.Cpl);
        return m;
    }



    /// <summary>
    /// <c>int N</c> in ring 3 through a DPL-0 gate: #GP with error code N·8+2 (IDT, not EXT), RIP on the
    /// INT instruction (a fault), ring 0, no double fault — also for the vectors of contributory
    /// exceptions and of #PF and #DF themselves.
    /// </summary>
    [Theory]
    [InlineData(0x00)]
    [InlineData(0x08)]
    [InlineData(0x0A)]
    [InlineData(0x0B)]
    [InlineData(0x0C)]
    [InlineData(0x0D)]
    [InlineData(0x0E)]
    [InlineData(0x20)]
    [InlineData(0xFF)]
    public void IntNThroughAKernelGateIsGeneralProtection(int vector)
    {
        using var m = UserModeMachine(a => a.@int((byte)vector));
        Assert.Equal(Vector.GP, m.RunToHandler());
        Assert.Equal(0, m.Cpu.Cpl);
        Assert.Equal((ulong)vector * 8 + 2, m.Ram.ReadU64(Rsp0 - 48));                  // error code
        Assert.Equal(UserCode, m.Ram.ReadU64(Rsp0 - 40));                              // RIP of the INT
        Assert.Equal((ulong)(SysMachine.UserCode64 | 3), m.Ram.ReadU64(Rsp0 - 32));   // CS
        Assert.Equal(0x1_0202UL, m.Ram.ReadU64(Rsp0 - 24));                            // RFLAGS: RF set, as for any fault (SDM Vol. 3B 18.3.1.1)
        Assert.Equal(UserStack, m.Ram.ReadU64(Rsp0 - 16));                             // RSP
    }

    /// <summary>INT3 (CC) and INTO (CE, legal only outside 64-bit mode, so INT3 here) get the same check: #GP(3·8+2).</summary>
    [Fact]
    public void Int3ThroughAKernelGateIsGeneralProtection()
    {
        using var m = UserModeMachine(a => a.int3());
        Assert.Equal(Vector.GP, m.RunToHandler());
        Assert.Equal(3UL * 8 + 2, m.Ram.ReadU64(Rsp0 - 48));
    }

    /// <summary>A user-callable gate (DPL 3) is entered normally, with the next instruction as return RIP.</summary>
    [Fact]
    public void IntNThroughAUserGateIsDelivered()
    {
        using var m = UserModeMachine(a => a.@int(0x0D), g => g.SetGate(0x0D, SysMachine.HandlerOf(0x0D), dpl: 3));
        Assert.Equal(0x0D, m.RunToHandler());
        Assert.Equal(UserCode + 2, m.Ram.ReadU64(Rsp0 - 40)); // trap-like: no error code, next RIP
    }

    /// <summary>INT1 (ICEBP, F1) is a #DB without the DPL check (SDM Vol. 2A INT1).</summary>
    [Fact]
    public void Int1SkipsTheDplCheck()
    {
        using var m = UserModeMachine(a => a.int1());
        Assert.Equal(Vector.DB, m.RunToHandler());
        Assert.Equal(UserCode + 1, m.Ram.ReadU64(Rsp0 - 40));
    }

    /// <summary>
    /// A software interrupt whose delivery faults for another reason (gate not present) raises that
    /// fault as a first event too: #NP(N·8+2), not #DF, even for N = 8 or 14.
    /// </summary>
    [Theory]
    [InlineData(0x08)]
    [InlineData(0x0E)]
    public void NotPresentUserGateIsNotPresentFaultNotDoubleFault(int vector)
    {
        using var m = UserModeMachine(a => a.@int((byte)vector), g =>
        {
            g.SetGate(vector, SysMachine.HandlerOf(vector), dpl: 3);
            g.Ram.WriteU64(SysMachine.Idt + (ulong)vector * 16, g.Ram.ReadU64(SysMachine.Idt + (ulong)vector * 16) & ~(1UL << 47));
        });
        Assert.Equal(Vector.NP, m.RunToHandler());
        Assert.Equal((ulong)vector * 8 + 2, m.Ram.ReadU64(Rsp0 - 48));
    }

    /// <summary>
    /// External interrupts are benign too (Table 6-4 "All INTR"): an interrupt at vector 14 whose gate
    /// is not present raises #NP(14·8+2+EXT), not #DF.
    /// </summary>
    [Fact]
    public void ExternalInterruptDeliveryFaultIsNotDoubleFault()
    {
        using var m = UserModeMachine(a => { a.nop(); a.nop(); }, g =>
            g.Ram.WriteU64(SysMachine.Idt + 14 * 16, g.Ram.ReadU64(SysMachine.Idt + 14 * 16) & ~(1UL << 47)));
        m.Cpu.Apic = new FakeApic { Pending = 14 };
        Assert.Equal(Vector.NP, m.RunToHandler());
        Assert.Equal(14UL * 8 + 2 + 1, m.Ram.ReadU64(Rsp0 - 48));
    }
}
