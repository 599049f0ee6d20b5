using SharpVisor.Core;
using SharpVisor.Cpu.X86.State;
using SharpVisor.Devices.Interrupts;
using SharpVisor.Devices.Iommu;
using SharpVisor.Devices.Legacy;
using SharpVisor.Devices.Pci;
using SharpVisor.Devices.Virtio;

namespace SharpVisor.Machine;

/// <summary>
/// Everything a guest can observe of a machine, as plain data: guest time, RAM, every vCPU and
/// every device. A machine built from the same <see cref="MachineConfig"/> and given this state
/// continues exactly where the saved one stood (the basis of snapshots and live migration).
/// </summary>
/// <remarks>Disk contents are not in it: they live in the disk images, which the machine flushes as it runs.</remarks>
public sealed record MachineState
{
    public const int CurrentVersion = 1;
    public int Version { get; init; } = CurrentVersion;
    public required VirtualClock.State Clock { get; init; }
    /// <summary>When each device timer last fired (the queue's re-arm guard depends on it); deadlines are in the devices' states.</summary>
    public required TimerQueue.State Timers { get; init; }
    /// <summary>All guest RAM in host-offset order: [0, LowRamEnd) then the RAM above 4 GiB.</summary>
    public required byte[] Ram { get; init; }
    public required CpuState[] Cpus { get; init; }
    public required ApicBus.State ApicBus { get; init; }
    public required LocalApic.State[] LocalApics { get; init; }
    public required IoApic.State IoApic { get; init; }
    public required Pic8259Pair.State Pic { get; init; }
    public required Uart16550.State Com1 { get; init; }
    public required Pit8254.State Pit { get; init; }
    public required Rtc.State Rtc { get; init; }
    public required I8042.State I8042 { get; init; }
    public required AcpiPm.State AcpiPm { get; init; }
    public required Hpet.State Hpet { get; init; }
    /// <summary>The VT-d unit's state; null on a machine without one.</summary>
    public VtdState? Iommu { get; init; }
    /// <summary>Every PCI function in bus order.</summary>
    public required PciSlotState[] Pci { get; init; }
}

/// <summary>One PCI function's state: a virtio device's (transport, queues, device), the edu device's (function, registers, DMA buffer) or a plain function's; exactly one is set.</summary>
public sealed record PciSlotState
{
    /// <summary>bus:device.function, which must match the restoring machine's function there.</summary>
    public required string Location { get; init; }
    /// <summary>Set for a plain function (one with no state of its own beyond PCI's).</summary>
    public PciFunctionState? Function { get; init; }
    /// <summary>Set for a virtio device.</summary>
    public VirtioPciState? Virtio { get; init; }
    /// <summary>Set for the edu device.</summary>
    public EduDevice.State? Edu { get; init; }

    /// <summary>What kind of function the state was saved from, for messages.</summary>
    internal string Kind => Virtio is not null ? "virtio device" : Edu is not null ? "edu device" : "plain function";

    /// <summary>Exactly the part for <paramref name="function"/>'s kind is set.</summary>
    internal bool Fits(PciFunction function) => function switch
    {
        VirtioPciTransport => Virtio is not null && Function is null && Edu is null,
        EduDevice => Edu is not null && Function is null && Virtio is null,
        _ => Function is not null && Virtio is null && Edu is null,
    };
}

public sealed partial class VirtualMachine
{
    /// <summary>
    /// The machine's state. Take it while the machine is still — paused (<see cref="Pause"/>),
    /// not yet run, or finished — or it is not consistent; a running machine is refused.
    /// </summary>
    public MachineState SaveState()
    {
        lock (_pauseGate)
        {
            if (_participants > 0 && !(_pauseRequested && _parked == _participants))
            {
                ThrowHelper.InvalidOperation("the machine's state can only be taken while it is paused or not running");
            }
        }
        if (Ram.Size > (ulong)Array.MaxLength)
        {
            // MachineState keeps RAM in one array; a larger guest needs RAM saved in pieces (issue 12's stream).
            throw new UserErrorException($"saving the state of a machine with {Ram.Size >> 20} MiB of RAM is not supported yet (at most {Array.MaxLength >> 20} MiB)");
        }
        // Device threads hold their input while the state is read, even on a machine that is not
        // running (a NIC keeps receiving): no frame is captured half delivered. (Pauses nest.)
        foreach (var d in _deviceThreads)
        {
            d.Pause();
        }
        try
        {
            var ram = new byte[Ram.Size];
            unsafe
            {
                new ReadOnlySpan<byte>(Ram.HostBase, ram.Length).CopyTo(ram);
            }
            return new MachineState
            {
                Clock = Clock.SaveState(),
                Timers = Timers.SaveState(),
                Ram = ram,
                Cpus = [.. Cpus.Select(c => c.SaveState())],
                ApicBus = ApicBus.SaveState(),
                LocalApics = [.. LocalApics.Select(a => a.SaveState())],
                IoApic = IoApic.SaveState(),
                Pic = Pic.SaveState(),
                Com1 = Com1.SaveState(),
                Pit = Pit.SaveState(),
                Rtc = Rtc.SaveState(),
                I8042 = I8042.SaveState(),
                AcpiPm = AcpiPm.SaveState(),
                Hpet = Hpet.SaveState(),
                Iommu = Iommu?.SaveState(),
                Pci = [.. Pci.Bus.Functions.Select(f => f switch
                {
                    VirtioPciTransport t => new PciSlotState { Location = f.Location, Virtio = t.SaveState() },
                    EduDevice e => new PciSlotState { Location = f.Location, Edu = e.SaveState() },
                    _ => new PciSlotState { Location = f.Location, Function = ((IPersistent<PciFunctionState>)f).SaveState() },
                })],
            };
        }
        finally
        {
            foreach (var d in _deviceThreads)
            {
                d.Resume();
            }
        }
    }

