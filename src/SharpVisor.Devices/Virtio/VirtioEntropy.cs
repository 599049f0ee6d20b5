using System.Security.Cryptography;

namespace SharpVisor.Devices.Virtio;

/// <summary>
/// virtio-rng / entropy device (virtio 1.2, 5.4): one request queue whose writable buffers are
/// filled from the host's cryptographic random number generator. No device configuration.
/// </summary>
public sealed class VirtioEntropy : VirtioDevice
{
    /// <summary>Bytes delivered per request at most (used.len says how many): bounds the work per buffer.</summary>
    public const int MaxBytesPerRequest = 4096;

    readonly byte[] _scratch = new byte[MaxBytesPerRequest];

    public VirtioEntropy()
        : base("rng", VirtioDeviceType.EntropySource, 0xFF_00_00, 1, 64, 0, 0)
    {
    }

    protected internal override bool HandleRequest(int queue, DescriptorChain chain)
    {
        // 5.4.6: the driver posts device-writable buffers only; readable ones are ignored.
        int n = (int)Math.Min(chain.WritableLength, (uint)_scratch.Length);
        var buffer = _scratch.AsSpan(0, n);
        RandomNumberGenerator.Fill(buffer);
        chain.Write(0, buffer);
        buffer.Clear();
        return true;
    }
}
