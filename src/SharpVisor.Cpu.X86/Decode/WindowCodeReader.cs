using Iced.Intel;

namespace SharpVisor.Cpu.X86.Decode;

/// <summary>An Iced code reader over a window of host memory (one guest page, or a scratch copy).</summary>
internal sealed unsafe class WindowCodeReader : CodeReader
{
    byte* _p;
    int _pos, _len;

    public void Set(byte* p, int length)
    {
        _p = p;
        _len = length;
        _pos = 0;
    }

    public int Position => _pos;

    public override int ReadByte() => _pos < _len ? _p[_pos++] : -1;
}
