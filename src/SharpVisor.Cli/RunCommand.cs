using System.Diagnostics;
using SharpVisor.Core;
using SharpVisor.Machine;

namespace SharpVisor.Cli;

/// <summary>
/// `sharpvisor run`: builds the VM, connects the terminal, runs to the end and reports. A guest
/// reset (`reboot`) power-cycles the machine: a fresh VM with the same configuration boots again
/// on the same terminal, unless resets come so fast that the guest is stuck in a reset loop.
/// </summary>
public static class RunCommand
{
    /// <summary>More resets than this within <see cref="ResetLoopWindow"/> ends the run with an error.</summary>
    const int MaxQuickResets = 5;
    static readonly TimeSpan ResetLoopWindow = TimeSpan.FromSeconds(60);

    public static int Execute(MachineConfig config)
    {
        config.Validate(); // bad options and files are reported before the terminal goes into raw mode
        VirtualMachine? vm = null;
        var console = new TerminalConsole(b => vm?.SendConsoleInput(b), () => vm?.RequestExit(new VmExit(VmExitKind.Stopped, "quit from the console (Ctrl-A x)")));
        var resets = new Queue<TimeSpan>();
        var clock = Stopwatch.StartNew();
        // Guest time the boots before a reset ran: the deterministic clock's share of --timeout.
        double earlierBootsGuestSeconds = 0;
        VmExit exit;
        using (console)
        {
            console.Start();
            while (true)
            {
                vm = new VirtualMachine(config, console.Write);
                // --timeout is for the whole run: a guest that keeps resetting must not restart it.
                exit = vm.Run(config.Clock == ClockMode.Deterministic ? earlierBootsGuestSeconds : clock.Elapsed.TotalSeconds);
                if (exit.Kind != VmExitKind.Reset)
                {
                    break;
                }
                earlierBootsGuestSeconds += vm.Clock.NowNs / 1e9;
                resets.Enqueue(clock.Elapsed);
                while (clock.Elapsed - resets.Peek() > ResetLoopWindow)
                {
                    resets.Dequeue();
                }
                if (resets.Count > MaxQuickResets)
                {
                    exit = new VmExit(VmExitKind.Error, $"reset loop: the guest reset the machine {resets.Count} times within {ResetLoopWindow.TotalSeconds:F0} s");
                    break;
                }
                PrintStats(config, vm);
                vm.Dispose();
            }
        }
        PrintStats(config, vm);
        vm.Dispose();
        if (exit.Kind == VmExitKind.PowerOff)
        {
            return exit.GuestStatus;
        }
        Console.Error.WriteLine($"\nsharpvisor: {exit.Message}");
        return 1;
    }

    static void PrintStats(MachineConfig config, VirtualMachine vm)
    {
        if (config.PrintStats)
        {
            foreach (var (name, c) in vm.Counters.Entries.Where(e => e.Counter.Value != 0))
            {
                Console.Error.WriteLine($"  {name} {c.Value}");
            }
        }
    }
}
