using System.Reflection;
using System.Reflection.Emit;
using System.Runtime.CompilerServices;
using SharpVisor.Cpu.X86.Decode;
using SharpVisor.Cpu.X86.Semantics;
using Code = Iced.Intel.Code;

namespace SharpVisor.Cpu.X86.Translation;

/// <summary>
/// A translated block: runs the block's instructions from the first and returns how many retired,
/// with exactly the interpreter's contract (<c>Cpu.Execute</c>): RIP committed as the interpreter
/// commits it, a guest exception thrown with RIP at the faulting instruction, an early return after
/// an instruction that sets <see cref="Cpu.ExitBlock"/>. (Called through
/// <see cref="CompiledRegion.Run"/>, which skips the delegate.)
/// </summary>
public delegate int CompiledBlock(Cpu cpu);

/// <summary>
/// Translates a decoded <see cref="Block"/>, or a region of blocks (<see cref="RegionBuilder"/>), into
/// a .NET method (a <see cref="DynamicMethod"/>, which the runtime collects once nothing refers to it).
/// </summary>
/// <remarks>
/// What translation removes is the interpreter's per-instruction work: the dispatch through
/// <see cref="Op.Exec"/>, the loop, and the reads of the <see cref="Op"/>'s fields. The commonest
/// forms get IL of the translator's own (<see cref="InlineForms"/>), checked against the
/// interpreter by every differential case. For the others the semantics are the interpreter's own
/// handlers, so both tiers compute the same bits by construction: such an instruction becomes a
/// direct <c>call</c> of its handler on a local copy of its <see cref="Op"/>
/// whose fields are IL constants; the JIT inlines the handler and folds those constants (register
/// slots become fixed offsets, immediates and displacements become instruction operands). That is
/// done for the handlers marked <see cref="MethodImplOptions.AggressiveInlining"/> — the common
/// forms; the mark changes nothing for the interpreter, which calls handlers through pointers.
/// Any other handler is called through its pointer on the block's own op, which costs the JIT
/// little time.
/// <para>RIP and the next-RIP slot are kept only where something can observe them: before an
/// instruction that can fault, reads RIP (a branch, a RIP-relative operand) or touches memory, and
/// at the block's end. A register-only instruction that cannot fault (per its
/// <see cref="InstructionTable"/> row) just adds its length to a compile-time running offset.</para>
/// </remarks>
public static class BlockCompiler
{
    static readonly FieldInfo s_exitBlock = typeof(Cpu).GetField(nameof(Cpu.ExitBlock))!;
    static readonly FieldInfo[] s_opFields = typeof(Op).GetFields(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic);
    static readonly FieldInfo s_execField = typeof(Op).GetField(nameof(Op.Exec))!;

    static readonly MethodInfo s_mayChain = typeof(Cpu).GetMethod(nameof(Cpu.MayChain))!;
    static readonly FieldInfo s_rip = typeof(Cpu).GetField(nameof(Cpu.Rip))!;
    static readonly FieldInfo s_chainedRetired = typeof(Cpu).GetField(nameof(Cpu.ChainedRetired))!;
    static readonly FieldInfo s_ops = typeof(Block).GetField(nameof(Block.Ops))!;
    static readonly FieldInfo s_blocks = typeof(CompiledRegion).GetField(nameof(CompiledRegion.Blocks))!;
    static readonly MethodInfo s_chainFrom = typeof(Cpu).GetMethod(nameof(Cpu.ChainFrom))!;
    static readonly MethodInfo s_entry = typeof(CompiledRegion).GetProperty(nameof(CompiledRegion.Entry))!.GetMethod!;

    /// <summary>What compiling one block produced, for the translator's counters.</summary>
    public readonly record struct Result(CompiledRegion Code, int IlBytes, int CalledThroughPointer, int Blocks = 1, bool Chained = false, int InlineForms = 0);

    /// <summary>Translates <paramref name="block"/> alone.</summary>
    public static Result Compile(Block block) => Compile([block]);

