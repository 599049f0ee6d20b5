using SharpVisor.Core;

namespace SharpVisor.Devices.Interrupts;

/// <summary>
/// The system bus between interrupt sources and the local APICs (SDM Vol. 3A 11.6.2): physical
/// destinations (8-bit xAPIC, 32-bit x2APIC, broadcast 0xFF / 0xFFFFFFFF), logical flat and
/// cluster (xAPIC) and x2APIC cluster destinations, lowest-priority arbitration, and the ICR
/// shorthands. Wire it with <see cref="Attach"/> for each vCPU's APIC, in vCPU order.
/// </summary>
/// <remarks>
/// Lowest-priority delivery picks, among the matching APICs, one with the lowest processor
/// priority, rotating among equals (SDM 11.6.2.4 leaves the choice to the chipset). The bus holds no
/// lock while delivering; the APIC set is an immutable array replaced on attach.
/// </remarks>
public sealed class ApicBus : IApicIpiBus, IPersistent<ApicBus.State>
{
    LocalApic[] _apics = [];
    readonly Lock _attachGate = new();
    int _roundRobin;

    public readonly Counter Delivered = new("apicbus.delivered");
    public readonly Counter NoTarget = new("apicbus.no_target");

    public IEnumerable<Counter> Counters => [Delivered, NoTarget];

    public IReadOnlyList<LocalApic> Apics => Volatile.Read(ref _apics);

    /// <summary>
    /// Where lowest-priority arbitration starts its next scan (it decides which of equal-priority
    /// APICs gets the next interrupt). The attached APICs are wiring; each saves its own state.
    /// </summary>
    public sealed record State
    {
        public const int CurrentVersion = 1;
        public int Version { get; init; } = CurrentVersion;
        public int LowestPriorityRotation { get; init; }
    }

    /// <inheritdoc/>
    public State SaveState() => new() { LowestPriorityRotation = Volatile.Read(ref _roundRobin) };

    /// <inheritdoc/>
    public void RestoreState(State state)
    {
        ArgumentNullException.ThrowIfNull(state);
        InvalidStateException.CheckVersion(state.Version, State.CurrentVersion, "apicbus");
        Volatile.Write(ref _roundRobin, state.LowestPriorityRotation); // any value is a valid rotation
    }

    public void Attach(LocalApic apic)
    {
        lock (_attachGate)
        {
            var apics = _apics;
            if (apic.Id != (uint)apics.Length)
            {
                ThrowHelper.InvalidOperation($"local APIC {apic.Id} attached as number {apics.Length}; attach in vCPU order");
            }
            var next = new LocalApic[apics.Length + 1];
            apics.CopyTo(next, 0);
            next[^1] = apic;
            Volatile.Write(ref _apics, next);
        }
    }

    /// <summary>Delivers a message from the IOAPIC, an MSI or the IOMMU (8-bit 0xFF broadcasts too).</summary>
    public void Deliver(in ApicInterrupt interrupt) => Route(interrupt, shortBroadcast: true, exclude: null);

    /// <inheritdoc/>
    public void DeliverIpi(in ApicInterrupt interrupt, IpiShorthand shorthand, LocalApic source)
    {
        switch (shorthand)
        {
            case IpiShorthand.Self:
                Delivered.Increment();
                source.Accept(interrupt);
                return;
            case IpiShorthand.AllIncludingSelf:
                Route(interrupt with { Destination = 0xFFFF_FFFF, LogicalDestination = false }, shortBroadcast: true, exclude: null);
                return;
            case IpiShorthand.AllExcludingSelf:
                Route(interrupt with { Destination = 0xFFFF_FFFF, LogicalDestination = false }, shortBroadcast: true, exclude: source);
                return;
            default:
                // An x2APIC sender's 0xFF is APIC ID 255, not a broadcast (SDM 11.12.9).
                Route(interrupt, shortBroadcast: !source.IsX2ApicMode, exclude: null);
                return;
        }
    }

    void Route(in ApicInterrupt interrupt, bool shortBroadcast, LocalApic? exclude)
    {
        var apics = Volatile.Read(ref _apics);
        if (interrupt.DeliveryMode == ApicDeliveryMode.LowestPriority)
        {
            DeliverLowestPriority(apics, interrupt, shortBroadcast, exclude);
            return;
        }
        bool any = false;
        foreach (var apic in apics)
        {
            if (apic != exclude && apic.MatchesDestination(interrupt.Destination, interrupt.LogicalDestination, shortBroadcast))
            {
                any = true;
                Delivered.Increment();
                apic.Accept(interrupt);
            }
        }
        if (!any)
        {
            NoTarget.Increment();
        }
    }

    void DeliverLowestPriority(LocalApic[] apics, in ApicInterrupt interrupt, bool shortBroadcast, LocalApic? exclude)
    {
        int n = apics.Length;
        if (n == 0)
        {
            NoTarget.Increment();
            return;
        }
        // Start the scan after the last winner so equal priorities rotate.
        int start = (int)((uint)Interlocked.Increment(ref _roundRobin) % (uint)n);
        LocalApic? best = null;
        uint bestPriority = uint.MaxValue;
        for (int i = 0; i < n; i++)
        {
            var apic = apics[(start + i) % n];
            if (apic == exclude || !apic.MatchesDestination(interrupt.Destination, interrupt.LogicalDestination, shortBroadcast))
            {
                continue;
            }
            uint priority = apic.ArbitrationPriority & 0xF0;
            if (priority < bestPriority)
            {
                best = apic;
                bestPriority = priority;
            }
        }
        if (best is null)
        {
            NoTarget.Increment();
            return;
        }
        Delivered.Increment();
        best.Accept(interrupt);
    }
}
