using System.Diagnostics;
using SharpVisor.Core;
using SharpVisor.Cpu.X86;
using SharpVisor.Cpu.X86.Model;
using SharpVisor.Cpu.X86.Translation;
using Vcpu = SharpVisor.Cpu.X86.Cpu;

namespace SharpVisor.Machine;

/// <summary>How a run ended.</summary>
public enum VmExitKind { PowerOff, Reset, Shutdown, Timeout, Stopped, Error }

public readonly record struct VmExit(VmExitKind Kind, string Message, int GuestStatus = 0);

/// <summary>
/// One virtual machine: guest RAM, the buses, the clock, the vCPUs and the q35-like board
/// (Board.cs). Run it with <see cref="Run"/>; it returns when the guest powers off, resets, triple
/// faults, times out or is stopped.
/// </summary>
/// <remarks>
/// Threads: in host-clock mode each vCPU runs on its own thread and a timer thread fires device
/// timers at their deadlines. In deterministic mode one thread runs every vCPU round-robin in
/// fixed instruction slices and fires timers between slices, so a run repeats exactly.
/// </remarks>
public sealed partial class VirtualMachine : IDisposable
{
    /// <summary>Instructions a vCPU runs before checking timers and stop requests (deterministic slices too).</summary>
    const long Slice = 20_000;

    readonly MachineConfig _config;
    readonly Lock _exitGate = new();
    readonly PreciseWake _timerWake = new();
    VmExit? _exit;

    /// <param name="log">The log this VM's components write to; a VM of its own (to stderr) when null. A run of the CLI passes one log to every boot.</param>
    public VirtualMachine(MachineConfig config, Action<byte> consoleOutput, Log? log = null)
    {
        config.Validate();
        _config = config;
        Log = log ?? new Log();
        ConsoleOutput = consoleOutput;
        Ram = new GuestMemory(config.MemoryMiB << 20);
        Memory = new PhysicalMemoryMap(Ram);
        Ports = new PortBus();
        Clock = new VirtualClock(config.Clock);
        Timers = new TimerQueue(Clock, Log);
        Timers.Armed += () => _timerWake.Set();
        Counters.Add(Timers.DeferredRearms);
        Translator? translator = null;
        if (config.Tier == CpuTier.Jit)
        {
            translator = new Translator(Log);
            _disposables.Add(translator);
            foreach (var c in translator.Counters.All)
            {
                Counters.Add(c);
            }
        }
        var platform = new CpuPlatform
        {
            Memory = Memory,
            Ports = Ports,
            Clock = Clock,
            TscHz = TscHz,
            Log = Log,
            CpuId = new CpuIdModel { LogicalProcessors = config.Cpus },
            Translator = translator,
        };
        Cpus = new Vcpu[config.Cpus];
        for (int i = 0; i < Cpus.Length; i++)
        {
            Cpus[i] = new Vcpu(i, platform);
            foreach (var c in Cpus[i].Counters.All)
            {
                Counters.Add(c);
            }
        }
        Counters.Add(platform.UnsupportedFarTransfers);
        BuildBoard();
        LoadGuest();
    }

    public const long TscHz = 2_000_000_000;

    public GuestMemory Ram { get; }
    public PhysicalMemoryMap Memory { get; }
    public PortBus Ports { get; }
    public VirtualClock Clock { get; }
    public TimerQueue Timers { get; }
    public Vcpu[] Cpus { get; }
    public CounterRegistry Counters { get; } = new();
    /// <summary>This VM's log: every component of it writes here.</summary>
    public Log Log { get; }
    public Action<byte> ConsoleOutput { get; }

    /// <summary>Ends the run with <paramref name="exit"/> (the first caller wins); safe from any thread.</summary>
    public void RequestExit(VmExit exit)
    {
        lock (_exitGate)
        {
            _exit ??= exit;
        }
        foreach (var c in Cpus)
        {
            c.RequestStop();
        }
        _timerWake.Set();
        lock (_pauseGate)
        {
            Monitor.PulseAll(_pauseGate); // a paused run ends too
        }
    }

    /// <summary>Runs the machine until it powers off, resets, triple faults, times out or is stopped.</summary>
    /// <param name="timeoutSpentSeconds">
    /// How much of <see cref="MachineConfig.TimeoutSeconds"/> earlier boots of the same run used
    /// (wall-clock seconds with the host clock, guest seconds with the deterministic clock): a guest
    /// reset power-cycles into a new machine, and the timeout bounds the whole run, not each boot.
    /// </param>
    public VmExit Run(double timeoutSpentSeconds = 0)
    {
        var watch = Stopwatch.StartNew();
        // What is left of the timeout for this boot; 0 means none was given.
        double budget = 0;
        if (_config.TimeoutSeconds > 0)
        {
            budget = _config.TimeoutSeconds - timeoutSpentSeconds;
            if (budget <= 0)
            {
                return TimeoutExit();
            }
        }
        if (_config.Clock == ClockMode.Deterministic)
        {
            StartParticipants(1);
            try
            {
                RunDeterministic(budget);
            }
            finally
            {
                LeaveParticipant();
            }
        }
        else
        {
            StartParticipants(Cpus.Length + 1);
            var threads = Cpus.Select(c => new Thread(() => VcpuThread(c)) { IsBackground = true, Name = $"vcpu{c.Index}" }).ToArray();
            foreach (var t in threads)
            {
                t.Start();
            }
            try
            {
                TimerLoop(watch, budget);
            }
            finally
            {
                LeaveParticipant();
            }
            foreach (var t in threads)
            {
                t.Join();
            }
        }
        return _exit ?? new VmExit(VmExitKind.Stopped, "stopped");
    }

