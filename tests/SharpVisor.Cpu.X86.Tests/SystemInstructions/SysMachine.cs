using Iced.Intel;
using SharpVisor.Core;
using SharpVisor.Cpu.X86.Model;

namespace SharpVisor.Cpu.X86.Tests.SystemInstructions;

/// <summary>
/// A small guest for the system-instruction tests: 16 MiB of RAM, a GDT laid out like Linux's
/// (0x08 code32, 0x10 code64, 0x18 data, 0x20 user code32, 0x28 user data, 0x30 user code64,
/// 0x38 64-bit TSS), an identity map of the first 16 MiB with 2 MiB user pages, and a long-mode IDT.
/// </summary>
public sealed class SysMachine : IDisposable
{
    public const ulong Pml4 = 0x1000, Pdpt = 0x2000, Pd = 0x3000, Gdt = 0x5000, Idt = 0x6000, Tss = 0x7000;
    public const ushort Code32 = 0x08, Code64 = 0x10, Data = 0x18, UserCode32 = 0x20, UserData = 0x28, UserCode64 = 0x30, TssSel = 0x38;

    public readonly GuestMemory Ram = new(16 << 20);
    public readonly PortBus Ports = new();
    public readonly VirtualClock Clock = new(ClockMode.Deterministic);
    public readonly Cpu Cpu;

    public SysMachine(long tscHz = 1_000_000_000, int cpuIndex = 0)
    {
        var platform = new CpuPlatform { Memory = new PhysicalMemoryMap(Ram), Ports = Ports, Clock = Clock, TscHz = tscHz };
        Cpu = new Cpu(cpuIndex, platform);
        WriteGdt();
        IdentityMap();
    }

    public void Dispose() => Ram.Dispose();

    /// <summary>Where tests put one HLT per vector as its exception handler, 16 bytes apart.</summary>
    public const ulong Handlers = 0x30000;

    public static ulong HandlerOf(int vector) => Handlers + (ulong)vector * 16;

    /// <summary>Runs to the first HLT and returns the vector whose handler (at <see cref="HandlerOf"/>) halted.</summary>
    public int RunToHandler(int budget = 50)
    {
        Assert.Equal(CpuExit.Halted, Cpu.Run(budget));
        ulong at = Cpu.Rip - 1;
        Assert.True(at >= Handlers && at < Handlers + 256 * 16 && (at - Handlers) % 16 == 0, $"halted at {at:x}, not in a handler");
        return (int)((at - Handlers) / 16);
    }

    void WriteGdt()
    {
        ulong[] gdt =
        [
            0,
            0x00CF_9A00_0000_FFFF, // 0x08 code32 ring 0
            0x00AF_9A00_0000_FFFF, // 0x10 code64 ring 0
            0x00CF_9200_0000_FFFF, // 0x18 data ring 0
            0x00CF_FA00_0000_FFFF, // 0x20 code32 ring 3
            0x00CF_F200_0000_FFFF, // 0x28 data ring 3
            0x00AF_FA00_0000_FFFF, // 0x30 code64 ring 3
            0x67 | ((Tss & 0xFF_FFFF) << 16) | (0x89UL << 40) | ((Tss >> 24) << 56), // 0x38 available 64-bit TSS
            Tss >> 32,
        ];
        for (int i = 0; i < gdt.Length; i++)
        {
            Ram.WriteU64(Gdt + (ulong)i * 8, gdt[i]);
        }
    }

    public void LoadGdtr()
    {
        Cpu.GdtBase = Gdt;
        Cpu.GdtLimit = 9 * 8 - 1;
    }

    void IdentityMap()
    {
        Ram.WriteU64(Pml4, Pdpt | 7);
        Ram.WriteU64(Pdpt, Pd | 7);
        for (ulong i = 0; i < 8; i++)
        {
            Ram.WriteU64(Pd + i * 8, (i << 21) | 0x87); // present, writable, user, 2 MiB
        }
    }

    /// <summary>64-bit mode at <paramref name="cpl"/> with this machine's GDT, IDT and TSS loaded.</summary>
    public void EnterLongMode(int cpl = 0)
    {
        CpuSetup.EnterLongMode(Cpu, Pml4, cpl);
        LoadGdtr();
        Cpu.IdtBase = Idt;
        Cpu.IdtLimit = 256 * 16 - 1;
        Cpu.Tr = new SegmentRegister { Selector = TssSel, Base = Tss, Limit = 0x67, Attributes = 0x8B };
    }

    /// <summary>A 64-bit interrupt (type 0xE) or trap (0xF) gate (SDM Vol. 3A 6.14.1, Figure 6-8).</summary>
    public void SetGate(int vector, ulong target, int dpl = 0, int ist = 0, int type = 0xE, ushort selector = Code64)
    {
        ulong lo = (target & 0xFFFF) | ((ulong)selector << 16) | ((ulong)ist << 32) | ((ulong)(type | (dpl << 5) | 0x80) << 40) | (((target >> 16) & 0xFFFF) << 48);
        Ram.WriteU64(Idt + (ulong)vector * 16, lo);
        Ram.WriteU64(Idt + (ulong)vector * 16 + 8, target >> 32);
    }

    /// <summary>Assembles code at <paramref name="address"/> and writes it to RAM; returns the end address.</summary>
    public ulong Asm(ulong address, int bitness, Action<Assembler> build)
    {
        var a = new Assembler(bitness);
        build(a);
        using var ms = new MemoryStream();
        a.Assemble(new StreamCodeWriter(ms), address);
        Ram.TryWrite(address, ms.ToArray());
        return address + (ulong)ms.Length;
    }

    /// <summary>Runs single steps until RIP reaches <paramref name="end"/>; returns the vector of the first exception, if any.</summary>
    public int? StepUntil(ulong end, int maxSteps = 200)
    {
        for (int i = 0; i < maxSteps && Cpu.Rip != end; i++)
        {
            if (Cpu.StepForTest() is int v)
            {
                return v;
            }
        }
        Assert.Equal(end, Cpu.Rip);
        return null;
    }
}

/// <summary>A local APIC stand-in: one pending vector at a time, x2APIC MSRs unsupported.</summary>
public sealed class FakeApic : IVcpuApic
{
    public int Pending = -1;
    public ulong? MmioBase => null;
    public bool HasPendingInterrupt => Pending >= 0;
    public byte AcknowledgeInterrupt() { byte v = (byte)Pending; Pending = -1; return v; }
    public ulong MmioRead(ulong offset, int size) => 0;
    public void MmioWrite(ulong offset, int size, ulong value) { }
    public uint Tpr;
    public bool TryReadMsr(uint msr, out ulong value) { value = msr == 0x808 ? Tpr : 0; return msr == 0x808; }
    public bool TryWriteMsr(uint msr, ulong value) { if (msr == 0x808) Tpr = (uint)value; return msr == 0x808; }
    public bool OwnsMsr(uint msr) => msr is 0x1B or (>= 0x800 and <= 0x8FF) or 0x6E0;
}
