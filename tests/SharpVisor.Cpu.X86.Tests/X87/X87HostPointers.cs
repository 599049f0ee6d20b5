using Iced.Intel;
using SharpVisor.Cpu.X86.Tests.Harness;

namespace SharpVisor.Cpu.X86.Tests.X87;

/// <summary>
/// How the host CPU keeps the x87 opcode (FOP) and data pointer (FDP) registers, where x86
/// processors legitimately differ, and the masking of the two in stored x87 environments where the
/// host's documented rule is not the one SharpVisor models.
/// <para>
/// SharpVisor keeps the original rule, which AMD processors follow: FIP, FOP and (memory forms)
/// FDP name the last x87 non-control instruction. Current Intel processors store FOP only for a
/// non-control instruction that incurred an unmasked x87 exception (SDM Vol. 1 §8.1.9; the
/// "fopcode compatibility mode" of §8.1.9.1 that kept the original rule is not supported by recent
/// Intel 64 processors), and those reporting CPUID.(EAX=07H,ECX=0):EBX[6] (FDP_EXCPTN_ONLY) update
/// FDP only then too (§8.1.8). FIP is updated by every non-control instruction on both. SharpVisor
/// advertises neither EBX[6] nor EBX[13] (FCS/FDS stored as zero), and a FOP that is only defined
/// after an unmasked exception can be the last instruction's without breaking anything written
/// for either vendor, so the model stays as it is.
/// </para>
/// <para>
/// So on an Intel host FOP, and with FDP_EXCPTN_ONLY FDP, are compared only where the rules agree:
/// when the stored status word shows an unmasked exception pending (ES; the instruction that raised
/// it is the last non-control one, as the case runs no waiting instruction after it), or when the
/// case ran no non-control instruction at all (both keep what FRSTOR, FLDENV or FNINIT set).
/// <see cref="X87ControlTests.TheHostKeepsFopAndFdpAsDetected"/> checks the detection on the host.
/// </para>
/// </summary>
internal static class X87HostPointers
{
    const ushort ErrorSummary = 0x80;

    /// <summary>FOP names only the last non-control instruction that incurred an unmasked exception (Intel).</summary>
    public static bool OpcodeOnlyOnUnmaskedException => HostCpu.IsIntel;

    /// <summary>FDP is updated only by a non-control instruction that incurred an unmasked exception (FDP_EXCPTN_ONLY).</summary>
    public static bool DataPointerOnlyOnUnmaskedException => (HostCpu.ExtendedFeaturesEbx & (1 << 6)) != 0;

    /// <summary>
    /// Where a case's instructions stored an x87 environment in the data window: the FSTENV/FSAVE
    /// layouts of 64-bit and protected mode (SDM Vol. 1 figures 8-9 and 8-11) with a 32-bit or a
    /// 16-bit operand size.
    /// </summary>
    public readonly record struct StoredEnvironment(int Offset, bool Size32);

    /// <summary>
    /// Whether <paramref name="body"/> runs an x87 non-control instruction: one that sets FIP and,
    /// by the rule modelled, FOP and FDP. The control instructions are FINIT, FCLEX, FLDCW, FSTCW,
    /// FSTSW, FSTENV, FLDENV, FSAVE, FRSTOR and WAIT (SDM Vol. 1 §8.1.8); FENI, FDISI and FSETPM
    /// change no x87 state at all (§8.3.13).
    /// </summary>
    public static bool RunsNonControlInstruction(ReadOnlySpan<byte> body)
    {
        var decoder = Iced.Intel.Decoder.Create(64, body.ToArray());
        while (decoder.IP < (ulong)body.Length)
        {
            var instruction = decoder.Decode();
            // Iced gives the register forms as two-byte opcodes (FNOP: D9D0): the escape byte is the first.
            var opCode = instruction.OpCode;
            uint first = opCode.OpCodeLength == 2 ? opCode.OpCode >> 8 : opCode.OpCode;
            bool x87 = opCode.Table == OpCodeTableKind.Normal && first is >= 0xD8 and <= 0xDF;
            if (x87 && instruction.Mnemonic is not (Mnemonic.Fninit or Mnemonic.Fnclex or Mnemonic.Fldcw or Mnemonic.Fnstcw
                or Mnemonic.Fnstsw or Mnemonic.Fnstenv or Mnemonic.Fldenv or Mnemonic.Fnsave or Mnemonic.Frstor
                or Mnemonic.Fneni or Mnemonic.Fndisi or Mnemonic.Fnsetpm))
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>
    /// Zeroes, in both the host's and the interpreter's data window, the FOP and FDP fields of the
    /// environments at <paramref name="stored"/> where the host's rule and the model's can differ
    /// (see the class summary). The host's stored status word decides; a status word that differs
    /// between the two is reported by the comparison anyway.
    /// </summary>
    public static void MaskUndefined(byte[] native, byte[] emulated, bool ranNonControl, ReadOnlySpan<StoredEnvironment> stored)
    {
        if (!ranNonControl || !(OpcodeOnlyOnUnmaskedException || DataPointerOnlyOnUnmaskedException))
        {
            return;
        }
        foreach (var env in stored)
        {
            // 32-bit layout: FSW at 4, FOP in bits 26:16 of the dword at 16, FDP at 20.
            // 16-bit layout: FSW at 2, FDP at 10, no FOP.
            ushort sw = BitConverter.ToUInt16(native, env.Offset + (env.Size32 ? 4 : 2));
            if ((sw & ErrorSummary) != 0)
            {
                continue;
            }
            foreach (var data in new[] { native, emulated })
            {
                if (OpcodeOnlyOnUnmaskedException && env.Size32)
                {
                    data.AsSpan(env.Offset + 18, 2).Clear();
                }
                if (DataPointerOnlyOnUnmaskedException)
                {
                    data.AsSpan(env.Size32 ? env.Offset + 20 : env.Offset + 10, env.Size32 ? 4 : 2).Clear();
                }
            }
        }
    }
}
