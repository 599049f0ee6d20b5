using System.Text;

namespace SharpVisor.Integration.Tests;

/// <summary>
/// Watches console output for Linux's "Kernel panic" line. A panicked kernel never powers off, so
/// a test stops the VM once the line is complete: its reason ("not syncing: ...") is then in the
/// output for whoever reads the failure.
/// </summary>
public sealed class PanicWatch
{
    static readonly byte[] s_marker = Encoding.ASCII.GetBytes("Kernel panic");
    int _matched;
    bool _seen;

    /// <summary>Takes the next output byte; true once the panic line has ended (or grown long).</summary>
    public bool Feed(byte b)
    {
        if (_seen)
        {
            return b == (byte)'\n' || ++_matched > 400;
        }
        _matched = b == s_marker[_matched] ? _matched + 1 : b == s_marker[0] ? 1 : 0;
        if (_matched == s_marker.Length)
        {
            _seen = true;
            _matched = 0;
        }
        return false;
    }
}
