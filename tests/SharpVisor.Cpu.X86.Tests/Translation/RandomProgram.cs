using System.Text;
using CsCheck;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace SharpVisor.Cpu.X86.Tests.Translation;

/// <summary>What a <see cref="Piece"/> emits.</summary>
public enum PieceKind
{
    // Straight-line instructions.
    Alu, AluImmediate, Test, Unary, Mov, MovImmediate, Extend, Lea, Shift, Multiply, Cmov, Setcc,
    HighByte, Exchange, FlagOp, SafeDivide, Push, Pop,
    // Instructions that fault (or may): the program ends there.
    LoadUnmapped, StoreUnmapped, DivideByZero, Ud2, RawDivide,
    // Control flow around a body of pieces.
    ForwardJcc, Loop, JumpOver, CallReturn, LongRun,
    // A store into a MOV's immediate after its body: self-modifying code.
    SelfModify,
}

/// <summary>
/// One generated instruction or construct. The numbers are read modulo the choices they select, so
/// every value is valid and smaller ones (what CsCheck shrinks toward) give simpler forms.
/// </summary>
public sealed record Piece(PieceKind Kind, int A, int B, int C, long Immediate, Piece[] Body);

/// <summary>
/// A generated 64-bit program: straight-line integer code, branches, bounded loops, CALL/RET,
/// loads and stores (register-based, indexed and RIP-relative) to a data area, and occasional
/// faulting instructions, placed anywhere in a code page so blocks get cut at a page end too.
/// </summary>
/// <remarks>
/// Registers: the pool below is free for the program; R13 is the scratch index register, R14 the
/// loop counter (bodies never write it, loops do not nest, so every program ends), R15 holds
/// <see cref="DataAddress"/> and RSP a stack no data access reaches. The page after the data area
/// is unmapped, so an access past the data area's end faults (#PF), straddling ones included.
/// </remarks>
public sealed record RandomProgram(int CodeOffset, ulong[] Registers, ulong Flags, ulong DataSeed, Piece[] Pieces)
{
    public const ulong CodePage = 0x10000;
    public const ulong DataAddress = 0x20000;
    public const int DataBytes = 0x2000;
    public const ulong UnmappedPage = DataAddress + DataBytes;
    public const ulong StackTop = 0x80000;

    /// <summary>Encoding numbers of the registers a program may write (not RSP, R13, R14, R15).</summary>
    public static readonly int[] Pool = [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12];

    public ulong CodeAddress => CodePage + (ulong)CodeOffset;

    byte[]? _code;

    /// <summary>The program's machine code for <see cref="CodeAddress"/>, ending in UD2.</summary>
    public byte[] MachineCode => _code ??= TierPair.Assemble(CodeAddress, a =>
    {
        foreach (var piece in Pieces)
        {
            Emit(a, piece, stackOps: true);
        }
        a.ud2();
    });

    public override string ToString()
    {
        var text = new StringBuilder();
        text.Append($"code at 0x{CodeAddress:x}, RFLAGS 0x{Flags:x}, data seed 0x{DataSeed:x}\n");
        for (int i = 0; i < Pool.Length; i++)
        {
            text.Append($"{(Register)((int)Register.RAX + Pool[i])}=0x{Registers[i]:x} ");
        }
        text.Append('\n').Append(TierPair.Disassemble(CodeAddress, MachineCode));
        return text.ToString();
    }

    // ---------------------------------------------------------------- generators

    static readonly Gen<long> Immediate = Gen.Frequency(
        (3, Gen.Long[-130, 130]),
        (3, Gen.Long),
        (2, Gen.OneOf<long>(0L, 1L, -1L, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, long.MinValue, long.MaxValue)));

    static Gen<PieceKind> Kinds(params (int Weight, PieceKind Kind)[] kinds) =>
        Gen.Frequency(kinds);

