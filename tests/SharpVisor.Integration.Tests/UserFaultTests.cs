using SharpVisor.Machine;

namespace SharpVisor.Integration.Tests;

/// <summary>
/// An unprivileged process must not be able to crash its kernel (issue 16, defect 2): every
/// software interrupt it can execute ends in the signal Linux sends for it, and the guest goes on.
/// </summary>
[Collection(VmCollection.Name)]
public class UserFaultTests
{
    /// <summary>
    /// INT n for every vector (but 0x80), INT3 and INT1 from ring 3. Linux's IDT (arch/x86/kernel/idt.c)
    /// gives DPL 3 only to #BP (3), #OF (4) and the 32-bit system call (0x80): every other INT n meets
    /// a DPL-0 gate, the CPU raises #GP(n·8+2) (SDM Vol. 3A 6.12.1.1) and the process gets SIGSEGV.
    /// INT3 and INT1 give SIGTRAP, INT 4 reaches do_error_trap, which sends SIGSEGV.
    /// </summary>
    [Fact]
    public void SoftwareInterruptsFromUserSpaceEndInSignals()
    {
        var image = GuestImage.Default;
        string initrd = image.WithTestScript("""
            #!/bin/sh
            echo '==begin=='
            /test/int-vectors
            echo '==end=='
            poweroff -f
            """, ("int-vectors", GuestProgram.Build("int-vectors")));
        try
        {
            var (exit, console) = BusyboxTests.Boot(image.Kernel, initrd, "console=ttyS0 quiet", timeoutSeconds: 300);
            Assert.True(exit.Kind == VmExitKind.PowerOff, $"the VM did not power off: {exit.Message}\n{TestHelpers.Tail(console)}");
            string text = console.Replace("\r\n", "\n");
            int begin = text.IndexOf("==begin==\n", StringComparison.Ordinal);
            int end = text.IndexOf("==end==", StringComparison.Ordinal);
            Assert.True(begin >= 0 && end > begin, TestHelpers.Tail(console));
            var lines = text[(begin + 10)..end].Split('\n', StringSplitOptions.RemoveEmptyEntries);

            var expected = new List<string>();
            for (int v = 0; v < 256; v++)
            {
                if (v != 0x80)
                {
                    expected.Add($"int 0x{v:x2} signal {(v == 3 ? 5 : 11)}");
                }
            }
            expected.AddRange(["int3 signal 5", "int1 signal 5", "done"]);
            Assert.Equal(expected, lines);
            Assert.DoesNotContain("double fault", text);
        }
        finally
        {
            File.Delete(initrd);
        }
    }
}