    /// <summary>
    /// Translates a region (<see cref="RegionBuilder"/>): <paramref name="region"/>[0] is where the code
    /// is entered; after each block it goes on to a region member that starts at the new RIP when
    /// <see cref="Cpu.MayChain"/> allows, else returns. It returns the instructions retired in all the
    /// blocks it ran, as the run loop would have counted them block by block; when a guest exception
    /// leaves it, <see cref="Cpu.ChainedRetired"/> holds the instructions of the blocks that completed,
    /// which the run loop adds as it would have before the faulting block began — so instruction
    /// counts, and with them deterministic runs, are the same either way. (Not a fault handler in the
    /// method: exception handling and the loop together tripled the JIT's time for a small block.)
    /// <para>A block that ends in a near branch with no member to go on to asks
    /// <see cref="Cpu.ChainFrom"/> for the translation to run next and, given one, tail-calls its
    /// entry point: the guest's code goes from translation to translation without the run loop, and
    /// each exit's indirect jump is one the host's branch predictor learns by itself.</para>
    /// </summary>
    public static unsafe Result Compile(Block[] region)
    {
        Block head = region[0];
        var translation = new CompiledRegion(region);
        // The method's first parameter is the translation and the delegate is closed over it: the code
        // reaches the ops of a member and its chain cells through it, and a delegate closed over its
        // first argument points at the method itself, which is what CompiledRegion.Entry is read from.
        // No argument for the block's ops: the run loop does not touch them to call the code (loading
        // the array for a reference to its first element was a cache miss in a tenth of its samples).
        var method = new DynamicMethod("block", typeof(int), [typeof(CompiledRegion), typeof(Cpu)], typeof(BlockCompiler).Module, skipVisibility: true);
        var il = method.GetILGenerator();
        // A call with no vCPU only makes the JIT compile the method (see Prepare) and returns at once.
        var body = il.DefineLabel();
        il.Emit(OpCodes.Ldarg_1);
        il.Emit(OpCodes.Brtrue, body);
        il.Emit(OpCodes.Ldc_I4_M1);
        il.Emit(OpCodes.Ret);
        il.MarkLabel(body);
        // Chained when some block goes on to a member (a loop, also of a single block).
        bool chained = region.Any(b => Array.IndexOf(region, b.Link0.Target) >= 0 || Array.IndexOf(region, b.Link1.Target) >= 0);
        var context = new Emission(il, chained);
        InlineForms.Begin(il, context.Forms);
        int throughPointer = 0;
        if (!chained)
        {
            throughPointer = EmitBlock(context, head, 0);
            if (RegionBuilder.MayContinueAfter(head))
            {
                il.Emit(OpCodes.Ldc_I4, head.Count);
                il.Emit(OpCodes.Stloc, context.ChainRetired);
                il.Emit(OpCodes.Ldc_I4_0);
                il.Emit(OpCodes.Stloc, context.ChainMember);
                EmitChainTail(context);
            }
            il.Emit(OpCodes.Ldc_I4, head.Count);
            il.Emit(OpCodes.Ret);
            EmitExits(context);
        }
        else
        {
            // RIP at entry: member j starts at entryRip + (its RAM offset - the first block's).
            il.Emit(OpCodes.Ldarg_1);
            il.Emit(OpCodes.Ldfld, s_rip);
            il.Emit(OpCodes.Stloc, context.EntryRip!);
            var starts = new Label[region.Length];
            for (int j = 0; j < region.Length; j++)
            {
                starts[j] = il.DefineLabel();
            }
            for (int j = 0; j < region.Length; j++)
            {
                Block b = region[j];
                il.MarkLabel(starts[j]);
                throughPointer += EmitBlock(context, b, j);
                // retired += this block's count; then go on to a member starting at RIP, if allowed.
                il.Emit(OpCodes.Ldloc, context.Retired!);
                il.Emit(OpCodes.Ldc_I4, b.Count);
                il.Emit(OpCodes.Add);
                il.Emit(OpCodes.Stloc, context.Retired!);
                // What the run loop counts if a later block faults (see Cpu.ChainedRetired).
                il.Emit(OpCodes.Ldarg_1);
                il.Emit(OpCodes.Ldloc, context.Retired!);
                il.Emit(OpCodes.Stfld, s_chainedRetired);
                foreach (Block? next in (ReadOnlySpan<Block?>)[b.Link0.Target, b.Link1.Target])
                {
                    int k = next is null ? -1 : Array.IndexOf(region, next);
                    if (k < 0)
                    {
                        continue;
                    }
                    var notThere = il.DefineLabel();
                    il.Emit(OpCodes.Ldarg_1);
                    il.Emit(OpCodes.Ldfld, s_rip);
                    il.Emit(OpCodes.Ldloc, context.EntryRip!);
                    il.Emit(OpCodes.Ldc_I8, (long)(region[k].RamOffset - head.RamOffset));
                    il.Emit(OpCodes.Add);
                    il.Emit(OpCodes.Bne_Un, notThere);
                    il.Emit(OpCodes.Ldarg_1);
                    il.Emit(OpCodes.Ldloc, context.Retired!);
                    il.Emit(OpCodes.Call, s_mayChain);
                    il.Emit(OpCodes.Brtrue, starts[k]);
                    il.MarkLabel(notThere);
                }
                if (RegionBuilder.MayContinueAfter(b))
                {
                    il.Emit(OpCodes.Ldc_I4, j);
                    il.Emit(OpCodes.Stloc, context.ChainMember);
                    il.Emit(OpCodes.Br, context.ChainTail);
                }
                else
                {
                    il.Emit(OpCodes.Ldloc, context.Retired!);
                    il.Emit(OpCodes.Stloc, context.Result!);
                    il.Emit(OpCodes.Br, context.Done);
                }
                EmitExits(context);
            }
            // Some block ran to its end with no member to go on to: the next translation, if any.
            il.MarkLabel(context.ChainTail);
            EmitChainTail(context);
            il.Emit(OpCodes.Ldloc, context.Retired!);
            il.Emit(OpCodes.Stloc, context.Result!);
            il.Emit(OpCodes.Br, context.Done);
            // Every way out but an exception: nothing left for the run loop to count.
            il.MarkLabel(context.Done);
            il.Emit(OpCodes.Ldarg_1);
            il.Emit(OpCodes.Ldc_I4_0);
            il.Emit(OpCodes.Stfld, s_chainedRetired);
            il.Emit(OpCodes.Ldloc, context.Result!);
            il.Emit(OpCodes.Ret);
        }
        var code = (CompiledBlock)method.CreateDelegate(typeof(CompiledBlock), translation);
        Prepare(code);
        translation.SetCode(code);
        return new Result(translation, il.ILOffset, throughPointer, region.Length, chained, context.InlineForms);
    }