    static readonly (int, PieceKind)[] StraightLine =
    [
        (8, PieceKind.Alu), (5, PieceKind.AluImmediate), (2, PieceKind.Test), (3, PieceKind.Unary),
        (6, PieceKind.Mov), (2, PieceKind.MovImmediate), (2, PieceKind.Extend), (3, PieceKind.Lea),
        (3, PieceKind.Shift), (2, PieceKind.Multiply), (2, PieceKind.Cmov), (2, PieceKind.Setcc),
        (1, PieceKind.HighByte), (1, PieceKind.Exchange), (1, PieceKind.FlagOp), (1, PieceKind.SafeDivide),
    ];

    static readonly (int, PieceKind)[] Faulting =
    [
        (1, PieceKind.LoadUnmapped), (1, PieceKind.StoreUnmapped), (1, PieceKind.DivideByZero), (1, PieceKind.Ud2), (1, PieceKind.RawDivide),
    ];

    static readonly (int, PieceKind)[] StackOps = [(2, PieceKind.Push), (2, PieceKind.Pop)];

    static Gen<Piece> Simple(Gen<PieceKind> kinds) =>
        Gen.Select(kinds, Gen.Int[0, 1 << 16], Gen.Int[0, 1 << 16], Gen.Int[0, 1 << 16], Immediate,
            (k, a, b, c, imm) => new Piece(k, a, b, c, imm, []));

    static Gen<Piece> WithBody(PieceKind kind, Gen<Piece> body, int maxBody) =>
        Gen.Select(Gen.Int[0, 1 << 16], Gen.Int[0, 1 << 16], body.Array[0, maxBody],
            (a, b, pieces) => new Piece(kind, a, b, 0, 0, pieces));

    /// <summary>A straight-line piece, rarely a faulting one; with or without PUSH/POP.</summary>
    static Gen<Piece> Leaf(bool stackOps, int faultWeight) => Gen.Frequency(
        (150, Simple(Kinds(stackOps ? [.. StraightLine, .. StackOps] : StraightLine))),
        (faultWeight, Simple(Kinds(Faulting))));

    /// <summary>What a loop body or the top level holds besides loops. A called body has no PUSH/POP,
    /// so its RET finds the return address.</summary>
    static Gen<Piece> Level1(int faultWeight) => Gen.Frequency(
        (40, Leaf(stackOps: true, faultWeight)),
        (3, WithBody(PieceKind.ForwardJcc, Leaf(stackOps: true, faultWeight), 6)),
        (2, WithBody(PieceKind.CallReturn, Leaf(stackOps: false, faultWeight), 6)),
        (1, WithBody(PieceKind.SelfModify, Leaf(stackOps: true, faultWeight), 4)),
        (1, Simple(Kinds((1, PieceKind.JumpOver)))),
        (1, Simple(Kinds((1, PieceKind.LongRun)))));

    static readonly Gen<Piece> TopLevel = Gen.Frequency(
        (30, Level1(faultWeight: 1)),
        (4, WithBody(PieceKind.Loop, Level1(faultWeight: 1), 8)));

    public static readonly Gen<RandomProgram> Programs =
        Gen.Select(Gen.Frequency((1, Gen.Int[0, 0xFFF]), (1, Gen.Int[0xC00, 0xFFF])), Gen.ULong.Array[Pool.Length], Gen.Int[0, 0xFFF], Gen.ULong, TopLevel.Array[1, 40],
            (offset, registers, flags, dataSeed, pieces) =>
                new RandomProgram(offset, registers, ((ulong)flags & RFlags.Arith) | RFlags.Reserved1, dataSeed, pieces));

    // ---------------------------------------------------------------- emitting

    static readonly string[] AluNames = ["Add", "Or", "Adc", "Sbb", "And", "Sub", "Xor", "Cmp"];
    static readonly string[] UnaryNames = ["Inc", "Dec", "Neg", "Not"];
    static readonly string[] ShiftNames = ["Rol", "Ror", "Rcl", "Rcr", "Shl", "Shr", "Sal", "Sar"];
    static readonly string[] Conditions = ["o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g"];
    static readonly int[] Sizes = [64, 32, 16, 8];
    static readonly Dictionary<string, Code> s_codes = [];

