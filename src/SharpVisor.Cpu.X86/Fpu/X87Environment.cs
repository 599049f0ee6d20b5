namespace SharpVisor.Cpu.X86.Fpu;

/// <summary>
/// The x87 environment and state images of FSTENV/FLDENV (14 or 28 bytes) and FSAVE/FRSTOR (94 or
/// 108 bytes: the environment then ST(0)..ST(7), 10 bytes each), Intel SDM Vol. 1 §8.1.10 and
/// figures 8-9 to 8-12. The layout depends on the operand size (16 or 32 bits; 64-bit mode uses
/// the 32-bit one) and on the mode: real-address and virtual-8086 mode store the instruction and
/// data pointers as 20/32-bit linear addresses instead of selector:offset.
/// </summary>
public static class X87Environment
{
    public const int MaxImage = 108;

    /// <summary>Builds the environment image (14 or 28 bytes) into <paramref name="image"/>.</summary>
    public static void Build(FpuState f, bool size32, bool realLayout, Span<byte> image)
    {
        ushort opcode = (ushort)(f.LastOpcode & 0x7FF);
        if (size32)
        {
            // The upper halves of the control, status and tag dwords and of the data-selector
            // dword are reserved; processors write ones there.
            Put32(image, 0, 0xFFFF_0000u | f.Control);
            Put32(image, 4, 0xFFFF_0000u | f.Status);
            Put32(image, 8, 0xFFFF_0000u | f.Tag);
            if (realLayout)
            {
                uint ip = (uint)(((ulong)f.LastCs << 4) + f.LastIp);
                uint dp = (uint)(((ulong)f.LastDs << 4) + f.LastDp);
                Put32(image, 12, 0xFFFF_0000u | (ip & 0xFFFF));
                Put32(image, 16, ((ip >> 16) << 12) | opcode);
                Put32(image, 20, 0xFFFF_0000u | (dp & 0xFFFF));
                Put32(image, 24, (dp >> 16) << 12);
            }
            else
            {
                Put32(image, 12, (uint)f.LastIp);
                Put32(image, 16, f.LastCs | ((uint)opcode << 16));
                Put32(image, 20, (uint)f.LastDp);
                Put32(image, 24, 0xFFFF_0000u | f.LastDs);
            }
        }
        else
        {
            Put16(image, 0, f.Control);
            Put16(image, 2, f.Status);
            Put16(image, 4, f.Tag);
            if (realLayout)
            {
                uint ip = (uint)(((ulong)f.LastCs << 4) + f.LastIp);
                uint dp = (uint)(((ulong)f.LastDs << 4) + f.LastDp);
                Put16(image, 6, (ushort)ip);
                Put16(image, 8, (ushort)((((ip >> 16) & 0xF) << 12) | opcode));
                Put16(image, 10, (ushort)dp);
                Put16(image, 12, (ushort)(((dp >> 16) & 0xF) << 12));
            }
            else
            {
                Put16(image, 6, (ushort)f.LastIp);
                Put16(image, 8, f.LastCs);
                Put16(image, 10, (ushort)f.LastDp);
                Put16(image, 12, f.LastDs);
            }
        }
    }

    /// <summary>Loads an environment image; ES and B are recomputed from the flags and the new masks.</summary>
    public static void Load(FpuState f, bool size32, bool realLayout, ReadOnlySpan<byte> image)
    {
        if (size32)
        {
            f.Control = X87Stack.ControlWord(Get16(image, 0));
            f.Status = Get16(image, 4);
            ushort tag = Get16(image, 8);
            if (realLayout)
            {
                uint ipHigh = Get32(image, 16);
                f.LastIp = Get16(image, 12) | (((ipHigh >> 12) & 0xFFFF) << 16);
                f.LastOpcode = (ushort)(ipHigh & 0x7FF);
                f.LastDp = Get16(image, 20) | (((Get32(image, 24) >> 12) & 0xFFFF) << 16);
                f.LastCs = f.LastDs = 0;
            }
            else
            {
                uint sel = Get32(image, 16);
                f.LastIp = Get32(image, 12);
                f.LastCs = (ushort)sel;
                f.LastOpcode = (ushort)((sel >> 16) & 0x7FF);
                f.LastDp = Get32(image, 20);
                f.LastDs = Get16(image, 24);
            }
            X87Stack.LoadTagWord(f, tag);
        }
        else
        {
            f.Control = X87Stack.ControlWord(Get16(image, 0));
            f.Status = Get16(image, 2);
            ushort tag = Get16(image, 4);
            if (realLayout)
            {
                ushort ipHigh = Get16(image, 8);
                f.LastIp = Get16(image, 6) | ((ulong)(ipHigh >> 12) << 16);
                f.LastOpcode = (ushort)(ipHigh & 0x7FF);
                f.LastDp = Get16(image, 10) | ((ulong)(Get16(image, 12) >> 12) << 16);
                f.LastCs = f.LastDs = 0;
            }
            else
            {
                f.LastIp = Get16(image, 6);
                f.LastCs = Get16(image, 8);
                f.LastDp = Get16(image, 10);
                f.LastDs = Get16(image, 12);
            }
            X87Stack.LoadTagWord(f, tag);
        }
        X87Stack.UpdateErrorSummary(f);
    }

    static void Put16(Span<byte> b, int at, ushort v) => BitConverter.TryWriteBytes(b[at..], v);

    static void Put32(Span<byte> b, int at, uint v) => BitConverter.TryWriteBytes(b[at..], v);

    static ushort Get16(ReadOnlySpan<byte> b, int at) => BitConverter.ToUInt16(b[at..]);

    static uint Get32(ReadOnlySpan<byte> b, int at) => BitConverter.ToUInt32(b[at..]);
}
