using SharpVisor.Machine;

namespace SharpVisor.Integration.Tests;

/// <summary>
/// A Multiboot v1 test kernel, as many test suites use: entered in 32-bit protected mode with
/// EAX = 0x2BADB002 and EBX = the info structure, it reports through the isa-debug-exit port.
/// </summary>
[Collection(VmCollection.Name)]
public class MultibootTests
{
    [Fact]
    public void MultibootKernelRunsAndExitsThroughTheDebugPort()
    {
        var exit = RunMultiboot(
        [
            0x3D, 0x02, 0xB0, 0xAD, 0x2B,   // cmp eax, 0x2BADB002 (the Multiboot boot-loader magic)
            0x75, 0x05,                     // jne fail
            0xB0, 0x10, 0xE6, 0xF4,         // mov al, 0x10; out 0xF4, al  -> exit status 0x21
            0xF4,                           // hlt
            0xB0, 0x20, 0xE6, 0xF4,         // fail: mov al, 0x20; out 0xF4, al -> exit status 0x41
            0xF4,                           // hlt
        ]);
        Assert.Equal(VmExitKind.PowerOff, exit.Kind);
        Assert.Equal((0x10 << 1) | 1, exit.GuestStatus);
    }

    /// <summary>
    /// An INIT IPI to the bootstrap CPU (issue 16 defect 8) sends it back to the reset vector, where
    /// this board has no firmware: the machine resets, as under QEMU, instead of stopping with
    /// "instruction fetch from non-RAM physical address 0xfffffff0".
    /// </summary>
    [Fact]
    public void InitToTheBootstrapCpuResetsTheMachine()
    {
        var exit = RunMultiboot(
        [
            0xC7, 0x05, 0x10, 0x03, 0xE0, 0xFE, 0x00, 0x00, 0x00, 0x00, // mov dword [0xFEE00310], 0 (ICR high: APIC ID 0)
            0xC7, 0x05, 0x00, 0x03, 0xE0, 0xFE, 0x00, 0x45, 0x00, 0x00, // mov dword [0xFEE00300], 0x4500 (INIT, assert)
            0xB0, 0x20, 0xE6, 0xF4,         // mov al, 0x20; out 0xF4, al -> exit status 0x41 if INIT did nothing
            0xF4,                           // hlt
        ]);
        Assert.Equal(VmExitKind.Reset, exit.Kind);
        Assert.Contains("INIT", exit.Message);
    }

    /// <summary>Runs <paramref name="code"/> as a Multiboot v1 kernel loaded at 1 MiB.</summary>
    static VmExit RunMultiboot(byte[] code)
    {
        const uint Load = 0x10_0000, HeaderSize = 32;
        const uint Magic = 0x1BAD_B002, Flags = 0x0001_0002; // address fields valid (a.out kludge), memory info
        var image = new List<byte>();
        foreach (uint v in new[] { Magic, Flags, unchecked(0u - Magic - Flags), Load, Load, 0u, 0u, Load + HeaderSize })
        {
            image.AddRange(BitConverter.GetBytes(v));
        }
        image.AddRange(code);
        string kernel = Path.Combine(Path.GetTempPath(), $"sv-mb-{Guid.NewGuid():N}.bin");
        File.WriteAllBytes(kernel, [.. image]);
        try
        {
            var config = new MachineConfig { Kernel = kernel, TimeoutSeconds = 30 };
            using var vm = new VirtualMachine(config, _ => { });
            return vm.Run();
        }
        finally
        {
            File.Delete(kernel);
        }
    }
}