    /// <summary>The IL being emitted and, in a region, its locals and pending early exits.</summary>
    sealed class Emission(ILGenerator il, bool chained)
    {
        public readonly ILGenerator Il = il;
        public readonly bool Chained = chained;
        /// <summary>Instructions of the region's blocks completed so far; RIP at entry; the value to return.</summary>
        public readonly LocalBuilder? Retired = chained ? il.DeclareLocal(typeof(int)) : null;
        public readonly LocalBuilder? EntryRip = chained ? il.DeclareLocal(typeof(ulong)) : null;
        public readonly LocalBuilder? Result = chained ? il.DeclareLocal(typeof(int)) : null;
        public readonly Label Done = il.DefineLabel();
        /// <summary>Going on to another translation: the member whose cells to use, the
        /// instructions retired so far, the translation found.</summary>
        public readonly Label ChainTail = il.DefineLabel();
        public readonly LocalBuilder ChainMember = il.DeclareLocal(typeof(int));
        public readonly LocalBuilder ChainRetired = chained ? null! : il.DeclareLocal(typeof(int));
        public readonly LocalBuilder ChainNext = il.DeclareLocal(typeof(CompiledRegion));
        public readonly InlineForms.Locals Forms = new(il);
        /// <summary>Instructions emitted by <see cref="InlineForms"/> rather than through their handler.</summary>
        public int InlineForms;
        /// <summary>Early exits of the block being emitted: after instruction n - 1 it ended the block,
        /// with RIP still to advance by <c>PendingRip</c> bytes (that instruction's length, when it
        /// did not commit RIP itself) and <c>PendingFlags</c> still to store.</summary>
        public readonly Dictionary<int, (Label Label, ulong PendingRip, InlineForms.PendingAux? PendingFlags)> Exits = [];
    }

