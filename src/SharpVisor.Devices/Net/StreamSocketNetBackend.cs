using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using SharpVisor.Core;

namespace SharpVisor.Devices.Net;

/// <summary>
/// A network backend over one TCP stream, framed as QEMU's "-netdev socket" and "-netdev stream"
/// do: each Ethernet frame is preceded by its length as a 4-byte big-endian integer. One side
/// listens, the other connects, so two SharpVisor (or QEMU) VMs share a point-to-point Ethernet link.
/// </summary>
/// <remarks>
/// <para>The link is up while a peer is connected. The connecting side retries every
/// <see cref="RetryInterval"/> until the listener answers (like QEMU's reconnect option), and again
/// whenever the peer goes away; the listening side accepts a new peer. Neither ends the VM: the
/// guest sees its carrier go down and come back.</para>
/// <para>Frames sent while no peer is connected are dropped (as a cable that is not plugged in). A
/// send that cannot complete within <see cref="SendTimeoutMs"/> drops the connection, so a peer
/// that stops reading cannot stall the vCPU. A length above <see cref="EthernetFrame.MaxLength"/>
/// from the peer is a framing error: the connection is closed.</para>
/// </remarks>
public sealed class StreamSocketNetBackend : INetBackend
{
    public const int SendTimeoutMs = 200;
    public static readonly TimeSpan RetryInterval = TimeSpan.FromSeconds(1);
    /// <summary>A connection attempt to a host that does not answer at all gives up after this.</summary>
    static readonly TimeSpan ConnectTimeout = TimeSpan.FromSeconds(5);

    /// <summary>The log of the VM whose NIC uses this backend.</summary>
    readonly Log Log;
    readonly Socket? _listener;
    readonly IPEndPoint? _connectTo;
    readonly Lock _sendGate = new();
    readonly CancellationTokenSource _stop = new();
    Socket? _peer;
    Thread? _thread;
    NetFrameReceiver? _receiver;
    NetLinkChanged? _linkChanged;

    public readonly Counter FramesDropped = new("net.socket.frames_dropped");
    public readonly Counter Connections = new("net.socket.connections");
    public IEnumerable<Counter> Counters => [FramesDropped, Connections];

    StreamSocketNetBackend(Socket? listener, IPEndPoint? connectTo, Log? log)
    {
        Log = log ?? new Log();
        _listener = listener;
        _connectTo = connectTo;
    }

    /// <summary>Listens on <paramref name="endPoint"/> (port 0 picks one: see <see cref="LocalEndPoint"/>).</summary>
    public static StreamSocketNetBackend Listen(IPEndPoint endPoint, Log? log = null)
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
        return new StreamSocketNetBackend(listener, null, log);
    }

    /// <summary>Connects to a listening peer (retrying in the background until it answers).</summary>
    public static StreamSocketNetBackend Connect(IPEndPoint endPoint, Log? log = null) => new(null, endPoint, log);

    public EndPoint? LocalEndPoint => _listener?.LocalEndPoint;

    /// <summary>True while a peer is connected.</summary>
    public bool Connected => Volatile.Read(ref _peer) is not null;

    public void Start(NetFrameReceiver receiver, NetLinkChanged linkChanged)
    {
        _receiver = receiver;
        _linkChanged = linkChanged;
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
                // A partial frame leaves the stream out of step: end this connection. The receive
                // thread sees it end and reports the link down (not here: the caller holds the
                // device lock, and the link change interrupts the guest).
                FramesDropped.Increment();
                Interlocked.CompareExchange(ref _peer, null, peer);
                Shutdown(peer);
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
        var frame = new byte[EthernetFrame.MaxLength];
        var header = new byte[4];
        bool waitingReported = false;
        while (!_stop.IsCancellationRequested)
        {
            Socket? peer;
            try
            {
                peer = _listener is not null ? _listener.Accept() : ConnectOnce(ref waitingReported);
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                peer = null; // listener closed by Dispose, or a failed accept: loop and check _stop
            }
            if (peer is null)
            {
                _stop.Token.WaitHandle.WaitOne(_connectTo is not null ? RetryInterval : TimeSpan.FromMilliseconds(100));
                continue;
            }
            string who = DescribePeer(peer);
            peer.NoDelay = true;
            peer.SendTimeout = SendTimeoutMs;
            Connections.Increment();
            Volatile.Write(ref _peer, peer);
            if (_stop.IsCancellationRequested)
            {
                Shutdown(peer); // Dispose ran meanwhile and did not see this connection
                break;
            }
            if (waitingReported)
            {
                Log.Warn("net", $"connected to {who}: link up");
                waitingReported = false;
            }
            else
            {
                Log.Info("net", $"connected to {who}: link up");
            }
            _linkChanged?.Invoke(true);
            string reason = ReceiveFrames(peer, frame, header);
            Interlocked.CompareExchange(ref _peer, null, peer);
            Shutdown(peer);
            _linkChanged?.Invoke(false);
            if (!_stop.IsCancellationRequested)
            {
                Log.Warn("net", $"{who} {reason}: link down; {(_connectTo is not null ? "reconnecting" : "waiting for a new connection")}");
                waitingReported = true;
            }
        }
    }

    /// <summary>Delivers frames until the connection ends; returns why it ended.</summary>
    string ReceiveFrames(Socket peer, byte[] frame, byte[] header)
    {
        try
        {
            while (ReceiveExactly(peer, header))
            {
                int length = BinaryPrimitives.ReadInt32BigEndian(header);
                if (length < 0 || length > frame.Length)
                {
                    return $"sent a {length}-byte frame (framing error, above {frame.Length})";
                }
                if (!ReceiveExactly(peer, frame.AsSpan(0, length)))
                {
                    break;
                }
                _receiver?.Invoke(frame.AsSpan(0, length));
            }
            return "closed the connection";
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            return $"connection failed ({e.Message})";
        }
    }

    Socket? ConnectOnce(ref bool waitingReported)
    {
        var socket = new Socket(_connectTo!.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
        timeout.CancelAfter(ConnectTimeout);
        try
        {
            socket.ConnectAsync(_connectTo, timeout.Token).AsTask().GetAwaiter().GetResult();
            return socket;
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException or ObjectDisposedException)
        {
            socket.Dispose();
            if (!waitingReported && !_stop.IsCancellationRequested)
            {
                string why = e is SocketException se ? se.Message : "no answer";
                Log.Warn("net", $"cannot connect to {_connectTo} ({why}); retrying every {RetryInterval.TotalSeconds:0.#} s (the guest's link is down until the peer listens)");
                waitingReported = true;
            }
            return null;
        }
    }

    static string DescribePeer(Socket peer)
    {
        try
        {
            return $"peer {peer.RemoteEndPoint}";
        }
        catch (SocketException)
        {
            return "peer";
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

    /// <summary>Ends a connection; a receive blocked on it returns at once.</summary>
    static void Shutdown(Socket peer)
    {
        try
        {
            peer.Shutdown(SocketShutdown.Both);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            // Already closed.
        }
        peer.Dispose();
    }

    public void Dispose()
    {
        _stop.Cancel();
        _listener?.Dispose();
        if (Interlocked.Exchange(ref _peer, null) is { } peer)
        {
            Shutdown(peer);
        }
        _thread?.Join(1000);
    }
}
