using Iced.Intel;
using SharpVisor.Core;

namespace SharpVisor.Cpu.X86.Decode;


/// <summary>
/// Turns an Iced <see cref="Instruction"/> into an <see cref="Op"/>: the operand fields every
/// family shares are filled here, then the form's row in <see cref="InstructionTable"/> gives the
/// LOCK rule, whether the block ends after it, and the family binder that picks the handler.
/// </summary>
public static unsafe class Binder
{
    /// <summary>Fills <paramref name="op"/> for <paramref name="ins"/>; never fails (unknown forms become #UD handlers).</summary>
    public static void Bind(in Instruction ins, ref Op op)
    {
        op = default;
        op.Len = (byte)ins.Length;
        op.Code = (ushort)ins.Code;
        op.Base = op.Index = RegisterFile.Zero;
        op.Seg = (byte)Seg.None;
        op.AddrMask = ulong.MaxValue;
        if (ins.Code == Code.INVALID)
        {
            op.Exec = &InvalidOpcode;
            op.Flags = OpFlags.EndsBlock;
            return;
        }
        if (ins.HasLockPrefix) op.Flags |= OpFlags.Lock;
        if (ins.HasRepPrefix || ins.HasRepePrefix) op.Flags |= OpFlags.Rep;
        if (ins.HasRepnePrefix) op.Flags |= OpFlags.RepNe;
        ref readonly InstructionForm form = ref InstructionTable.Form(ins.Code);
        FillOperands(ins, ref op, form.MemoryOperand);

        if (form.Implemented && ins.HasLockPrefix && (form.Lock == LockRule.Ud || ins.Op0Kind != OpKind.Memory))
        {
            op.Exec = &InvalidOpcode; // SDM Vol. 2A LOCK: #UD unless a listed form with a memory destination
            op.Flags |= OpFlags.EndsBlock;
            return;
        }
        if (!form.Implemented || !form.Bind(ins, ref op))
        {
            op.Exec = &Unimplemented;
            op.Flags |= OpFlags.EndsBlock;
        }
        if (form.EndsBlock != BlockEnd.None)
        {
            op.Flags |= OpFlags.EndsBlock;
        }
    }

    static void FillOperands(in Instruction ins, ref Op op, SegmentAccess memoryAccess)
    {
        bool haveR1 = false;
        bool haveImm = false;
        for (int i = 0; i < ins.OpCount; i++)
        {
            switch (ins.GetOpKind(i))
            {
                case OpKind.Register:
                    var r = ins.GetOpRegister(i);
                    if (i == 0 && op.Size == 0)
                    {
                        op.Size = (byte)r.GetSize();
                    }
                    if (!haveR1) { op.R1 = Slot(r); haveR1 = true; }
                    else { op.R2 = Slot(r); }
                    break;
                case OpKind.Memory:
                    FillMemory(ins, ref op, memoryAccess);
                    op.Flags |= OpFlags.AnyMemoryOperand;
                    if (i == 0)
                    {
                        op.Flags |= OpFlags.MemoryOperand;
                        if (op.Size == 0) op.Size = (byte)ins.MemorySize.GetSize();
                    }
                    if (!haveR1 && i == 0) { haveR1 = true; op.R1 = RegisterFile.Zero; }
                    break;
                case OpKind.NearBranch16:
                case OpKind.NearBranch32:
                case OpKind.NearBranch64:
                    op.Imm = ins.NearBranchTarget - ins.NextIP; // relative: blocks are keyed by physical address
                    break;
                case OpKind.Immediate8:
                case OpKind.Immediate16:
                case OpKind.Immediate32:
                case OpKind.Immediate64:
                case OpKind.Immediate8to16:
                case OpKind.Immediate8to32:
                case OpKind.Immediate8to64:
                case OpKind.Immediate32to64:
                    if (!haveImm) { op.Imm = ins.GetImmediate(i); haveImm = true; }
                    else { op.Imm2 = (uint)ins.GetImmediate(i); }
                    break;
                case OpKind.Immediate8_2nd:
                    op.Imm2 = ins.Immediate8_2nd;
                    break;
            }
        }
    }

