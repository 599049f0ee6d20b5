using System.Diagnostics;
using SharpVisor.Core;

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
    readonly Log Log;
    readonly Stream _stdout = Console.OpenStandardOutput();
    readonly BufferedStream _out;
    readonly Lock _outGate = new();
    readonly Timer _flusher;
    readonly long _outputLimit;
    long _written;
    string? _savedTty;
    Thread? _reader;

    /// <summary>Guest output not written because it came past the output limit.</summary>
    public Counter DroppedBytes { get; } = new("console.dropped_bytes");

    /// <param name="outputLimit">Bytes of guest output written at most (for the whole run, reboots included); null for no limit.</param>
    /// <param name="log">The run's log; while the terminal is in raw mode its lines end in CR LF.</param>
    public TerminalConsole(Action<byte> toGuest, Action quit, Log log, long? outputLimit = null)
    {
        Log = log;
        _toGuest = toGuest;
        _quit = quit;
        _outputLimit = outputLimit ?? long.MaxValue;
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
            // Environment.Exit (an exception on another thread) skips Dispose: restore the terminal then too.
            AppDomain.CurrentDomain.ProcessExit += RestoreTerminal;
            // Raw mode has no output processing: log lines (e.g. a network peer leaving) need CR LF.
            Log.SetWriter(new StreamWriter(Console.OpenStandardError()) { AutoFlush = true, NewLine = "\r\n" });
        }
        _reader = new Thread(ReadLoop) { IsBackground = true, Name = "console-input" };
        _reader.Start();
    }

    /// <summary>A byte the guest transmitted; past the output limit it is dropped and counted.</summary>
    public void Write(byte b)
    {
        lock (_outGate)
        {
            if (_written < _outputLimit)
            {
                _out.WriteByte(b);
                _written++;
                return;
            }
            if (DroppedBytes.Value == 0)
            {
                Log.Warn("console", $"guest output reached the --console-limit of {_outputLimit} bytes (stdout is not a terminal); further guest output is dropped and counted in {DroppedBytes.Name}");
            }
            DroppedBytes.IncrementUnsynchronized(); // under _outGate: one writer at a time
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
        // A plain stream on fd 0, not Console.OpenStandardInput: .NET's console stream re-applies
        // its own terminal settings (ISIG, OPOST on) before every read, which would undo raw mode.
        using var stdin = new FileStream(new Microsoft.Win32.SafeHandles.SafeFileHandle(0, ownsHandle: false), FileAccess.Read, bufferSize: 0);
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

    /// <summary>
    /// Runs stty on our terminal. The child gets no standard stream of ours (stty -F names the
    /// terminal): .NET restores its own terminal settings whenever a child that shares the
    /// terminal exits, which would undo raw mode at once.
    /// </summary>
    static string? Stty(string args)
    {
        try
        {
            string? tty = new FileInfo("/proc/self/fd/0").LinkTarget;
            if (tty is null || !tty.StartsWith("/dev/", StringComparison.Ordinal))
            {
                return null;
            }
            var psi = new ProcessStartInfo("stty", $"-F {tty} {args}")
            {
                RedirectStandardInput = true,
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                UseShellExecute = false,
            };
            using var p = Process.Start(psi);
            if (p is null)
            {
                return null;
            }
            p.StandardInput.Close();
            var error = p.StandardError.ReadToEndAsync();
            string output = p.StandardOutput.ReadToEnd();
            p.WaitForExit();
            error.Wait();
            return p.ExitCode == 0 ? output : null;
        }
        catch (Exception e) when (e is System.ComponentModel.Win32Exception or IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>Puts the terminal back as it was before raw mode (once; later calls do nothing).</summary>
    void RestoreTerminal(object? sender = null, EventArgs? e = null)
    {
        if (Interlocked.Exchange(ref _savedTty, null) is { Length: > 0 } saved)
        {
            Stty(saved);
        }
    }

    public void Dispose()
    {
        _flusher.Dispose();
        Flush();
        AppDomain.CurrentDomain.ProcessExit -= RestoreTerminal;
        RestoreTerminal();
        if (Interactive)
        {
            Log.SetWriter(Console.Error);
        }
    }
}