    void VcpuThread(Vcpu cpu)
    {
        try
        {
            while (_exit is null)
            {
                ParkWhilePaused();
                var exit = cpu.Run(Slice);
                if (cpu.Index == 0 && Timers.NextDeadlineNs <= Clock.NowNs)
                {
                    // The boot CPU also fires due timers between slices, so timer interrupts keep
                    // pace with guest progress even when the host starves the timer thread (the
                    // kernel's IO-APIC timer check counts PIT ticks during a TSC busy-wait).
                    Timers.RunExpired();
                }
                switch (exit)
                {
                    case CpuExit.Halted:
                    case CpuExit.WaitForSipi:
                        cpu.WaitForEvent(TimeSpan.FromMilliseconds(10));
                        break;
                    case CpuExit.Shutdown:
                        RequestExit(new VmExit(VmExitKind.Shutdown, $"cpu{cpu.Index}: {cpu.ShutdownReason}"));
                        break;
                    case CpuExit.BootstrapInit:
                        RequestExit(BootstrapInitExit());
                        break;
                }
            }
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // A VMM bug: report it as such, with the guest state, instead of dying silently.
            RequestExit(new VmExit(VmExitKind.Error, $"internal error on cpu{cpu.Index} ({e.GetType().Name}: {e.Message}) at {cpu}"));
            Log.Debug("vm", e.ToString()); // the stack trace, for a bug report (the CLI shows it with SHARPVISOR_DEBUG=1)
        }
        finally
        {
            LeaveParticipant();
        }
    }

    /// <summary>
    /// INIT reached the bootstrap CPU (an IPI or a device MSI with INIT delivery): it is back at the
    /// reset vector to run firmware (SDM Vol. 3A 8.4.2). This board loads the kernel directly and has
    /// no firmware there, so it does what the firmware would: under QEMU, SeaBIOS entered again after
    /// boot resets the machine. A reset, not a stop: the run goes on with a fresh boot.
    /// </summary>
    VmExit BootstrapInitExit()
    {
        const string message = "the guest sent INIT to the bootstrap CPU; with no firmware at the reset vector the machine resets";
        Log.Warn("vm", message);
        return new VmExit(VmExitKind.Reset, message);
    }

    VmExit TimeoutExit() => new(VmExitKind.Timeout, _config.Clock == ClockMode.Deterministic
        ? $"timeout: the guest was still running after {_config.TimeoutSeconds} s of guest time"
        : $"timeout: the guest was still running after {_config.TimeoutSeconds} s");

    /// <summary>Host-clock mode: fires device timers at their deadlines; stops the run when <paramref name="budget"/> seconds (if not 0) have passed.</summary>
    void TimerLoop(Stopwatch watch, double budget)
    {
        while (_exit is null)
        {
            ParkWhilePaused();
            Timers.RunExpired();
            if (budget > 0 && watch.Elapsed.TotalSeconds >= budget)
            {
                RequestExit(TimeoutExit());
                break;
            }
            long next = Timers.NextDeadlineNs;
            long waitNs = next == long.MaxValue ? 50_000_000 : Math.Clamp(next - Clock.NowNs, 0, 50_000_000);
            _timerWake.Reset();
            if (waitNs > 0 && Timers.NextDeadlineNs == next)
            {
                _timerWake.Wait(waitNs);
            }
        }
    }

    /// <summary>Deterministic mode: all vCPUs on this thread, time advanced by instructions only; stops the run after <paramref name="budget"/> guest seconds (if not 0).</summary>
    void RunDeterministic(double budget)
    {
        long timeoutNs = budget > 0 ? (long)Math.Min(budget * 1e9, VirtualClock.MaxNs) : long.MaxValue;
        while (_exit is null)
        {
            ParkWhilePaused(); // between rounds: every vCPU has run its slice and due timers have fired
            bool anyRan = false;
            foreach (var cpu in Cpus)
            {
                long before = cpu.InstructionsRetired;
                var exit = cpu.Run(Slice);
                long ran = cpu.InstructionsRetired - before;
                if (ran > 0)
                {
                    anyRan = true;
                    Clock.AdvanceByInstructions(ran);
                }
                if (exit == CpuExit.Shutdown)
                {
                    RequestExit(new VmExit(VmExitKind.Shutdown, $"cpu{cpu.Index}: {cpu.ShutdownReason}"));
                }
                else if (exit == CpuExit.BootstrapInit)
                {
                    RequestExit(BootstrapInitExit());
                }
                Timers.RunExpired();
            }
            if (!anyRan)
            {
                // Everyone is halted: jump to the next timer, or give up if nothing can wake them.
                long next = Timers.NextDeadlineNs;
                if (next > VirtualClock.MaxNs)
                {
                    RequestExit(new VmExit(VmExitKind.Shutdown, "all vCPUs halted with no timer armed: the guest can never wake"));
                    break;
                }
                Clock.SkipTo(next);
                Timers.RunExpired();
            }
            if (Clock.NowNs >= timeoutNs)
            {
                RequestExit(TimeoutExit());
            }
        }
    }