    /// <summary>The early exits of the last block emitted: each returns the instructions retired so far.</summary>
    static void EmitExits(Emission e)
    {
        var il = e.Il;
        foreach (var (n, (label, pendingRip, pendingFlags)) in e.Exits)
        {
            il.MarkLabel(label);
            InlineForms.EmitPendingFlags(il, e.Forms, pendingFlags);
            if (pendingRip != 0)
            {
                AddToRip(e, pendingRip);
            }
            il.Emit(OpCodes.Ldarg_1);
            il.Emit(OpCodes.Ldc_I4_0);
            il.Emit(OpCodes.Stfld, s_exitBlock);
            if (e.Chained)
            {
                il.Emit(OpCodes.Ldloc, e.Retired!);
                il.Emit(OpCodes.Ldc_I4, n);
                il.Emit(OpCodes.Add);
                il.Emit(OpCodes.Stloc, e.Result!);
                il.Emit(OpCodes.Br, e.Done);
            }
            else
            {
                il.Emit(OpCodes.Ldc_I4, n);
                il.Emit(OpCodes.Ret);
            }
        }
        e.Exits.Clear();
    }

    /// <summary>Emits one block's instructions (member <paramref name="member"/> of the region); returns
    /// how many call their handler through its pointer. Falls through when the block runs to its end
    /// with RIP committed; an instruction that ends the block early branches to an exit in
    /// <see cref="Emission.Exits"/>.</summary>
    static unsafe int EmitBlock(Emission e, Block block, int member)
    {
        var il = e.Il;
        ulong pendingRip = 0; // bytes of pure instructions since RIP was last committed
        int throughPointer = 0;
        // What is known of each instruction, worked out once: whether it is pure, its handler method.
        var pures = new bool[block.Count];
        var handlers = new MethodInfo?[block.Count];
        for (int i = 0; i < block.Count; i++)
        {
            pures[i] = IsPure(in block.Ops[i]);
            handlers[i] = HandlerMethods.Find((nint)block.Ops[i].Exec);
        }
        uint[] liveAfter = LiveFlagsAfter(block, pures, handlers);
        for (int i = 0; i < block.Count; i++)
        {
            ref Op op = ref block.Ops[i];
            bool pure = pures[i];
            if (!pure && pendingRip != 0)
            {
                AddToRip(e, pendingRip); // a fault, or a handler, sees RIP at this instruction
            }
            if (!pure)
            {
                pendingRip = 0;
            }
            bool nextRipSet = false;
            int length = op.Len;
            void SetNextRip()
            {
                EmitSetNextRip(e, length);
                nextRipSet = true;
            }
            MethodInfo? handler = handlers[i];
            if (handler is not null && UpdatesFlagsByChoice(handler) && (FlagsWritten(in op) & liveAfter[i]) == 0)
            {
                handler = WithoutFlagUpdate(handler); // nothing can observe the flags it would write
            }
            bool mayEndBlock = true;
            e.Forms.WroteMemory = false;
            if (handler is not null && HandlerMethods.DoesNothing(handler))
            {
                // no code: RIP moves past it with the next commit
                mayEndBlock = false;
            }
            else if (handler is not null && InlineForms.TryEmit(il, e.Forms, in op, handler, block.Bits, SetNextRip))
            {
                e.InlineForms++;
                mayEndBlock = e.Forms.WroteMemory; // see InlineForms.Locals.WroteMemory
            }
            else
            {
                InlineForms.MaterializeFlags(il, e.Forms); // a handler may read the flags or fault
                if (!pure)
                {
                    SetNextRip(); // a handler may read the slot (a RIP-relative operand) or replace it (a branch)
                }
                if (!EmitDirectCall(il, in op, handler))
                {
                    EmitPointerCall(il, in op, member, i);
                    throughPointer++;
                }
            }
            if (pure)
            {
                pendingRip += op.Len;
                continue;
            }
            if (nextRipSet)
            {
                // RIP = the next-RIP slot (a branch may have changed it).
                il.Emit(OpCodes.Ldarg_1);
                EmitNextRipAddress(e);
                il.Emit(OpCodes.Ldind_I8);
                il.Emit(OpCodes.Stfld, s_rip);
            }
            else
            {
                // An inline form that leaves the slot alone goes on to the next instruction: RIP is
                // advanced with the next commit (or on an early exit after this one).
                pendingRip = op.Len;
            }
            // If the instruction ended the block (a write to a page holding code, ...): clear
            // ExitBlock and return.
            if (!mayEndBlock)
            {
                continue;
            }
            if (i == block.Count - 1 && !e.Chained)
            {
                il.Emit(OpCodes.Ldarg_1); // the block ends here either way
                il.Emit(OpCodes.Ldc_I4_0);
                il.Emit(OpCodes.Stfld, s_exitBlock);
            }
            else
            {
                if (!e.Exits.TryGetValue(i + 1, out var exit))
                {
                    e.Exits[i + 1] = exit = (il.DefineLabel(), pendingRip, e.Forms.Pending);
                }
                il.Emit(OpCodes.Ldarg_1);
                il.Emit(OpCodes.Ldfld, s_exitBlock);
                il.Emit(OpCodes.Brtrue, exit.Label);
            }
        }
        if (pendingRip != 0)
        {
            AddToRip(e, pendingRip);
        }
        InlineForms.MaterializeFlags(il, e.Forms); // what follows (the run loop, another block) sees them
        return throughPointer;
    }

