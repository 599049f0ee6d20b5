using System.Diagnostics;
using Iced.Intel;
using SharpVisor.Core;
using SharpVisor.Cpu.X86;
using SharpVisor.Cpu.X86.Model;
using SharpVisor.Cpu.X86.Translation;
using static Iced.Intel.AssemblerRegisters;
using Vcpu = SharpVisor.Cpu.X86.Cpu;

namespace SharpVisor.Bench;

/// <summary>
/// CPU throughput on guest loops in 64-bit mode: an integer-heavy hash loop and a memory-heavy
/// loop (loads/stores over a 64 KiB buffer), interpreted and translated. Prints millions of guest
/// instructions per second. Run: dotnet run -c Release --project bench/SharpVisor.Bench -- mips [seconds] [interp|jit]
/// </summary>
public static class CpuMips
{
    const ulong CodePa = 0x10_0000, DataPa = 0x20_0000, TablesPa = 0x80_0000;

    public static void Run(double seconds, string? tier)
    {
        foreach (bool jit in tier switch { "interp" => [false], "jit" => [true], _ => new[] { false, true } })
        {
            Measure("integer (xor/shift-free hash: add, imul-free, lea, cmp, jcc)", IntegerLoop, seconds, jit);
            Measure("memory (load/add/store over 64 KiB, stride 8)", MemoryLoop, seconds, jit);
        }
    }

    static void IntegerLoop(Assembler a)
    {
        var top = a.CreateLabel();
        a.mov(rcx, 1_000_000_000L);
        a.mov(rax, 0x12345678);
        a.Label(ref top);
        a.lea(rdx, __[rax + rax * 4 + 7]);
        a.xor(rax, rdx);
        a.add(rbx, rax);
        a.sub(rdx, rbx);
        a.and(rdx, 0x7fff);
        a.or(rax, rdx);
        a.dec(rcx);
        a.jnz(top);
    }

    static void MovLoop(Assembler a)
    {
        var top = a.CreateLabel();
        a.Label(ref top);
        for (int i = 0; i < 20; i++) a.mov(rax, rbx);
        a.jmp(top);
    }

    static void AddLoop(Assembler a)
    {
        var top = a.CreateLabel();
        a.Label(ref top);
        for (int i = 0; i < 20; i++) a.add(rax, rbx);
        a.jmp(top);
    }

    static void MemoryLoop(Assembler a)
    {
        var outer = a.CreateLabel();
        var inner = a.CreateLabel();
        a.mov(r8, 1_000_000_000L);
        a.Label(ref outer);
        a.mov(rsi, (long)DataPa);
        a.mov(rcx, 8192);
        a.Label(ref inner);
        a.mov(rax, __qword_ptr[rsi]);
        a.add(rax, rcx);
        a.mov(__qword_ptr[rsi], rax);
        a.add(rsi, 8);
        a.dec(rcx);
        a.jnz(inner);
        a.dec(r8);
        a.jnz(outer);
    }

    /// <summary>Translation cost: compiles the hot blocks of both loops again and again (no cache), per block.</summary>
    public static void TranslateCost(int rounds)
    {
        var extra = new List<(string, Action<Assembler>)>();
        foreach (int n in new[] { 1, 5, 10, 40 })
        {
            int k = n;
            extra.Add(($"mov{k}", a => { var top = a.CreateLabel(); a.Label(ref top); for (int i = 0; i < k; i++) a.mov(rax, rbx); a.jmp(top); }));
        }
        foreach (var (name, program) in new (string, Action<Assembler>)[] { ("integer", IntegerLoop), ("memory", MemoryLoop), ("mov", MovLoop), ("add", AddLoop) }.Concat(extra))
        {
            using var ram = new GuestMemory(16 << 20);
            using var translator = new Translator(new Log(), threshold: 1, background: false);
            var cpu = LoopCpu(ram, program, translator);
            cpu.Run(100_000); // decodes and translates the loop's blocks
            var blocks = cpu.BlocksForTest().Where(b => b.Compiled != null).ToArray();
            var sw = Stopwatch.StartNew();
            int il = 0;
            for (int r = 0; r < rounds; r++)
            {
                foreach (var b in blocks)
                {
                    il += BlockCompiler.Compile(b).IlBytes;
                }
            }
            double us = sw.Elapsed.TotalMicroseconds / (rounds * blocks.Length);

            Console.WriteLine($"translate {name}: {blocks.Length} blocks of {blocks.Average(b => b.Count):F1} instructions, {il / (rounds * blocks.Length)} IL bytes, {us:F0} us per block");
        }
    }

    static void Measure(string name, Action<Assembler> program, double seconds, bool jit)
    {
        using var ram = new GuestMemory(16 << 20);
        using var translator = jit ? new Translator(new Log()) : null;
        var cpu = LoopCpu(ram, program, translator);
        // Warm up: enough calls for tiered compilation to promote the run loop to its optimised
        // tier (a VM calls Run thousands of times; a few long calls would measure on-stack
        // replacement code instead), then time for the background JIT to install it.
        for (int i = 0; i < 100; i++)
        {
            cpu.Run(200_000);
        }
        Thread.Sleep(500);
        cpu.Run(1_000_000);
        long start = cpu.InstructionsRetired;
        var sw = Stopwatch.StartNew();
        while (sw.Elapsed.TotalSeconds < seconds)
        {
            cpu.Run(10_000_000);
        }
        double mips = (cpu.InstructionsRetired - start) / sw.Elapsed.TotalSeconds / 1e6;
        Console.WriteLine($"{(jit ? "jit   " : "interp")} {name}: {mips:F1} MIPS");
    }

    /// <summary>A 64-bit vCPU over <paramref name="ram"/> (identity-mapped) at the start of <paramref name="program"/>.</summary>
    static Vcpu LoopCpu(GuestMemory ram, Action<Assembler> program, Translator? translator)
    {
        var platform = new CpuPlatform { Memory = new PhysicalMemoryMap(ram), Ports = new PortBus(), Clock = new VirtualClock(), Translator = translator };
        var cpu = new Vcpu(0, platform);
        IdentityMap(ram, 16 << 20);
        CpuSetup.EnterLongMode(cpu, TablesPa);
        var asm = new Assembler(64);
        program(asm);
        using var ms = new MemoryStream();
        asm.Assemble(new StreamCodeWriter(ms), CodePa);
        ram.TryWrite(CodePa, ms.ToArray());
        cpu.Rip = CodePa;
        return cpu;
    }

    /// <summary>Identity-maps the first <paramref name="size"/> bytes with 2 MiB pages (4-level paging).</summary>
    static void IdentityMap(GuestMemory ram, ulong size)
    {
        ram.WriteU64(TablesPa, (TablesPa + 0x1000) | 3);
        ram.WriteU64(TablesPa + 0x1000, (TablesPa + 0x2000) | 3);
        for (ulong i = 0; i < size >> 21; i++)
        {
            ram.WriteU64(TablesPa + 0x2000 + i * 8, (i << 21) | 0x83);
        }
    }
}