    static void FillMemory(in Instruction ins, ref Op op, SegmentAccess access)
    {
        var b = ins.MemoryBase;
        var x = ins.MemoryIndex;
        int addrBits;
        if (b is Register.RIP or Register.EIP)
        {
            op.Base = RegisterFile.NextRip;
            op.Disp = (long)(ins.MemoryDisplacement64 - ins.NextIP);
            addrBits = b == Register.RIP ? 64 : 32;
        }
        else
        {
            op.Base = b == Register.None ? (byte)RegisterFile.Zero : Slot(b);
            op.Disp = (long)ins.MemoryDisplacement64;
            addrBits = b != Register.None ? b.GetSize() * 8
                : x != Register.None ? x.GetSize() * 8
                : ins.MemoryDisplSize switch { 2 => 16, 4 => 32, _ => 64 };
        }
        if (x != Register.None)
        {
            op.Index = Slot(x);
            op.Scale = (byte)System.Numerics.BitOperations.Log2((uint)ins.MemoryIndexScale);
        }
        op.AddrMask = addrBits switch { 16 => 0xFFFF, 32 => 0xFFFF_FFFF, _ => ulong.MaxValue };
        op.Seg = SegSlot(ins.MemorySegment);
        op.MemSize = (ushort)Math.Clamp(ins.MemorySize.GetSize(), 1, ushort.MaxValue);
        op.MemAccess = access;
    }

    /// <summary>Register slot of a general-purpose register of any width.</summary>
    public static byte Slot(Register r)
    {
        if (r >= Register.AL && r <= Register.R15L)
        {
            int n = r - Register.AL;
            return n switch
            {
                < 4 => (byte)n,                                    // AL..BL
                < 8 => (byte)(RegisterFile.HighByteBase + n - 4),   // AH..BH
                < 12 => (byte)(n - 4),                             // SPL..DIL
                _ => (byte)(n - 4),                                // R8L..R15L
            };
        }
        if (r >= Register.AX && r <= Register.R15W) return (byte)(r - Register.AX);
        if (r >= Register.EAX && r <= Register.R15D) return (byte)(r - Register.EAX);
        if (r >= Register.RAX && r <= Register.R15) return (byte)(r - Register.RAX);
        return RegisterFile.Zero;
    }

    public static byte SegSlot(Register r) => r switch
    {
        Register.ES => 0,
        Register.CS => 1,
        Register.SS => 2,
        Register.DS => 3,
        Register.FS => 4,
        Register.GS => 5,
        _ => (byte)Seg.None,
    };

    /// <summary>Picks the width-specialised handler for an operand size in bytes.</summary>
    public static delegate*<Cpu, ref Op, void> BySize(int size,
        delegate*<Cpu, ref Op, void> s8, delegate*<Cpu, ref Op, void> s16,
        delegate*<Cpu, ref Op, void> s32, delegate*<Cpu, ref Op, void> s64) => size switch
        {
            1 => s8,
            2 => s16,
            4 => s32,
            _ => s64,
        };

    static void InvalidOpcode(Cpu c, ref Op op) => throw c.InvalidOpcode();

    /// <summary>The op raises #UD as an undefined encoding (Code.INVALID, or LOCK where the form forbids it).</summary>
    internal static bool IsInvalidOpcode(in Op op) => (nint)op.Exec == (nint)(delegate*<Cpu, ref Op, void>)&InvalidOpcode;

    /// <summary>The op is a decodable form with no implementation (#UD, counted and logged).</summary>
    internal static bool IsUnimplemented(in Op op) => (nint)op.Exec == (nint)(delegate*<Cpu, ref Op, void>)&Unimplemented;

    /// <summary>A decodable instruction we do not implement: #UD, counted, and one log line naming it.</summary>
    static void Unimplemented(Cpu c, ref Op op)
    {
        c.Counters.Unimplemented.Increment();
        var code = (Code)op.Code;
        c.Log.Once($"unimpl:{code}", "cpu", $"instruction not implemented: {code} at {c.Segs[1].Selector:x4}:{c.Rip:x} (raising #UD)");
        throw c.InvalidOpcode();
    }
}
