using System.Diagnostics;
using System.Text;
using SharpVisor.Machine;

namespace SharpVisor.Integration.Tests;

/// <summary>--console virtio: the terminal talks to the guest's hvc0 (virtio-console), both ways.</summary>
[Collection(VmCollection.Name)]
public class ConsoleTests
{
    /// <summary>
    /// The default guest boots to its shell (busybox init, cttyhack opens the kernel's console,
    /// hvc0); typed commands reach it through the virtio console's receive queue and their output
    /// comes back through the transmit queue.
    /// </summary>
    [Fact]
    public void ShellOnHvc0AnswersTypedCommands()
    {
        var image = GuestImage.Default;
        var output = new StringBuilder();
        var config = new MachineConfig
        {
            Kernel = image.Kernel,
            Initrd = image.Initrd,
            CommandLine = "quiet",
            Console = ConsoleDevice.Virtio,
            TimeoutSeconds = 240,
            Tier = CpuTier.Interpreter, // the boot that keeps the interpreter covered (the others run TestHelpers.Tier)
        };
        Assert.Equal("quiet console=hvc0", config.KernelCommandLine);
        using var vm = new VirtualMachine(config, b =>
        {
            lock (output)
            {
                output.Append((char)b);
            }
        });
        string Output()
        {
            lock (output)
            {
                return output.ToString();
            }
        }
        var typist = new Thread(() =>
        {
            // Type once the shell has printed its greeting and prompt. (The init script's own banner
            // is lost with console=hvc0: /dev/console cannot open before virtio_console is loaded.)
            var watch = Stopwatch.StartNew();
            while (watch.Elapsed < TimeSpan.FromSeconds(200))
            {
                string text = Output();
                int banner = text.IndexOf("built-in shell (ash)", StringComparison.Ordinal);
                if (banner >= 0 && text.IndexOf("# ", banner, StringComparison.Ordinal) >= 0)
                {
                    foreach (byte b in "echo answer-$((6 * 7)); tty; poweroff\r"u8)
                    {
                        vm.SendConsoleInput(b);
                    }
                    return;
                }
                Thread.Sleep(100);
            }
        })
        { IsBackground = true };
        typist.Start();
        var exit = vm.Run();
        string console = Output();
        Assert.True(exit.Kind == VmExitKind.PowerOff, $"the VM did not power off: {exit.Message}\n{console}");
        Assert.Contains("answer-42", console); // the shell ran the command: the typed text was answer-$((6 * 7))
        Assert.Contains("/dev/hvc0", console);  // its terminal is the virtio console
        Assert.NotNull(vm.VirtioConsole);
        Assert.Equal(0, vm.VirtioConsole.InputDropped.Value);
    }
}
