using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using SharpVisor.Core;

namespace SharpVisor.Devices.Virtio;

/// <summary>
/// A network backend over one TCP stream, framed as QEMU's "-netdev socket" does: each Ethernet
/// frame is preceded by its length as a 4-byte big-endian integer. One side listens, the other
/// connects, so two SharpVisor (or QEMU) VMs share a point-to-point Ethernet link.
/// </summary>
/// <remarks>
/// Frames sent while no peer is connected are dropped (as a cable that is not plugged in). A
/// send that cannot complete within <see cref="SendTimeoutMs"/> drops the connection, so a peer
/// that stops reading cannot stall the vCPU. A length above <see cref="VirtioNet.MaxFrameLength"/>
/// from the peer is a framing error: the connection is closed.
/// </remarks>
public sealed class StreamSocketNetBackend : INetBackend
{
    public const int SendTimeoutMs = 200;

    readonly Socket? _listener;
    readonly EndPoint? _connectTo;
    readonly Lock _sendGate = new();
    readonly CancellationTokenSource _stop = new();
    Socket? _peer;
    Thread? _thread;
    NetFrameReceiver? _receiver;

    public readonly Counter FramesDropped = new("net.socket.frames_dropped");

    StreamSocketNetBackend(Socket? listener, EndPoint? connectTo)
    {
        _listener = listener;
        _connectTo = connectTo;
    }

    /// <summary>Listens on <paramref name="endPoint"/> (port 0 picks one: see <see cref="LocalEndPoint"/>).</summary>
    public static StreamSocketNetBackend Listen(IPEndPoint endPoint)
    {
        var listener = new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            listener.Bind(endPoint);
            listener.Listen(1);
        }
        catch (SocketException e)
        {
            listener.Dispose();
            throw new UserErrorException($"cannot listen for the network socket on {endPoint}: {e.Message}");
        }
        return new StreamSocketNetBackend(listener, null);
    }

    /// <summary>Connects to a listening peer (retrying in the background until it answers).</summary>
    public static StreamSocketNetBackend Connect(IPEndPoint endPoint) => new(null, endPoint);

    public EndPoint? LocalEndPoint => _listener?.LocalEndPoint;

    /// <summary>True while a peer is connected.</summary>
    public bool Connected => Volatile.Read(ref _peer) is not null;

    public void Start(NetFrameReceiver receiver)
    {
        _receiver = receiver;
        _thread = new Thread(Run) { IsBackground = true, Name = "net-socket" };
        _thread.Start();
    }

    public void Send(ReadOnlySpan<byte> frame)
    {
        var peer = Volatile.Read(ref _peer);
        if (peer is null)
        {
            FramesDropped.Increment();
            return;
        }
        Span<byte> length = stackalloc byte[4];
        BinaryPrimitives.WriteInt32BigEndian(length, frame.Length);
        lock (_sendGate)
        {
            try
            {
                SendAll(peer, length);
                SendAll(peer, frame);
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                FramesDropped.Increment();
                Drop(peer);
            }
        }
    }

    static void SendAll(Socket socket, ReadOnlySpan<byte> data)
    {
        while (!data.IsEmpty)
        {
            data = data[socket.Send(data)..];
        }
    }

    void Run()
    {
        var frame = new byte[VirtioNet.MaxFrameLength];
        var header = new byte[4];
        while (!_stop.IsCancellationRequested)
        {
            Socket? peer = null;
            try
            {
                peer = _listener is not null ? _listener.Accept() : ConnectOnce();
                if (peer is null)
                {
                    _stop.Token.WaitHandle.WaitOne(100);
                    continue;
                }
                peer.NoDelay = true;
                peer.SendTimeout = SendTimeoutMs;
                Volatile.Write(ref _peer, peer);
                while (ReceiveExactly(peer, header))
                {
                    int length = BinaryPrimitives.ReadInt32BigEndian(header);
                    if (length < 0 || length > frame.Length)
                    {
                        Log.Once("net.socket.framing", "net", $"socket peer sent a {length}-byte frame: closing the connection");
                        break;
                    }
                    if (!ReceiveExactly(peer, frame.AsSpan(0, length)))
                    {
                        break;
                    }
                    _receiver?.Invoke(frame.AsSpan(0, length));
                }
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                // Peer gone or backend disposed: loop to accept / reconnect, or exit.
            }
            if (peer is not null)
            {
                Drop(peer);
            }
            if (_connectTo is not null && !_stop.IsCancellationRequested)
            {
                _stop.Token.WaitHandle.WaitOne(100);
            }
        }
    }

    Socket? ConnectOnce()
    {
        var socket = new Socket(_connectTo!.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            socket.Connect(_connectTo);
            return socket;
        }
        catch (SocketException)
        {
            socket.Dispose();
            return null;
        }
    }

    static bool ReceiveExactly(Socket socket, Span<byte> buffer)
    {
        while (!buffer.IsEmpty)
        {
            int n = socket.Receive(buffer);
            if (n == 0)
            {
                return false;
            }
            buffer = buffer[n..];
        }
        return true;
    }

    void Drop(Socket peer)
    {
        Interlocked.CompareExchange(ref _peer, null, peer);
        peer.Dispose();
    }

    public void Dispose()
    {
        _stop.Cancel();
        _listener?.Dispose();
        if (Volatile.Read(ref _peer) is { } peer)
        {
            Drop(peer);
        }
        _thread?.Join(1000);
    }
}
