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

    static VmExit RunMultiboot(byte[] code) => MultibootKernel.Run(code);
}
