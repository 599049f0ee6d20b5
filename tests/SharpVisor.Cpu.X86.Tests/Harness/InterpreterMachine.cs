using Iced.Intel;
using SharpVisor.Core;
using SharpVisor.Cpu.X86.Model;

namespace SharpVisor.Cpu.X86.Tests.Harness;

/// <summary>
/// A vCPU on its own (no native side) for behaviour the host must never execute: #DE, #GP, #UD,
/// #PF in the middle of a string instruction, port I/O, legacy-mode-only instructions. 64-bit mode
/// identity-maps the first <see cref="MappedBytes"/> with 4 KiB pages (so single pages can be
/// unmapped); 32-bit mode is flat protected mode with paging off (CpuSetup.EnterProtectedFlat32).
/// </summary>
public sealed class InterpreterMachine : IDisposable
{
    public const ulong CodeAddress = 0x10000;
    public const ulong DataAddress = 0x20000;
    public const ulong MappedBytes = 4 << 20;
    const ulong PageTables = 0x60_0000;

    readonly GuestMemory _ram = new(8 << 20);
    ulong _nextTable = PageTables;
    readonly ulong _pml4;
    ulong _end;

    public InterpreterMachine(int bits = 64, int cpl = 0, SharpVisor.Cpu.X86.Translation.Translator? translator = null)
    {
        Ports = new PortBus();
        var platform = new CpuPlatform { Memory = new PhysicalMemoryMap(_ram), Ports = Ports, Clock = new VirtualClock(ClockMode.Deterministic), Translator = translator };
        Cpu = new Cpu(0, platform);
        // As an OS leaves it before using the FPU (Linux: FNINIT in fpu__init_cpu_generic); the
        // power-on FCW is 0040H (all exceptions unmasked), SDM Vol. 3A Table 9-1.
        Cpu.Fpu.InitX87();
        Bits = bits;
        if (bits == 64)
        {
            _pml4 = AllocTable();
            for (ulong va = 0; va < MappedBytes; va += 4096)
            {
                Map(va, va);
            }
            CpuSetup.EnterLongMode(Cpu, _pml4, cpl);
        }
        else
        {
            CpuSetup.EnterProtectedFlat32(Cpu);
        }
    }

    public Cpu Cpu { get; }
    public GuestMemory Ram => _ram;
    public PortBus Ports { get; }
    public int Bits { get; }

    ulong AllocTable()
    {
        ulong t = _nextTable;
        _nextTable += 4096;
        return t;
    }

    ref ulong Pte(ulong va)
    {
        ulong table = _pml4;
        for (int level = 3; level >= 1; level--)
        {
            ulong entryAddr = table + ((va >> (12 + 9 * level)) & 0x1FF) * 8;
            ulong entry = _ram.ReadU64(entryAddr);
            if ((entry & 1) == 0)
            {
                entry = AllocTable() | 7;
                _ram.WriteU64(entryAddr, entry);
            }
            table = entry & ~0xFFFUL;
        }
        return ref System.Runtime.InteropServices.MemoryMarshal.AsRef<ulong>(_ram.GetSpan(table + ((va >> 12) & 0x1FF) * 8, 8));
    }

    void Map(ulong va, ulong pa) => Pte(va) = pa | 7;

    /// <summary>Makes the 4 KiB page at <paramref name="va"/> not present (64-bit mode only).</summary>
    public void Unmap(ulong va)
    {
        Pte(va) = 0;
        Cpu.InvalidatePage(va);
    }

    /// <summary>Maps the 4 KiB page at <paramref name="va"/> to physical page <paramref name="pa"/> (64-bit mode only).</summary>
    public void Remap(ulong va, ulong pa)
    {
        Map(va, pa);
        Cpu.InvalidatePage(va);
    }

    /// <summary>Changes the page's PTE only, as a guest does before it invalidates the TLB entry.</summary>
    public void RemapWithoutInvalidation(ulong va, ulong pa) => Map(va, pa);

    /// <summary>Makes the page read-only (64-bit mode only).</summary>
    public void MakeReadOnly(ulong va)
    {
        Pte(va) &= ~2UL;
        Cpu.InvalidatePage(va);
    }

    /// <summary>Encodes <paramref name="instructions"/> at <see cref="CodeAddress"/> and points RIP at them.</summary>
    public void Load(params Instruction[] instructions)
    {
        var writer = new ListWriter();
        var encoder = Encoder.Create(Bits, writer);
        foreach (var ins in instructions)
        {
            encoder.Encode(ins, CodeAddress + (ulong)writer.Bytes.Count);
        }
        LoadBytes([.. writer.Bytes]);
    }

    public void LoadBytes(byte[] code)
    {
        _ram.TryWrite(CodeAddress, code);
        _ram.TryWrite(CodeAddress + (ulong)code.Length, [0x0F, 0x0B]); // UD2 fence
        Cpu.Rip = CodeAddress;
        _end = CodeAddress + (ulong)code.Length;
    }

    public ulong End => _end;

    /// <summary>Steps until RIP reaches the end of the loaded code; returns the first exception vector (RIP left on it).</summary>
    public int? Run(int maxSteps = 100_000)
    {
        for (int i = 0; i < maxSteps && Cpu.Rip != _end; i++)
        {
            if (Cpu.StepForTest() is int v)
            {
                return v;
            }
        }
        return null;
    }

    public void Dispose() => _ram.Dispose();

    sealed class ListWriter : CodeWriter
    {
        public readonly List<byte> Bytes = [];
        public override void WriteByte(byte value) => Bytes.Add(value);
    }
}
