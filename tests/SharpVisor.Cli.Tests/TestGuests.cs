using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace SharpVisor.Cli.Tests;

/// <summary>
/// Tiny Multiboot v1 kernels for whole-run tests: entered in flat 32-bit protected mode at
/// <see cref="Load"/> + 32 (Multiboot Specification 0.6.96, 3.1 with the a.out kludge address fields).
/// </summary>
internal static class TestGuests
{
    const uint Load = 0x10_0000, HeaderSize = 32;
    const uint Magic = 0x1BAD_B002, Flags = 0x0001_0002; // address fields valid, memory info
    const ushort Com1 = 0x3F8;

    /// <summary>A Multiboot image whose code is built by <paramref name="code"/> (32-bit, at load + 32).</summary>
    public static byte[] Multiboot(Action<Assembler> code)
    {
        var image = new MemoryStream();
        foreach (uint v in new[] { Magic, Flags, unchecked(0u - Magic - Flags), Load, Load, 0u, 0u, Load + HeaderSize })
        {
            image.Write(BitConverter.GetBytes(v));
        }
        var a = new Assembler(32);
        code(a);
        a.Assemble(new StreamCodeWriter(image), Load + HeaderSize);
        return image.ToArray();
    }

    /// <summary>
    /// Prints "B" on COM1, spins until <paramref name="seconds"/> of guest time have passed on the
    /// TSC (which runs at <see cref="Machine.VirtualMachine.TscHz"/>), then resets the machine
    /// through the ICH9 reset control register (port 0xCF9, value 0x06).
    /// </summary>
    public static byte[] ResetAfter(double seconds) => Multiboot(a =>
    {
        uint ticks = checked((uint)(seconds * Machine.VirtualMachine.TscHz));
        var spin = a.CreateLabel();
        var reset = a.CreateLabel();
        a.mov(al, (byte)'B');
        a.mov(dx, Com1);
        a.@out(dx, al);
        a.rdtsc();
        a.mov(esi, eax);
        a.mov(edi, edx);
        a.Label(ref spin);
        a.rdtsc();
        a.sub(eax, esi);
        a.sbb(edx, edi);
        a.jnz(reset);
        a.cmp(eax, ticks);
        a.jb(spin);
        a.Label(ref reset);
        a.mov(al, 0x06);
        a.mov(dx, 0xCF9);
        a.@out(dx, al);
        HaltForever(a);
    });

    /// <summary>Prints <paramref name="text"/> on COM1, then halts with interrupts off: it runs until stopped.</summary>
    public static byte[] PrintThenHalt(string text) => Multiboot(a =>
    {
        a.mov(dx, Com1);
        foreach (char c in text)
        {
            a.mov(al, (byte)c);
            a.@out(dx, al);
        }
        HaltForever(a);
    });

    /// <summary>
    /// Writes 'x' to COM1 <paramref name="count"/> times without pause, then powers off through
    /// the isa-debug-exit port (value 0x10: exit status 0x21).
    /// </summary>
    public static byte[] PrintThenPowerOff(int count) => Multiboot(a =>
    {
        var loop = a.CreateLabel();
        a.mov(dx, Com1);
        a.mov(al, (byte)'x');
        a.mov(ecx, count);
        a.Label(ref loop);
        a.@out(dx, al);
        a.loop(loop);
        a.mov(al, 0x10);
        a.@out(0xF4, al);
        HaltForever(a);
    });

    /// <summary>The exit status of <see cref="PrintThenPowerOff"/>: (0x10 &lt;&lt; 1) | 1, as QEMU's isa-debug-exit.</summary>
    public const int PowerOffStatus = 0x21;

    static void HaltForever(Assembler a)
    {
        var halt = a.CreateLabel();
        a.cli();
        a.Label(ref halt);
        a.hlt();
        a.jmp(halt);
    }

    /// <summary>Writes <paramref name="image"/> to a new temporary file and returns its path.</summary>
    public static TempFile Write(byte[] image, string suffix = ".bin")
    {
        var file = new TempFile(suffix);
        File.WriteAllBytes(file.Path, image);
        return file;
    }
}

/// <summary>A path in the temporary directory that is deleted (file, FIFO or directory) on dispose.</summary>
internal sealed class TempFile(string suffix = "") : IDisposable
{
    public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"sv-cli-{Guid.NewGuid():N}{suffix}");

    public void Dispose()
    {
        if (Directory.Exists(Path))
        {
            Directory.Delete(Path, recursive: true);
        }
        else
        {
            File.Delete(Path);
        }
    }
}
