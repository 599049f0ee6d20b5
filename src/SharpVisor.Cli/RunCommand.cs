using System.Diagnostics;
using System.Runtime.InteropServices;
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

    /// <summary>The signals that stop a run, with their numbers on Linux (signal(7)) for the exit status.</summary>
    static readonly (PosixSignal Signal, string Name, int Number)[] StopSignals =
        [(PosixSignal.SIGTERM, "SIGTERM", 15), (PosixSignal.SIGINT, "SIGINT", 2), (PosixSignal.SIGHUP, "SIGHUP", 1)];

    /// <param name="log">The log of the run: every boot's VM writes there, so a message logged once stays once across reboots.</param>
    public static int Execute(MachineConfig config, Log? log = null)
    {
        config.Validate(); // bad options and files are reported before the terminal goes into raw mode
        var run = new Run(config, log ?? new Log());
        return run.Execute();
    }

    /// <summary>One run: the boots of one machine configuration, and the stop requests that reach it from outside.</summary>
    sealed class Run(MachineConfig config, Log log)
    {
        readonly Lock _gate = new();
        VirtualMachine? _running;   // the machine now booted; null between boots
        VmExit? _stopRequest;       // Ctrl-A x or a signal: ends the boot running now and any later one
        int _stopStatus = 1;

        /// <summary>Ends the run from another thread (console, signal handler); the first request wins.</summary>
        void Stop(VmExit exit, int status)
        {
            lock (_gate)
            {
                if (_stopRequest is null)
                {
                    _stopRequest = exit;
                    _stopStatus = status;
                }
                _running?.RequestExit(exit);
            }
        }

        void SendInput(byte b)
        {
            lock (_gate)
            {
                _running?.SendConsoleInput(b);
            }
        }

        /// <summary>
        /// SIGTERM, SIGINT and SIGHUP stop the guest like Ctrl-A x, so the terminal is restored and
        /// the user is told; the status is 128 + the signal number, as a shell reports a killed job.
        /// </summary>
        IDisposable[] HandleSignals() =>
        [
            .. StopSignals.Select(s => PosixSignalRegistration.Create(s.Signal, context =>
                {
                    context.Cancel = true; // not the runtime's immediate exit: the run loop ends and cleans up
                    Stop(new VmExit(VmExitKind.Stopped, $"terminated by {s.Name}, guest stopped"), 128 + s.Number);
                })),
        ];

        public int Execute()
        {
            // Output to a file or pipe is bounded (someone may not be reading it); a terminal is not.
            var console = new TerminalConsole(SendInput, () => Stop(new VmExit(VmExitKind.Stopped, "quit from the console (Ctrl-A x)"), 1),
                log, Console.IsOutputRedirected ? config.ConsoleLimitBytes : null);
            var signals = HandleSignals();
            var resets = new Queue<TimeSpan>();
            var clock = Stopwatch.StartNew();
            // Guest time the boots before a reset ran: the deterministic clock's share of --timeout.
            double earlierBootsGuestSeconds = 0;
            VirtualMachine vm;
            VmExit exit;
            try
            {
                using (console)
                {
                    console.Start();
                    while (true)
                    {
                        vm = new VirtualMachine(config, console.Write, log);
                        vm.Counters.Add(console.DroppedBytes); // for --stats; it counts the whole run
                        lock (_gate)
                        {
                            _running = vm;
                            if (_stopRequest is { } stop)
                            {
                                vm.RequestExit(stop); // it came while the machine was being built
                            }
                        }
                        // --timeout is for the whole run: a guest that keeps resetting must not restart it.
                        exit = vm.Run(config.Clock == ClockMode.Deterministic ? earlierBootsGuestSeconds : clock.Elapsed.TotalSeconds);
                        lock (_gate)
                        {
                            _running = null;
                        }
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
            }
            finally
            {
                foreach (var s in signals)
                {
                    s.Dispose();
                }
            }
            PrintStats(config, vm);
            vm.Dispose();
            if (exit.Kind == VmExitKind.PowerOff)
            {
                return exit.GuestStatus;
            }
            Console.Error.WriteLine($"\nsharpvisor: {exit.Message}");
            lock (_gate)
            {
                return exit == _stopRequest ? _stopStatus : 1;
            }
        }
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