    static Code CodeOf(string name)
    {
        lock (s_codes)
        {
            if (!s_codes.TryGetValue(name, out var code))
            {
                s_codes[name] = code = Enum.Parse<Code>(name);
            }
            return code;
        }
    }

    /// <summary>The pool register <paramref name="n"/> (any int) at <paramref name="size"/> bits.</summary>
    static Register Reg(int n, int size)
    {
        int encoding = Pool[(int)((uint)n % Pool.Length)];
        return size switch
        {
            64 => Register.RAX + encoding,
            32 => Register.EAX + encoding,
            16 => Register.AX + encoding,
            // AL..BL, then SPL..R15L (AH..BH sit between them and need an operand without REX).
            _ => encoding < 4 ? Register.AL + encoding : Register.SPL + (encoding - 4),
        };
    }

    static int Size(int n) => Sizes[(int)((uint)n % 4)];

    static int Pick(int n, int count) => (int)((uint)n % count);

    /// <summary>
    /// A data operand: [R15 + disp] (the last few displacements reach into the unmapped page), an
    /// indexed one through R13 (bounded by an AND emitted first), or RIP-relative to the data area.
    /// </summary>
    static MemoryOperand Memory(Assembler a, int n)
    {
        int disp = (int)((uint)(n >> 2) % (DataBytes + 8));
        switch (n & 3)
        {
            case 0:
            case 1:
                return new MemoryOperand(Register.R15, disp);
            case 2:
                int scale = 1 << Pick(n >> 4, 4);
                a.AddInstruction(Instruction.Create(Code.Mov_r32_rm32, Register.R13D, Reg(n >> 6, 32)));
                a.AddInstruction(Instruction.Create(Code.And_rm32_imm32, Register.R13D, 0x3FF / scale));
                return new MemoryOperand(Register.R15, Register.R13, scale, disp & 0x7F, 1);
            default:
                return new MemoryOperand(Register.RIP, (long)(DataAddress + (ulong)(disp % (DataBytes - 8))));
        }
    }

    static Instruction Create(string name, Register r, MemoryOperand m) => Instruction.Create(CodeOf(name), r, m);

    static void Add(Assembler a, Instruction i) => a.AddInstruction(i);

    /// <summary>The immediate form <c>OP r/m, imm</c> for <paramref name="size"/>, short (imm8) when
    /// <paramref name="shortForm"/>, with the immediate cut to what the form encodes.</summary>
    static (Code Code, int Value) ImmediateForm(string op, int size, bool shortForm, long imm) => size switch
    {
        8 => (CodeOf($"{op}_rm8_imm8"), (sbyte)imm),
        _ when shortForm => (CodeOf($"{op}_rm{size}_imm8"), (sbyte)imm),
        16 => (CodeOf($"{op}_rm16_imm16"), (short)imm),
        _ => (CodeOf($"{op}_rm{size}_imm32"), (int)imm),
    };

