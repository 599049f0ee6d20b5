using SharpVisor.Core;
using SharpVisor.Machine;

namespace SharpVisor.Cli;

/// <summary>`sharpvisor run`: builds the VM, connects the terminal, runs to the end and reports.</summary>
public static class RunCommand
{
    public static int Execute(MachineConfig config)
    {
        TerminalConsole? console = null;
        VirtualMachine? vm = null;
        console = new TerminalConsole(b => vm?.SendConsoleInput(b), () => vm?.RequestExit(new VmExit(VmExitKind.Stopped, "quit from the console (Ctrl-A x)")));
        vm = new VirtualMachine(config, console.Write);
        VmExit exit;
        using (console)
        {
            console.Start();
            exit = vm.Run();
        }
        if (config.PrintStats)
        {
            foreach (var c in vm.Counters.All.Where(c => c.Value != 0))
            {
                Console.Error.WriteLine($"  {c.Name} {c.Value}");
            }
        }
        vm.Dispose();
        switch (exit.Kind)
        {
            case VmExitKind.PowerOff:
                return exit.GuestStatus;
            default:
                Console.Error.WriteLine($"\nsharpvisor: {exit.Message}");
                return 1;
        }
    }
}
