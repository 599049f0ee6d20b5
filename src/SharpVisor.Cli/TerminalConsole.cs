using System.Diagnostics;

namespace SharpVisor.Cli;

/// <summary>
/// Connects the guest's console (the serial port, or the virtio console with --console virtio) to
/// this process's terminal. Interactive terminals go into
/// raw mode (every key, Ctrl-C included, goes to the guest); Ctrl-A x quits and Ctrl-A Ctrl-A sends
/// one Ctrl-A, as in QEMU. Piped stdin/stdout are passed through as bytes.
/// </summary>
public sealed class TerminalConsole : IDisposable
{
    const byte CtrlA = 0x01;
    readonly Action<byte> _toGuest;
    readonly Action _quit;
    readonly Stream _stdout = Console.OpenStandardOutput();
    readonly BufferedStream _out;
    readonly Lock _outGate = new();
    readonly Timer _flusher;
    string? _savedTty;
    Thread? _reader;

    public TerminalConsole(Action<byte> toGuest, Action quit)
    {
        _toGuest = toGuest;
        _quit = quit;
        _out = new BufferedStream(_stdout, 64 * 1024);
        // Output is flushed every 15 ms rather than per byte: a booting kernel prints tens of KiB.
        _flusher = new Timer(_ => Flush(), null, 15, 15);
    }

    public bool Interactive => !Console.IsInputRedirected;

    public void Start()
    {
        if (Interactive)
        {
            _savedTty = Stty("-g")?.Trim();
            Stty("raw -echo");
        }
        _reader = new Thread(ReadLoop) { IsBackground = true, Name = "console-input" };
        _reader.Start();
    }

    /// <summary>A byte the guest transmitted.</summary>
    public void Write(byte b)
    {
        lock (_outGate)
        {
            _out.WriteByte(b);
        }
    }

    public void Flush()
    {
        lock (_outGate)
        {
            try
            {
                _out.Flush();
            }
            catch (IOException)
            {
                // The reader of our stdout went away; the guest keeps running.
            }
        }
    }

    void ReadLoop()
    {
        using var stdin = Console.OpenStandardInput();
        var buf = new byte[256];
        bool escape = false;
        while (true)
        {
            int n;
            try
            {
                n = stdin.Read(buf, 0, buf.Length);
            }
            catch (IOException)
            {
                return;
            }
            if (n <= 0)
            {
                return; // end of input: the guest just stops receiving
            }
            for (int i = 0; i < n; i++)
            {
                byte b = buf[i];
                if (Interactive && escape)
                {
                    escape = false;
                    if (b is (byte)'x' or (byte)'X')
                    {
                        _quit();
                        return;
                    }
                    if (b == CtrlA)
                    {
                        _toGuest(CtrlA);
                    }
                    continue;
                }
                if (Interactive && b == CtrlA)
                {
                    escape = true;
                    continue;
                }
                // A terminal in raw mode sends CR for Enter; the guest's tty turns it into NL itself.
                _toGuest(b);
            }
        }
    }

    static string? Stty(string args)
    {
        try
        {
            var psi = new ProcessStartInfo("stty", args) { RedirectStandardOutput = true, UseShellExecute = false };
            using var p = Process.Start(psi);
            if (p is null)
            {
                return null;
            }
            string output = p.StandardOutput.ReadToEnd();
            p.WaitForExit();
            return p.ExitCode == 0 ? output : null;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return null;
        }
    }

    public void Dispose()
    {
        _flusher.Dispose();
        Flush();
        if (_savedTty is { Length: > 0 })
        {
            Stty(_savedTty);
        }
    }
}