    static void Emit(Assembler a, Piece p, bool stackOps)
    {
        int size = Size(p.A);
        bool toMemory = Pick(p.B >> 8, 4) == 0; // a memory operand a quarter of the time
        switch (p.Kind)
        {
            case PieceKind.Alu:
                {
                    string op = AluNames[Pick(p.A >> 2, 8)];
                    switch (Pick(p.B >> 8, 4))
                    {
                        case 0: Add(a, Create($"{op}_r{size}_rm{size}", Reg(p.B, size), Memory(a, p.C))); break;
                        case 1: Add(a, Instruction.Create(CodeOf($"{op}_rm{size}_r{size}"), Memory(a, p.C), Reg(p.B, size))); break;
                        default: Add(a, Instruction.Create(CodeOf($"{op}_rm{size}_r{size}"), Reg(p.B, size), Reg(p.C, size))); break;
                    }
                    break;
                }
            case PieceKind.AluImmediate:
                {
                    var (code, value) = ImmediateForm(AluNames[Pick(p.A >> 2, 8)], size, (p.A & 32) != 0, p.Immediate);
                    Add(a, toMemory ? Instruction.Create(code, Memory(a, p.C), value) : Instruction.Create(code, Reg(p.B, size), value));
                    break;
                }
            case PieceKind.Test:
                if ((p.A & 4) != 0)
                {
                    Add(a, Instruction.Create(CodeOf($"Test_rm{size}_r{size}"), Reg(p.B, size), Reg(p.C, size)));
                }
                else
                {
                    var (code, value) = ImmediateForm("Test", size, false, p.Immediate);
                    Add(a, toMemory ? Instruction.Create(code, Memory(a, p.C), value) : Instruction.Create(code, Reg(p.B, size), value));
                }
                break;
            case PieceKind.Unary:
                {
                    var code = CodeOf($"{UnaryNames[Pick(p.A >> 2, 4)]}_rm{size}");
                    Add(a, toMemory ? Instruction.Create(code, Memory(a, p.C)) : Instruction.Create(code, Reg(p.B, size)));
                    break;
                }
            case PieceKind.Mov:
                switch (Pick(p.B >> 8, 3))
                {
                    case 0: Add(a, Create($"Mov_r{size}_rm{size}", Reg(p.B, size), Memory(a, p.C))); break;
                    case 1: Add(a, Instruction.Create(CodeOf($"Mov_rm{size}_r{size}"), Memory(a, p.C), Reg(p.B, size))); break;
                    default: Add(a, Instruction.Create(CodeOf($"Mov_rm{size}_r{size}"), Reg(p.B, size), Reg(p.C, size))); break;
                }
                break;
            case PieceKind.MovImmediate:
                switch (Pick(p.A >> 2, 3))
                {
                    case 0: Add(a, Instruction.Create(Code.Mov_r64_imm64, Reg(p.B, 64), (ulong)p.Immediate)); break;
                    case 1: Add(a, Instruction.Create(Code.Mov_r32_imm32, Reg(p.B, 32), (uint)p.Immediate)); break;
                    default:
                        var (code, value) = ImmediateForm("Mov", size, false, p.Immediate);
                        Add(a, Instruction.Create(code, Memory(a, p.C), value));
                        break;
                }
                break;
            case PieceKind.Extend:
                {
                    string[] forms = ["Movzx_r32_rm8", "Movzx_r64_rm16", "Movzx_r16_rm8", "Movsx_r64_rm8", "Movsx_r32_rm16", "Movsx_r16_rm8", "Movsxd_r64_rm32"];
                    string form = forms[Pick(p.A >> 2, forms.Length)];
                    int destination = int.Parse(form.Split('_')[1][1..]);
                    int source = int.Parse(form.Split('_')[2][2..]);
                    Add(a, toMemory ? Create(form, Reg(p.B, destination), Memory(a, p.C)) : Instruction.Create(CodeOf(form), Reg(p.B, destination), Reg(p.C, source)));
                    break;
                }
            case PieceKind.Lea:
                {
                    int leaSize = Sizes[Pick(p.A, 3)];
                    MemoryOperand m = Pick(p.A >> 2, 4) switch
                    {
                        0 => new MemoryOperand(Register.RIP, (long)(DataAddress + (ulong)(p.Immediate & 0xFFFF))),
                        1 => new MemoryOperand(Reg(p.C, 64), (int)p.Immediate),
                        _ => new MemoryOperand(Reg(p.C, 64), Reg(p.C >> 4, 64), 1 << Pick(p.C >> 8, 4), (int)p.Immediate, 1),
                    };
                    Add(a, Create($"Lea_r{leaSize}_m", Reg(p.B, leaSize), m));
                    break;
                }
            case PieceKind.Shift:
                {
                    string op = ShiftNames[Pick(p.A >> 2, 8)];
                    var target = toMemory ? Memory(a, p.C) : default;
                    Register reg = Reg(p.B, size);
                    switch (Pick(p.A >> 5, 3))
                    {
                        case 0:
                            var code = CodeOf($"{op}_rm{size}_imm8");
                            Add(a, toMemory ? Instruction.Create(code, target, (int)(p.Immediate & 0xFF)) : Instruction.Create(code, reg, (int)(p.Immediate & 0xFF)));
                            break;
                        case 1:
                            code = CodeOf($"{op}_rm{size}_1");
                            Add(a, toMemory ? Instruction.Create(code, target, 1) : Instruction.Create(code, reg, 1));
                            break;
                        default:
                            code = CodeOf($"{op}_rm{size}_CL");
                            Add(a, toMemory ? Instruction.Create(code, target, Register.CL) : Instruction.Create(code, reg, Register.CL));
                            break;
                    }
                    break;
                }
            case PieceKind.Multiply:
                switch (Pick(p.A >> 2, 4))
                {
                    case 0:
                    case 1:
                        var code = CodeOf($"{((p.A & 4) != 0 ? "Imul" : "Mul")}_rm{size}");
                        Add(a, toMemory ? Instruction.Create(code, Memory(a, p.C)) : Instruction.Create(code, Reg(p.B, size)));
                        break;
                    case 2:
                        int s = Math.Max(16, size);
                        Add(a, toMemory ? Create($"Imul_r{s}_rm{s}", Reg(p.B, s), Memory(a, p.C)) : Instruction.Create(CodeOf($"Imul_r{s}_rm{s}"), Reg(p.B, s), Reg(p.C, s)));
                        break;
                    default:
                        s = Math.Max(16, size);
                        bool shortForm = (p.A & 64) != 0;
                        code = CodeOf(shortForm ? $"Imul_r{s}_rm{s}_imm8" : s == 16 ? "Imul_r16_rm16_imm16" : $"Imul_r{s}_rm{s}_imm32");
                        int value = shortForm ? (sbyte)p.Immediate : s == 16 ? (short)p.Immediate : (int)p.Immediate;
                        Add(a, Instruction.Create(code, Reg(p.B, s), Reg(p.C, s), value));
                        break;
                }
                break;
            case PieceKind.Cmov:
                {
                    int s = Math.Max(16, size);
                    string name = $"Cmov{Conditions[Pick(p.A >> 2, 16)]}_r{s}_rm{s}";
                    Add(a, toMemory ? Create(name, Reg(p.B, s), Memory(a, p.C)) : Instruction.Create(CodeOf(name), Reg(p.B, s), Reg(p.C, s)));
                    break;
                }
            case PieceKind.Setcc:
                {
                    var code = CodeOf($"Set{Conditions[Pick(p.A >> 2, 16)]}_rm8");
                    Add(a, toMemory ? Instruction.Create(code, Memory(a, p.C)) : Instruction.Create(code, Reg(p.B, 8)));
                    break;
                }
            case PieceKind.HighByte:
                {
                    // AH, CH, DH, BH: register file slots of their own in the interpreter.
                    Register destination = Register.AL + Pick(p.B, 8), source = Register.AL + Pick(p.C, 8);
                    string op = AluNames[Pick(p.A >> 2, 8)];
                    Add(a, (p.A & 64) != 0
                        ? Instruction.Create(Code.Mov_rm8_r8, destination, source)
                        : Instruction.Create(CodeOf($"{op}_rm8_r8"), destination, source));
                    break;
                }
            case PieceKind.Exchange:
                switch (Pick(p.A >> 2, 4))
                {
                    case 0: Add(a, Instruction.Create(CodeOf($"Xchg_rm{size}_r{size}"), Reg(p.B, size), Reg(p.C, size))); break;
                    case 1: Add(a, Instruction.Create((p.A & 64) != 0 ? Code.Bswap_r64 : Code.Bswap_r32, Reg(p.B, (p.A & 64) != 0 ? 64 : 32))); break;
                    case 2: Add(a, Instruction.Create(Pick(p.B, 2) == 0 ? Code.Cqo : Code.Cdqe)); break;
                    default: Add(a, Instruction.Create(Code.Xchg_rm64_r64, Memory(a, p.C), Reg(p.B, 64))); break; // locked implicitly
                }
                break;
            case PieceKind.FlagOp:
                Add(a, Instruction.Create(Pick(p.A, 3) switch { 0 => Code.Clc, 1 => Code.Stc, _ => Code.Cmc }));
                break;
            case PieceKind.SafeDivide:
                {
                    // RDX:RAX / r with RDX cleared (DIV) or the sign of RAX (IDIV) and r odd: no #DE except
                    // IDIV of the most negative value by -1.
                    int s = Math.Max(32, size);
                    Register divisor = Reg(3 + Pick(p.B, Pool.Length - 3), s); // RBX..R12: not RAX or RDX
                    bool signed = (p.A & 4) != 0;
                    Add(a, signed ? Instruction.Create(s == 64 ? Code.Cqo : Code.Cdq) : Instruction.Create(Code.Xor_rm32_r32, Register.EDX, Register.EDX));
                    Add(a, Instruction.Create(s == 64 ? Code.Or_rm64_imm8 : Code.Or_rm32_imm8, divisor, 1));
                    Add(a, Instruction.Create(CodeOf($"{(signed ? "Idiv" : "Div")}_rm{s}"), divisor));
                    break;
                }
            case PieceKind.Push when stackOps:
                switch (Pick(p.A >> 2, 3))
                {
                    case 0: Add(a, Instruction.Create(Code.Push_r64, Reg(p.B, 64))); break;
                    case 1: Add(a, Instruction.Create(Code.Pushq_imm32, (int)p.Immediate)); break;
                    default: Add(a, Instruction.Create(Code.Push_rm64, Memory(a, p.C))); break;
                }
                break;
            case PieceKind.Pop when stackOps:
                Add(a, toMemory ? Instruction.Create(Code.Pop_rm64, Memory(a, p.C)) : Instruction.Create(Code.Pop_r64, Reg(p.B, 64)));
                break;
            case PieceKind.Push or PieceKind.Pop:
                break;
            case PieceKind.LoadUnmapped:
                Add(a, Create($"Mov_r{size}_rm{size}", Reg(p.B, size), new MemoryOperand(Register.R15, DataBytes + (p.C & 0xFF8))));
                break;
            case PieceKind.StoreUnmapped:
                Add(a, Instruction.Create(CodeOf($"Mov_rm{size}_r{size}"), new MemoryOperand(Register.R15, DataBytes - 4 + (p.C & 0xFF8)), Reg(p.B, size)));
                break;
            case PieceKind.DivideByZero:
                Add(a, Instruction.Create(Code.Xor_rm32_r32, Register.R13D, Register.R13D));
                Add(a, Instruction.Create(CodeOf($"{((p.A & 4) != 0 ? "Idiv" : "Div")}_rm{size}"), size switch
                {
                    64 => Register.R13,
                    32 => Register.R13D,
                    16 => Register.R13W,
                    _ => Register.R13L,
                }));
                break;
            case PieceKind.Ud2:
                a.ud2();
                break;
            case PieceKind.RawDivide:
                {
                    var code = CodeOf($"{((p.A & 4) != 0 ? "Idiv" : "Div")}_rm{size}");
                    Add(a, toMemory ? Instruction.Create(code, Memory(a, p.C)) : Instruction.Create(code, Reg(p.B, size)));
                    break;
                }
            case PieceKind.ForwardJcc:
                {
                    var skip = a.CreateLabel();
                    a.AddInstruction(Instruction.CreateBranch(CodeOf($"J{Conditions[Pick(p.A, 16)]}_rel32_64"), skip.Id));
                    EmitBody(a, p.Body, stackOps);
                    a.Label(ref skip);
                    a.nop();
                    break;
                }
            case PieceKind.Loop:
                {
                    // R14 counts 1..16 iterations; bodies never write it and hold no loop.
                    int iterations = 1 + Pick(p.A, 16);
                    var top = a.CreateLabel();
                    bool countUp = (p.B & 1) != 0;
                    a.mov(r14d, countUp ? 0 : iterations);
                    a.Label(ref top);
                    EmitBody(a, p.Body, stackOps);
                    if (countUp)
                    {
                        a.inc(r14d);
                        a.cmp(r14d, iterations);
                        a.jb(top);
                    }
                    else
                    {
                        a.dec(r14d);
                        a.jnz(top);
                    }
                    break;
                }
            case PieceKind.JumpOver:
                {
                    var over = a.CreateLabel();
                    a.jmp(over);
                    a.db([.. BitConverter.GetBytes(p.Immediate).Take(1 + Pick(p.A, 8))]); // never executed
                    a.Label(ref over);
                    a.nop();
                    break;
                }
            case PieceKind.CallReturn:
                {
                    var function = a.CreateLabel();
                    var after = a.CreateLabel();
                    a.call(function);
                    a.jmp(after);
                    a.Label(ref function);
                    EmitBody(a, p.Body, stackOps: false);
                    a.ret();
                    a.Label(ref after);
                    a.nop();
                    break;
                }
            case PieceKind.LongRun:
                {
                    // More register-only instructions than a block holds (Block.MaxOps): the block is cut
                    // after a pure instruction, whose RIP the translation must still commit.
                    int count = 60 + Pick(p.A, 40);
                    var random = new Random(p.B ^ (p.C << 16));
                    for (int i = 0; i < count; i++)
                    {
                        int s = Sizes[random.Next(3)];
                        switch (random.Next(5))
                        {
                            case 0: Add(a, Instruction.Create(CodeOf($"{AluNames[random.Next(8)]}_rm{s}_r{s}"), Reg(random.Next(), s), Reg(random.Next(), s))); break;
                            case 1: Add(a, Instruction.Create(CodeOf($"{AluNames[random.Next(8)]}_rm{s}_imm8"), Reg(random.Next(), s), random.Next(-128, 128))); break;
                            case 2: Add(a, Instruction.Create(CodeOf($"{ShiftNames[random.Next(8)]}_rm{s}_imm8"), Reg(random.Next(), s), random.Next(64))); break;
                            case 3: Add(a, Create($"Lea_r{s}_m", Reg(random.Next(), s), new MemoryOperand(Reg(random.Next(), 64), Reg(random.Next(), 64), 1 << random.Next(4), random.Next(), 1))); break;
                            default: Add(a, Instruction.Create(CodeOf($"Cmov{Conditions[random.Next(16)]}_r{s}_rm{s}"), Reg(random.Next(), s), Reg(random.Next(), s))); break;
                        }
                    }
                    break;
                }
            case PieceKind.SelfModify:
                {
                    // The store rewrites the immediate of the MOV after the body, usually in the same
                    // block: the block must end after the store and the new bytes run (SDM Vol. 3A 11.6),
                    // and in a loop the next iteration meets code changed since it was translated.
                    var immediate = a.CreateLabel();
                    uint value = ((uint)p.A * 0x9E37_79B1u) ^ (uint)p.B;
                    if ((p.A & 1) != 0)
                    {
                        a.mov(__dword_ptr[immediate], value);
                    }
                    else
                    {
                        a.mov(__byte_ptr[immediate], (byte)value);
                    }
                    EmitBody(a, p.Body, stackOps);
                    Register target = LegacyRegisters32[Pick(p.B, LegacyRegisters32.Length)];
                    a.db((byte)(0xB8 + (target - Register.EAX))); // MOV r32, imm32 (B8+rd id), its immediate labelled
                    a.Label(ref immediate);
                    a.dd((uint)p.B * 0x0101_0101u);
                    break;
                }
        }
    }

    static readonly Register[] LegacyRegisters32 = [Register.EAX, Register.ECX, Register.EDX, Register.EBX, Register.EBP, Register.ESI, Register.EDI];

    static void EmitBody(Assembler a, Piece[] body, bool stackOps)
    {
        foreach (var piece in body)
        {
            Emit(a, piece, stackOps);
        }
    }
}
