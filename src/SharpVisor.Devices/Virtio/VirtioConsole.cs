using System.Buffers.Binary;
using SharpVisor.Core;

namespace SharpVisor.Devices.Virtio;

/// <summary>Receives what the guest writes to a virtio console.</summary>
public delegate void ConsoleOutput(ReadOnlySpan<byte> data);

/// <summary>
/// virtio-console (virtio 1.2, 5.3) with the single port 0 (no VIRTIO_CONSOLE_F_MULTIPORT): queue 0
/// (receiveq) carries host input to the guest, queue 1 (transmitq) guest output to
/// <see cref="Output"/>. VIRTIO_CONSOLE_F_EMERG_WRITE is offered: a write to emerg_wr prints one byte.
/// Linux binds hvc0 to it.
/// </summary>
public sealed class VirtioConsole : VirtioDevice
{
    public const int FeatureSize = 0;
    public const int FeatureEmergencyWrite = 2;
    public const int ReceiveQueue = 0;
    public const int TransmitQueue = 1;
    /// <summary>Input kept while the guest has no receive buffer posted; beyond it input is dropped.</summary>
    public const int InputCapacity = 64 * 1024;

    readonly byte[] _input = new byte[InputCapacity];
    readonly byte[] _scratch = new byte[4096];
    int _inputStart;
    int _inputCount;

    public readonly Counter InputDropped = new("virtio.console.input_dropped");

    public VirtioConsole(ConsoleOutput? output = null)
        : base("console", VirtioDeviceType.Console, 0x07_80_00, 2, 128, 1UL << FeatureEmergencyWrite, 12)
    {
        Output = output;
        // 5.3.4 struct virtio_console_config: cols, rows (valid with F_SIZE only), max_nr_ports, emerg_wr.
        BinaryPrimitives.WriteUInt16LittleEndian(DeviceConfig, 80);
        BinaryPrimitives.WriteUInt16LittleEndian(DeviceConfig.AsSpan(2), 25);
        BinaryPrimitives.WriteUInt32LittleEndian(DeviceConfig.AsSpan(4), 1);
    }

    public ConsoleOutput? Output { get; set; }

    public override IEnumerable<Counter> Counters => [.. base.Counters, InputDropped];

    /// <summary>Host input (like a UART's receive side): queued, and delivered as soon as the guest has buffers.</summary>
    public void Input(ReadOnlySpan<byte> data)
    {
        lock (Gate)
        {
            foreach (byte b in data)
            {
                if (_inputCount == InputCapacity)
                {
                    InputDropped.Increment();
                    continue;
                }
                _input[(_inputStart + _inputCount) % InputCapacity] = b;
                _inputCount++;
            }
        }
        Kick(ReceiveQueue);
    }

    /// <summary>Bytes of input not yet delivered to the guest.</summary>
    public int PendingInput
    {
        get { lock (Gate) { return _inputCount; } }
    }

    protected internal override bool WantsBuffers(int queue) => queue != ReceiveQueue || _inputCount > 0;

    protected internal override void Reset()
    {
        // Input that arrived before the driver was ready stays queued; nothing else to drop.
    }

    protected internal override bool HandleRequest(int queue, DescriptorChain chain)
    {
        if (queue == ReceiveQueue)
        {
            int n = (int)Math.Min(chain.WritableLength, (uint)_inputCount);
            int first = Math.Min(n, InputCapacity - _inputStart);
            if (!chain.Write(0, _input.AsSpan(_inputStart, first)) || !chain.Write((uint)first, _input.AsSpan(0, n - first)))
            {
                return true; // Faulted: the caller breaks the queue
            }
            _inputStart = (_inputStart + n) % InputCapacity;
            _inputCount -= n;
            return true;
        }
        // transmitq: device-readable buffers only (5.3.6.1).
        for (uint done = 0; done < chain.ReadableLength;)
        {
            int n = (int)Math.Min((uint)_scratch.Length, chain.ReadableLength - done);
            if (!chain.Read(done, _scratch.AsSpan(0, n)))
            {
                return true;
            }
            Output?.Invoke(_scratch.AsSpan(0, n));
            done += (uint)n;
        }
        return true;
    }

    protected internal override bool WriteConfig(int offset, int size, ulong value)
    {
        // 5.3.4: emerg_wr (offset 8) takes one character when VIRTIO_CONSOLE_F_EMERG_WRITE is negotiated.
        if (offset == 8 && size == 4 && IsNegotiated(FeatureEmergencyWrite))
        {
            Span<byte> b = [(byte)value];
            Output?.Invoke(b);
            return true;
        }
        return false;
    }

    // ---- state: the configuration (fixed) and the input not yet delivered ----

    protected internal override VirtioDeviceState SaveDeviceState()
    {
        var pending = new byte[_inputCount];
        int first = Math.Min(_inputCount, InputCapacity - _inputStart);
        _input.AsSpan(_inputStart, first).CopyTo(pending);
        _input.AsSpan(0, _inputCount - first).CopyTo(pending.AsSpan(first));
        return base.SaveDeviceState() with { Console = new VirtioConsoleState { PendingInput = pending } };
    }

    protected internal override void CheckDeviceState(VirtioDeviceState state, string component)
    {
        base.CheckDeviceState(state with { Console = null }, component);
        var pending = state.Console?.PendingInput ?? throw new InvalidStateException(component, "the console's pending input is missing");
        InvalidStateException.Check(pending.Length <= InputCapacity, component,
            $"{pending.Length} bytes of pending input, at most {InputCapacity} are kept");
    }

    protected internal override void ApplyDeviceState(VirtioDeviceState state)
    {
        base.ApplyDeviceState(state);
        var pending = state.Console!.PendingInput;
        pending.CopyTo(_input, 0);
        _inputStart = 0;
        _inputCount = pending.Length;
    }
}
