using System.Collections.Frozen;
using System.Reflection;
using SharpVisor.Cpu.X86.Decode;

namespace SharpVisor.Cpu.X86.Translation;

/// <summary>
/// Maps a handler's function pointer (what <see cref="Op.Exec"/> holds) back to its
/// <see cref="MethodInfo"/>, so translated code can <c>call</c> the handler instead of calling
/// through the pointer — and the JIT can then inline it with the op's fields as constants.
/// </summary>
/// <remarks>
/// C# gives no way from a <c>delegate*</c> to its method, but <c>&amp;M</c> (IL <c>ldftn</c>) and
/// <see cref="RuntimeMethodHandle.GetFunctionPointer"/> yield the same stable entry point. So the
/// map is built by enumerating every method shaped like a handler — static, <c>(Cpu, ref Op)</c>,
/// returning void — in this assembly, closing generic ones over every struct that satisfies their
/// constraints (widths <c>S8..S64</c>, ALU/shift/string/vector operations), and asking each for its
/// pointer. Built once per process on first use (on a translator thread), then read-only.
/// </remarks>
public static class HandlerMethods
{
    static readonly Lazy<FrozenDictionary<nint, MethodInfo>> s_map = new(Build);

    /// <summary>The handler method behind <paramref name="exec"/>, or null when it is not one of ours.</summary>
    public static MethodInfo? Find(nint exec) => s_map.Value.GetValueOrDefault(exec);

    static readonly Lazy<FrozenSet<MethodInfo>> s_empty = new(() => s_map.Value.Values.Where(m => m.GetMethodBody()?.GetILAsByteArray() is [0x2A]).ToFrozenSet());

    /// <summary>True for a handler whose body is a bare <c>ret</c> (NOP and its multi-byte forms, the
    /// hint NOPs): translated code needs nothing for it, not even a call.</summary>
    public static bool DoesNothing(MethodInfo handler) => s_empty.Value.Contains(handler);

    /// <summary>How many handler instantiations the map holds (for the stats and tests).</summary>
    public static int Count => s_map.Value.Count;

    static FrozenDictionary<nint, MethodInfo> Build()
    {
        var assembly = typeof(Cpu).Assembly;
        Type[] structs = [.. assembly.GetTypes().Where(t => t.IsValueType && !t.IsGenericTypeDefinition && !t.IsEnum)];
        var map = new Dictionary<nint, MethodInfo>();
        const BindingFlags All = BindingFlags.Static | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly;
        foreach (var type in assembly.GetTypes())
        {
            if (type.IsGenericTypeDefinition)
            {
                continue;
            }
            foreach (var method in type.GetMethods(All))
            {
                if (!IsHandlerShaped(method))
                {
                    continue;
                }
                if (!method.IsGenericMethodDefinition)
                {
                    map.TryAdd(method.MethodHandle.GetFunctionPointer(), method);
                    continue;
                }
                foreach (var closed in Instantiations(method, structs))
                {
                    map.TryAdd(closed.MethodHandle.GetFunctionPointer(), closed);
                }
            }
        }
        return map.ToFrozenDictionary();
    }

    static bool IsHandlerShaped(MethodInfo m)
    {
        if (m.ReturnType != typeof(void))
        {
            return false;
        }
        var p = m.GetParameters();
        return p.Length == 2 && p[0].ParameterType == typeof(Cpu) && p[1].ParameterType == typeof(Op).MakeByRefType();
    }

    /// <summary>Every closing of <paramref name="method"/> over structs meeting its parameters' interface constraints.</summary>
    static IEnumerable<MethodInfo> Instantiations(MethodInfo method, Type[] structs)
    {
        var parameters = method.GetGenericArguments();
        var candidates = new Type[parameters.Length][];
        for (int i = 0; i < parameters.Length; i++)
        {
            var constraints = parameters[i].GetGenericParameterConstraints();
            if (constraints.Length == 0)
            {
                yield break; // not a handler form we can enumerate
            }
            candidates[i] = [.. structs.Where(s => constraints.All(c => c.IsAssignableFrom(s)))];
        }
        var choice = new Type[parameters.Length];
        foreach (var combination in Combinations(candidates, 0, choice))
        {
            MethodInfo? closed;
            try
            {
                closed = method.MakeGenericMethod(combination);
            }
            catch (ArgumentException)
            {
                continue; // a combination the constraints reject (e.g. one operation for another width)
            }
            yield return closed;
        }
    }

    static IEnumerable<Type[]> Combinations(Type[][] candidates, int index, Type[] choice)
    {
        if (index == candidates.Length)
        {
            yield return choice;
            yield break;
        }
        foreach (var t in candidates[index])
        {
            choice[index] = t;
            foreach (var c in Combinations(candidates, index + 1, choice))
            {
                yield return c;
            }
        }
    }
}
