using Iced.Intel;
using SharpVisor.Cpu.X86.Tests.Harness;
using static Iced.Intel.AssemblerRegisters;

namespace SharpVisor.Cpu.X86.Tests.Translation;

/// <summary>
/// The run loop goes from a block to a successor it remembers (<see cref="Decode.BlockLink"/>)
/// without looking it up. These check that a remembered successor is given up exactly when a lookup
/// would find other code: its bytes rewritten (by a device or another vCPU — nothing this vCPU sees
/// run), or its linear page mapped elsewhere. The first block lies on its own page, so only the
/// link can still lead to the stale successor.
/// </summary>
public sealed class BlockLinkTests
{
    const ulong First = InterpreterMachine.CodeAddress;
    const ulong Successor = First + 0x1000;
    const ulong OtherPhysicalPage = 0x40_0000 - 0x1000; // mapped 1:1 in the harness but not used by code

    /// <summary>At <see cref="First"/>: EBX = 0, then a jump to <see cref="Successor"/>.</summary>
    static byte[] FirstBlock() => Assemble(First, a =>
    {
        a.xor(ebx, ebx);
        a.jmp(Successor);
    });

    /// <summary>A successor that leaves <paramref name="value"/> in EBX and halts.</summary>
    static byte[] SuccessorBlock(uint value) => Assemble(Successor, a =>
    {
        a.mov(ebx, value);
        a.hlt();
    });

    static byte[] Assemble(ulong at, Action<Assembler> emit)
    {
        var a = new Assembler(64);
        emit(a);
        var writer = new BytesWriter();
        a.Assemble(writer, at);
        return [.. writer.Bytes];
    }

    static uint RunFromFirst(InterpreterMachine m)
    {
        m.Cpu.Halted = false;
        m.Cpu.Rip = First;
        Assert.Equal(CpuExit.Halted, m.Cpu.Run(100));
        return (uint)m.Cpu.Rbx;
    }

    static InterpreterMachine Machine()
    {
        var m = new InterpreterMachine();
        m.Ram.TryWrite(First, FirstBlock());
        m.Ram.TryWrite(Successor, SuccessorBlock(1));
        Assert.Equal(1u, RunFromFirst(m));
        Assert.Equal(1u, RunFromFirst(m)); // the second run goes through the link
        return m;
    }

    [Fact]
    public void A_successor_rewritten_by_a_device_is_not_reached_through_the_old_link()
    {
        using var m = Machine();
        m.Ram.TryWrite(Successor, SuccessorBlock(2)); // as DMA would: no instruction of this vCPU runs

        Assert.Equal(2u, RunFromFirst(m));
    }

    [Fact]
    public void A_successor_page_mapped_elsewhere_is_looked_up_again()
    {
        using var m = Machine();
        m.Ram.TryWrite(OtherPhysicalPage, SuccessorBlock(3));
        m.Remap(Successor, OtherPhysicalPage); // the PTE changes, then INVLPG

        Assert.Equal(3u, RunFromFirst(m));
    }

    [Fact]
    public void A_successor_page_mapped_elsewhere_is_looked_up_again_after_a_CR3_reload()
    {
        using var m = Machine();
        m.Ram.TryWrite(OtherPhysicalPage, SuccessorBlock(4));
        m.RemapWithoutInvalidation(Successor, OtherPhysicalPage);
        m.Cpu.FlushTlb(includeGlobal: false); // what MOV CR3 does

        Assert.Equal(4u, RunFromFirst(m));
    }

    sealed class BytesWriter : CodeWriter
    {
        public readonly List<byte> Bytes = [];
        public override void WriteByte(byte value) => Bytes.Add(value);
    }
}

/// <summary>
/// Remembered successors are kept per code TLB (<c>Cpu._codeMapEpoch</c>): a system call and its
/// return switch between the supervisor and the user TLB without making either side's successors
/// stale, so a user loop that calls the kernel goes on through its links.
/// </summary>
public sealed class BlockLinkPrivilegeTests
{
    [Fact]
    public unsafe void A_system_call_round_trip_keeps_both_sides_remembered_successors()
    {
        const ulong User = 0x20000, Kernel = 0x21000;
        using var m = new SystemInstructions.SysMachine();
        var c = m.Cpu;
        m.EnterLongMode(cpl: 3);
        c.Msr.Star = (0x23UL << 48) | (0x10UL << 32);
        c.Msr.Lstar = Kernel;
        c.Msr.Sfmask = RFlags.IF;
        c.EferValue |= Efer.SCE;
        m.Asm(Kernel, 64, a => { a.add(r12, 1); a.sysretq(); });
        m.Asm(User, 64, a =>
        {
            var top = a.CreateLabel();
            a.Label(ref top);
            a.syscall();
            a.dec(rbx);
            a.jnz(top);
            a.ud2();
        });
        c.Rip = User;
        c.Rbx = 1000;

        c.Run(100); // every block and link seen once
        long lookups = c.Counters.BlockLookups.Value;
        c.Run(2_000);

        Assert.True(c.Regs.Gpr[12] > 300, $"{c.Regs.Gpr[12]} system calls");
        // Each system call crosses privilege twice; looked up afresh, that would be two lookups a call.
        Assert.True(c.Counters.BlockLookups.Value - lookups < 10, $"{c.Counters.BlockLookups.Value - lookups} lookups");
    }
}