    // ---------------------------------------------------------------- pause and resume

    readonly object _pauseGate = new();
    /// <summary>One <see cref="Pause"/> or <see cref="Resume"/> at a time (run threads never take it).</summary>
    readonly Lock _pauseControl = new();
    /// <summary>
    /// The components whose host threads change guest-visible state (network receive, console
    /// input), registered by the board as it builds them; Pause and Resume drive them.
    /// </summary>
    readonly List<IPausable> _deviceThreads = [];
    bool _pauseRequested;
    /// <summary>Threads of the current run that take part in pausing (vCPU and timer threads, or the one deterministic thread).</summary>
    int _participants;
    /// <summary>How many of them are parked in <see cref="ParkWhilePaused"/>.</summary>
    int _parked;

    /// <summary>True from <see cref="Pause"/> until <see cref="Resume"/>.</summary>
    public bool IsPaused
    {
        get
        {
            lock (_pauseGate)
            {
                return _pauseRequested;
            }
        }
    }

    /// <summary>
    /// Stops the machine and returns once it is still: every vCPU between two instructions, no timer
    /// firing, guest time stopped, and no device thread (network receive, console input) changing
    /// guest-visible state: what they receive meanwhile is held on the host side and delivered after
    /// <see cref="Resume"/>, in order. Then the machine's state can be read and saved consistently.
    /// Safe from any thread, before or during <see cref="Run"/>; a run that is paused still ends on
    /// <see cref="RequestExit"/>. Pausing a paused machine does nothing.
    /// </summary>
    public void Pause()
    {
        lock (_pauseControl)
        {
            lock (_pauseGate)
            {
                if (_pauseRequested)
                {
                    return;
                }
                _pauseRequested = true;
            }
            if (_config.Clock == ClockMode.Host)
            {
                foreach (var c in Cpus)
                {
                    c.RequestStop(); // leave the instruction loop at the next instruction boundary
                }
                _timerWake.Set();
            }
            // In deterministic mode the run thread parks after its current round of slices, so a paused
            // and resumed run executes exactly the instructions an uninterrupted one does.
            lock (_pauseGate)
            {
                while (_parked < _participants && _exit is null)
                {
                    Monitor.Wait(_pauseGate);
                }
            }
            Clock.Pause();
            foreach (var d in _deviceThreads)
            {
                d.Pause(); // returns once a delivery in progress (a frame half copied) has finished
            }
        }
    }

    /// <summary>Lets a paused machine run on from where it stopped (guest time continues without a gap).</summary>
    public void Resume()
    {
        lock (_pauseControl)
        {
            lock (_pauseGate)
            {
                if (!_pauseRequested)
                {
                    return;
                }
            }
            // Input held while paused reaches the devices first, in the order it came, then the vCPUs go on.
            foreach (var d in _deviceThreads)
            {
                d.Resume();
            }
            lock (_pauseGate)
            {
                Clock.Resume();
                if (_exit is null && _config.Clock == ClockMode.Host)
                {
                    foreach (var c in Cpus)
                    {
                        c.ClearStop();
                    }
                }
                _pauseRequested = false;
                Monitor.PulseAll(_pauseGate);
            }
        }
    }

    void StartParticipants(int count)
    {
        lock (_pauseGate)
        {
            _participants = count;
            _parked = 0;
        }
    }

    void LeaveParticipant()
    {
        lock (_pauseGate)
        {
            _participants--;
            Monitor.PulseAll(_pauseGate); // a Pause waiting for this thread need not wait any more
        }
    }

    /// <summary>A run thread's safe point: while the machine is paused, wait here.</summary>
    void ParkWhilePaused()
    {
        if (!Volatile.Read(ref _pauseRequested))
        {
            return;
        }
        lock (_pauseGate)
        {
            _parked++;
            Monitor.PulseAll(_pauseGate);
            while (_pauseRequested && _exit is null)
            {
                Monitor.Wait(_pauseGate);
            }
            _parked--;
        }
    }

    public void Dispose()
    {
        foreach (var d in _disposables)
        {
            d.Dispose();
        }
        _timerWake.Dispose();
        Ram.Dispose();
    }
}