    /// <summary>
    /// <c>next = cpu.ChainFrom(this, member, retired); if (next != null) return tail-call next's entry
    /// (next, cpu)</c>; falls through when there is none. <c>tail.</c> makes it a jump, so a chain of
    /// any length takes no stack (the caller and callee have the same two register arguments: the
    /// JIT's fast tail call).
    /// </summary>
    static void EmitChainTail(Emission e)
    {
        var il = e.Il;
        var none = il.DefineLabel();
        il.Emit(OpCodes.Ldarg_1);
        il.Emit(OpCodes.Ldarg_0);
        il.Emit(OpCodes.Ldloc, e.ChainMember);
        il.Emit(OpCodes.Ldloc, e.Chained ? e.Retired! : e.ChainRetired);
        il.Emit(OpCodes.Call, s_chainFrom);
        il.Emit(OpCodes.Stloc, e.ChainNext);
        il.Emit(OpCodes.Ldloc, e.ChainNext);
        il.Emit(OpCodes.Brfalse, none);
        il.Emit(OpCodes.Ldloc, e.ChainNext);
        il.Emit(OpCodes.Ldarg_1);
        il.Emit(OpCodes.Ldloc, e.ChainNext);
        il.Emit(OpCodes.Call, s_entry);
        il.Emit(OpCodes.Tailcall);
        il.EmitCalli(OpCodes.Calli, CallingConventions.Standard, typeof(int), [typeof(CompiledRegion), typeof(Cpu)], null);
        il.Emit(OpCodes.Ret);
        il.MarkLabel(none);
    }

    // RIP bookkeeping is emitted as plain IL rather than calls of small helpers for the JIT to inline:
    // each inlined call site cost ~30 us of JIT time, and a block has two per instruction that is not pure.

    /// <summary>The next-RIP slot set to RIP + <paramref name="length"/>, as the interpreter sets it
    /// before each instruction (RIP is committed).</summary>
    static void EmitSetNextRip(Emission e, int length)
    {
        var il = e.Il;
        EmitNextRipAddress(e);
        il.Emit(OpCodes.Ldarg_1);
        il.Emit(OpCodes.Ldfld, s_rip);
        il.Emit(OpCodes.Ldc_I8, (long)length);
        il.Emit(OpCodes.Add);
        il.Emit(OpCodes.Stind_I8);
    }

