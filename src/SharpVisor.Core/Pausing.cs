namespace SharpVisor.Core;

/// <summary>
/// A component that changes guest-visible state (guest RAM, device registers, interrupts) from a
/// host thread other than the vCPU and timer threads: a network backend's receive thread, the
/// terminal's input. The VM pauses every such component when it pauses, so that a paused machine is
/// still and its saved state consistent, and resumes them when it resumes.
/// </summary>
/// <remarks>
/// What arrives while paused is held on the host side, bounded (the component stops reading its
/// socket or file, so the host kernel holds the data; or it keeps the bytes in a bounded queue),
/// and delivered after <see cref="Resume"/> in arrival order. Calls nest: every
/// <see cref="Pause"/> is matched by one <see cref="Resume"/>, and the component runs again after
/// the last one. Never call them from the component's own delivering thread.
/// </remarks>
public interface IPausable
{
    /// <summary>
    /// Returns once the component's threads cannot change guest-visible state any more: a delivery
    /// in progress (a packet half copied) has finished, and none starts until <see cref="Resume"/>.
    /// </summary>
    void Pause();

    /// <summary>Ends one <see cref="Pause"/>; after the last, what was held is delivered in order and delivery goes on.</summary>
    void Resume();
}

/// <summary>
/// The gate a host thread passes to deliver into the guest, for a component whose thread may simply
/// wait while the VM is paused (a network backend's reader: while it waits it does not read, so the
/// host kernel holds what arrives). The thread brackets each delivery with <see cref="Enter"/> and
/// <see cref="Exit"/>; <see cref="Pause"/> waits for a delivery in progress, and
/// <see cref="Enter"/> waits while paused.
/// </summary>
/// <remarks>Two uncontended lock acquisitions per delivery, no allocation.</remarks>
public sealed class DeliveryGate : IPausable
{
    readonly object _lock = new();
    int _pauses;
    int _delivering;
    bool _closed;

    /// <summary>
    /// Before a delivery: waits while the gate is paused. Returns false once the gate is
    /// <see cref="Close"/>d (the component is being disposed): the thread must drop what it holds
    /// and not deliver. After true, call <see cref="Exit"/> when the delivery is complete.
    /// </summary>
    public bool Enter()
    {
        lock (_lock)
        {
            while (_pauses > 0 && !_closed)
            {
                Monitor.Wait(_lock);
            }
            if (_closed)
            {
                return false;
            }
            _delivering++;
            return true;
        }
    }

    /// <summary>After a delivery that <see cref="Enter"/> let through.</summary>
    public void Exit()
    {
        lock (_lock)
        {
            _delivering--;
            if (_delivering == 0)
            {
                Monitor.PulseAll(_lock); // a Pause may be waiting for this delivery
            }
        }
    }

    /// <summary>True while at least one <see cref="Pause"/> has no matching <see cref="Resume"/>.</summary>
    public bool IsPaused
    {
        get
        {
            lock (_lock)
            {
                return _pauses > 0;
            }
        }
    }

    public void Pause()
    {
        lock (_lock)
        {
            _pauses++;
            while (_delivering > 0)
            {
                Monitor.Wait(_lock);
            }
        }
    }

    public void Resume()
    {
        lock (_lock)
        {
            if (_pauses == 0)
            {
                ThrowHelper.InvalidOperation("Resume without a matching Pause");
            }
            _pauses--;
            if (_pauses == 0)
            {
                Monitor.PulseAll(_lock);
            }
        }
    }

    /// <summary>For good: a waiting <see cref="Enter"/> returns false, as does every later one. Call when disposing.</summary>
    public void Close()
    {
        lock (_lock)
        {
            _closed = true;
            Monitor.PulseAll(_lock);
        }
    }
}

/// <summary>
/// Bytes a host thread hands to a guest device (typed input for the serial port or the virtio
/// console), held while the VM is paused: the sending thread never waits (the terminal's reader
/// must still see Ctrl-A x), the bytes wait in a bounded queue and reach the device after
/// <see cref="Resume"/>, before any byte sent later.
/// </summary>
/// <param name="deliver">Gives bytes to the device (called under this object's lock, one caller at a time, in order).</param>
/// <param name="capacity">Bytes held at most while paused; beyond that they are dropped and counted.</param>
/// <param name="name">Prefix of the counter name.</param>
public sealed class HeldInput(Action<ReadOnlySpan<byte>> deliver, int capacity, string name) : IPausable
{
    readonly Lock _lock = new();
    readonly byte[] _held = new byte[capacity];
    int _heldCount;
    int _pauses;

    /// <summary>Bytes that came while paused and did not fit the queue.</summary>
    public readonly Counter Dropped = new($"{name}.held_input_dropped");
    public IEnumerable<Counter> Counters => [Dropped];

    /// <summary>Bytes held for delivery after <see cref="Resume"/>.</summary>
    public int HeldCount
    {
        get { lock (_lock) { return _heldCount; } }
    }

    /// <summary>Delivers <paramref name="data"/> now, or holds it while paused.</summary>
    public void Send(ReadOnlySpan<byte> data)
    {
        lock (_lock)
        {
            if (_pauses == 0)
            {
                deliver(data); // nothing is held: a Resume delivers the held bytes before it returns
                return;
            }
            foreach (byte b in data)
            {
                if (_heldCount == _held.Length)
                {
                    Dropped.IncrementUnsynchronized(); // under _lock: one writer at a time
                    continue;
                }
                _held[_heldCount++] = b;
            }
        }
    }

    /// <summary>Once it returns, no delivery is in progress (they run under the lock) and none starts until <see cref="Resume"/>.</summary>
    public void Pause()
    {
        lock (_lock)
        {
            _pauses++;
        }
    }

    public void Resume()
    {
        lock (_lock)
        {
            if (_pauses == 0)
            {
                ThrowHelper.InvalidOperation("Resume without a matching Pause");
            }
            if (--_pauses > 0 || _heldCount == 0)
            {
                return;
            }
            deliver(_held.AsSpan(0, _heldCount));
            _heldCount = 0;
        }
    }
}
