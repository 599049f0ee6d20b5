using SharpVisor.Core;

namespace SharpVisor.Devices.Virtio;

/// <summary>
/// virtio-rng / entropy device (virtio 1.2, 5.4): one request queue whose writable buffers are
/// filled from an <see cref="IEntropySource"/> — the host's cryptographic random number generator,
/// or with the deterministic clock a seeded generator, so that runs repeat. No device configuration.
/// </summary>
public sealed class VirtioEntropy : VirtioDevice
{
    /// <summary>Bytes delivered per request at most (used.len says how many): bounds the work per buffer.</summary>
    public const int MaxBytesPerRequest = 4096;

    readonly byte[] _scratch = new byte[MaxBytesPerRequest];
    readonly IEntropySource _source;

    /// <param name="source">Where the bytes come from; the host's RNG when null.</param>
    public VirtioEntropy(IEntropySource? source = null)
        : base("rng", VirtioDeviceType.EntropySource, 0xFF_00_00, 1, 64, 0, 0)
    {
        _source = source ?? new HostEntropySource();
    }

    protected internal override bool HandleRequest(int queue, DescriptorChain chain)
    {
        // 5.4.6: the driver posts device-writable buffers only; readable ones are ignored.
        int n = (int)Math.Min(chain.WritableLength, (uint)_scratch.Length);
        var buffer = _scratch.AsSpan(0, n);
        _source.Fill(buffer);
        chain.Write(0, buffer);
        buffer.Clear();
        return true;
    }

    // ---- state: a seeded source's position (host randomness has none) ----

    protected internal override VirtioDeviceState SaveDeviceState() =>
        base.SaveDeviceState() with { Entropy = new VirtioEntropyState { Generator = (_source as SeededEntropySource)?.State } };

    /// <summary>
    /// Accepts a generator position exactly when this device has a seeded source (the same
    /// --clock on both sides), and only a position xoshiro256** can be at.
    /// </summary>
    protected internal override void CheckDeviceState(VirtioDeviceState state, string component)
    {
        base.CheckDeviceState(state with { Entropy = null }, component);
        var entropy = state.Entropy ?? throw new InvalidStateException(component, "the entropy source's state is missing");
        InvalidStateException.CheckVersion(entropy.Version, VirtioEntropyState.CurrentVersion, component);
        if (_source is SeededEntropySource)
        {
            InvalidStateException.Check(entropy.Generator is not null, component,
                "saved with host randomness; this device uses a seeded generator (--clock deterministic)");
            InvalidStateException.Check(SeededEntropySource.CheckState(entropy.Generator) is null, component, SeededEntropySource.CheckState(entropy.Generator)!);
        }
        else
        {
            InvalidStateException.Check(entropy.Generator is null, component,
                "saved with a seeded generator (--clock deterministic); this device uses host randomness");
        }
    }

    protected internal override void ApplyDeviceState(VirtioDeviceState state)
    {
        base.ApplyDeviceState(state);
        if (_source is SeededEntropySource seeded)
        {
            seeded.State = state.Entropy!.Generator!;
        }
    }
}