    static void AddToRip(Emission e, ulong bytes)
    {
        var il = e.Il;
        il.Emit(OpCodes.Ldarg_1);
        il.Emit(OpCodes.Ldarg_1);
        il.Emit(OpCodes.Ldfld, s_rip);
        il.Emit(OpCodes.Ldc_I8, (long)bytes);
        il.Emit(OpCodes.Add);
        il.Emit(OpCodes.Stfld, s_rip);
    }

    /// <summary>The address of the next-RIP slot, <c>Regs.Gpr[RegisterFile.NextRip]</c>.</summary>
    static void EmitNextRipAddress(Emission e)
    {
        e.Il.Emit(OpCodes.Ldloc, e.Forms.Regs);
        e.Il.Emit(OpCodes.Ldc_I4, RegisterFile.NextRip * sizeof(ulong));
        e.Il.Emit(OpCodes.Add);
    }

    /// <summary>
    /// Has the JIT compile <paramref name="code"/> now, on this thread. A dynamic method is compiled on
    /// its first call and <see cref="RuntimeHelpers.PrepareMethod"/> does not accept one, so the method
    /// starts with a check that returns at once when called without a vCPU, and this makes that call.
    /// </summary>
    static void Prepare(CompiledBlock code) => code(null!);

    /// <summary>
    /// An instruction nothing can observe the RIP of: it cannot fault, touches no memory, does not
    /// end the block (so cannot branch or set <see cref="Cpu.ExitBlock"/>) and has no RIP-relative
    /// operand (LEA reads the next-RIP slot). Its handler cannot read or write RIP.
    /// </summary>
    static bool IsPure(in Op op)
    {
        ref readonly var form = ref InstructionTable.Form((Code)op.Code);
        // A Code covers the register and the memory form of an r/m operand; this op is one of them.
        bool memoryOperand = (op.Flags & OpFlags.AnyMemoryOperand) != 0;
        bool canFault = form.Faults == FaultKind.May || (form.Faults == FaultKind.ThroughMemoryOperand && memoryOperand);
        bool touchesMemory = form.ImplicitMemory || (memoryOperand && form.MemoryOperand != SegmentAccess.None);
        return form.Implemented && !canFault && !touchesMemory
            && form.EndsBlock == BlockEnd.None && (op.Flags & OpFlags.EndsBlock) == 0
            && op.Base != RegisterFile.NextRip && op.Index != RegisterFile.NextRip;
    }

    /// <summary>
    /// <c>handler(cpu, ref local)</c> with the local a copy of <paramref name="op"/> built from constants,
    /// so that the JIT, inlining the handler, sees every field as a constant. False when the handler is
    /// not a method the map knows or not one marked for inlining.
    /// </summary>
    static unsafe bool EmitDirectCall(ILGenerator il, in Op op, MethodInfo? handler)
    {
        if (handler is null || (handler.MethodImplementationFlags & MethodImplAttributes.AggressiveInlining) == 0)
        {
            return false; // only handlers meant to be inlined are worth the constant copy (and the JIT's time)
        }
        var local = il.DeclareLocal(typeof(Op));
        il.Emit(OpCodes.Ldloca, local);
        il.Emit(OpCodes.Initobj, typeof(Op));
        object boxed = op;
        foreach (var field in s_opFields)
        {
            long value = field == s_execField ? (long)(nint)op.Exec : FieldBits(field, boxed);
            if (value == 0)
            {
                continue;
            }
            il.Emit(OpCodes.Ldloca, local);
            EmitConstant(il, field, value);
            il.Emit(OpCodes.Stfld, field);
        }
        il.Emit(OpCodes.Ldarg_1);
        il.Emit(OpCodes.Ldloca, local);
        il.Emit(OpCodes.Call, handler);
        return true;
    }