    /// <summary>
    /// Builds a machine from <paramref name="config"/> and gives it <paramref name="state"/>: it then
    /// runs on from where the saved machine stood. The configuration must describe the same machine
    /// (vCPUs, RAM, IOMMU, devices); a state that does not fit it, or has any field out of range, is
    /// refused with an <see cref="InvalidStateException"/> and no machine is returned.
    /// </summary>
    public static VirtualMachine FromState(MachineConfig config, MachineState state, Action<byte> consoleOutput, Log? log = null)
    {
        var vm = new VirtualMachine(config, consoleOutput, log);
        try
        {
            vm.RestoreState(state);
            return vm;
        }
        catch
        {
            vm.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Applies a saved state to this machine, which must be freshly built and not yet run. Order:
    /// guest time, when each timer last fired, RAM, the IOMMU (devices translate through it), the interrupt controllers from the
    /// CPU outwards, the devices that drive lines into them, then the vCPUs (Legacy/README.md).
    /// </summary>
    void RestoreState(MachineState state)
    {
        // A NIC's backend may already receive: hold it until the whole state is in place.
        foreach (var d in _deviceThreads)
        {
            d.Pause();
        }
        try
        {
            RestoreStateWhileHeld(state);
        }
        finally
        {
            foreach (var d in _deviceThreads)
            {
                d.Resume();
            }
        }
    }

    void RestoreStateWhileHeld(MachineState state)
    {
        const string Component = "machine";
        InvalidStateException.CheckVersion(state.Version, MachineState.CurrentVersion, Component);
        // A state read from a file may lack anything, whatever the declared nullability says.
        byte[] ram = state.Ram ?? [];
        CpuState[] cpus = state.Cpus ?? [];
        LocalApic.State[] apics = state.LocalApics ?? [];
        PciSlotState[] slots = state.Pci ?? [];
        InvalidStateException.Check((ulong)ram.LongLength == Ram.Size, Component,
            $"RAM of {ram.LongLength} bytes does not match this machine's {Ram.Size} bytes (--memory)");
        InvalidStateException.Check(cpus.Length == Cpus.Length, Component, $"{cpus.Length} vCPUs saved; this machine has {Cpus.Length} (--cpus)");
        InvalidStateException.Check(apics.Length == LocalApics.Length, Component, $"{apics.Length} local APICs saved; this machine has {LocalApics.Length}");
        InvalidStateException.Check((state.Iommu is null) == (Iommu is null), Component,
            state.Iommu is null ? "no IOMMU state saved; this machine has an IOMMU (--iommu)" : "an IOMMU state saved; this machine has none (--iommu)");
        var functions = Pci.Bus.Functions.ToArray();
        InvalidStateException.Check(slots.Length == functions.Length, Component,
            $"{slots.Length} PCI functions saved; this machine has {functions.Length} (its --disk, --net, --rng and --console options)");
        for (int i = 0; i < functions.Length; i++)
        {
            var slot = slots[i];
            InvalidStateException.Check(slot is not null, Component, $"PCI function {i} is missing");
            InvalidStateException.Check(slot.Location == functions[i].Location, Component,
                $"PCI function {i} was at {slot.Location}; this machine has {functions[i].Name} at {functions[i].Location}");
            InvalidStateException.Check(slot.Fits(functions[i]), Component,
                $"PCI function {slot.Location} ({functions[i].Name}) was saved as a {slot.Kind}");
        }

        Clock.RestoreState(state.Clock);
        Timers.RestoreState(state.Timers ?? throw new InvalidStateException(Component, "the timers' state is missing")); // before the devices re-arm theirs
        unsafe
        {
            ram.AsSpan().CopyTo(new Span<byte>(Ram.HostBase, ram.Length));
        }
        Ram.NoteWrite(0, Ram.Size); // any code decoded so far is stale
        Iommu?.RestoreState(state.Iommu!);
        ApicBus.RestoreState(state.ApicBus);
        for (int i = 0; i < LocalApics.Length; i++)
        {
            LocalApics[i].RestoreState(apics[i]);
        }
        IoApic.RestoreState(state.IoApic);
        Pic.RestoreState(state.Pic);
        Com1.RestoreState(state.Com1);
        Pit.RestoreState(state.Pit);
        Rtc.RestoreState(state.Rtc);
        I8042.RestoreState(state.I8042);
        AcpiPm.RestoreState(state.AcpiPm);
        Hpet.RestoreState(state.Hpet);
        for (int i = 0; i < functions.Length; i++)
        {
            switch (functions[i])
            {
                case VirtioPciTransport transport:
                    transport.RestoreState(slots[i].Virtio!);
                    break;
                case EduDevice edu:
                    edu.RestoreState(slots[i].Edu!);
                    break;
                default:
                    ((IPersistent<PciFunctionState>)functions[i]).RestoreState(slots[i].Function!);
                    break;
            }
        }
        for (int i = 0; i < Cpus.Length; i++)
        {
            Cpus[i].RestoreState(cpus[i]);
        }
    }
}
