using SharpVisor.Core;
using SharpVisor.Machine;

namespace SharpVisor.Integration.Tests;

/// <summary>
/// A tiny Multiboot v1 kernel (a.out kludge, loaded at 1 MiB, entered in 32-bit protected mode with
/// EAX = 0x2BADB002), as many test suites use: enough to run a few instructions on a real board.
/// </summary>
internal sealed class MultibootKernel : IDisposable
{
    const uint Load = 0x10_0000, HeaderSize = 32;
    const uint Magic = 0x1BAD_B002, Flags = 0x0001_0002; // address fields valid (a.out kludge), memory info

    public MultibootKernel(byte[] code)
    {
        var image = new List<byte>();
        foreach (uint v in new[] { Magic, Flags, unchecked(0u - Magic - Flags), Load, Load, 0u, 0u, Load + HeaderSize })
        {
            image.AddRange(BitConverter.GetBytes(v));
        }
        image.AddRange(code);
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"sv-mb-{Guid.NewGuid():N}.bin");
        File.WriteAllBytes(Path, [.. image]);
    }

    public string Path { get; }

    /// <summary>Boots <paramref name="code"/> on a default machine and runs it to its end.</summary>
    public static VmExit Run(byte[] code, Log? log = null)
    {
        using var kernel = new MultibootKernel(code);
        using var vm = new VirtualMachine(new MachineConfig { Kernel = kernel.Path, TimeoutSeconds = 30 }, _ => { }, log);
        return vm.Run();
    }

    public void Dispose() => File.Delete(Path);
}