    /// <summary>
    /// For each instruction, the arithmetic flags that something after it may observe: a later
    /// instruction reading them, an exception (its frame holds RFLAGS) or the end of the block. The
    /// pass runs backwards from the block's end, where every flag is live. An instruction that is not
    /// pure may end the block or fault, so everything is live across it. Only handlers that update
    /// flags by choice (<see cref="IFlagUpdate"/>) are known to overwrite the flags they write, so only
    /// they kill liveness; any other instruction is assumed to leave earlier flags visible.
    /// </summary>
    static uint[] LiveFlagsAfter(Block block, bool[] pures, MethodInfo?[] handlers)
    {
        const uint All = (uint)RFlags.Arith;
        var liveAfter = new uint[block.Count];
        uint live = All;
        for (int i = block.Count - 1; i >= 0; i--)
        {
            ref Op op = ref block.Ops[i];
            if (!pures[i])
            {
                liveAfter[i] = All;
                live = All;
                continue;
            }
            liveAfter[i] = live;
            uint kills = handlers[i] is { } handler && UpdatesFlagsByChoice(handler) ? FlagsWritten(in op) : 0;
            live = (live & ~kills) | InstructionTable.Form((Code)op.Code).FlagsRead;
        }
        return liveAfter;
    }

    /// <summary>Every flag the form sets, those the architecture leaves undefined included: the
    /// interpreter's handlers write a definite value for them too.</summary>
    static uint FlagsWritten(in Op op)
    {
        ref readonly var form = ref InstructionTable.Form((Code)op.Code);
        return form.FlagsWritten | form.FlagsUndefined;
    }

    static bool UpdatesFlagsByChoice(MethodInfo handler) =>
        handler.IsGenericMethod && Array.IndexOf(handler.GetGenericArguments(), typeof(UpdateFlags)) >= 0;

    /// <summary>The same handler with <see cref="SkipFlags"/> for <see cref="UpdateFlags"/>.</summary>
    static MethodInfo WithoutFlagUpdate(MethodInfo handler)
    {
        var arguments = handler.GetGenericArguments();
        arguments[Array.IndexOf(arguments, typeof(UpdateFlags))] = typeof(SkipFlags);
        return handler.GetGenericMethodDefinition().MakeGenericMethod(arguments);
    }

    /// <summary><c>calli op.Exec(cpu, ref ops[index])</c>: the interpreter's call, on the block's own op,
    /// reached through the translation the code is closed over.</summary>
    static unsafe void EmitPointerCall(ILGenerator il, in Op op, int member, int index)
    {
        il.Emit(OpCodes.Ldarg_1);
        il.Emit(OpCodes.Ldarg_0);
        il.Emit(OpCodes.Ldfld, s_blocks);
        il.Emit(OpCodes.Ldc_I4, member);
        il.Emit(OpCodes.Ldelem_Ref);
        il.Emit(OpCodes.Ldfld, s_ops);
        il.Emit(OpCodes.Ldc_I4_0);
        il.Emit(OpCodes.Ldelema, typeof(Op));
        if (index > 0)
        {
            il.Emit(OpCodes.Ldc_I4, index * sizeof(Op));
            il.Emit(OpCodes.Add);
        }
        il.Emit(OpCodes.Ldc_I8, (long)(nint)op.Exec);
        il.Emit(OpCodes.Conv_I);
        il.EmitCalli(OpCodes.Calli, CallingConventions.Standard, typeof(void), [typeof(Cpu), typeof(Op).MakeByRefType()], null);
    }

    static long FieldBits(FieldInfo field, object op)
    {
        object value = field.GetValue(op)!;
        return Type.GetTypeCode(field.FieldType) switch
        {
            TypeCode.Byte => (byte)value,
            TypeCode.UInt16 => (ushort)value,
            TypeCode.UInt32 => (uint)value,
            TypeCode.Int64 => (long)value,
            TypeCode.UInt64 => (long)(ulong)value,
            _ => throw new InvalidOperationException($"Op field {field.Name} of type {field.FieldType} has no constant form"),
        };
    }

    static void EmitConstant(ILGenerator il, FieldInfo field, long value)
    {
        if (field.FieldType == typeof(long) || field.FieldType == typeof(ulong))
        {
            il.Emit(OpCodes.Ldc_I8, value);
        }
        else if (field == s_execField)
        {
            il.Emit(OpCodes.Ldc_I8, value);
            il.Emit(OpCodes.Conv_I);
        }
        else
        {
            il.Emit(OpCodes.Ldc_I4, unchecked((int)value));
        }
    }
}
