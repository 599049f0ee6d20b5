using System.Collections;
using System.Reflection;

namespace SharpVisor.Cpu.X86.State;

/// <summary>
/// Value equality for state records that hold arrays (a record's generated equality compares array
/// references), and a field-by-field difference list for test failures and snapshot debugging.
/// It reads every public property, so a property added later is compared without anyone having to
/// remember it. Used at save/restore and in tests, never on an instruction path.
/// </summary>
public static class StateEquality
{
    /// <summary>True when every public property of <paramref name="a"/> and <paramref name="b"/> is equal, arrays element by element.</summary>
    public static bool PropertiesEqual<T>(T a, T? b) where T : class
    {
        if (ReferenceEquals(a, b))
        {
            return true;
        }
        if (b is null)
        {
            return false;
        }
        foreach (var p in Properties<T>.All)
        {
            if (!ValueEqual(p.GetValue(a), p.GetValue(b)))
            {
                return false;
            }
        }
        return true;
    }

    /// <summary>A hash consistent with <see cref="PropertiesEqual"/>.</summary>
    public static int PropertiesHash<T>(T a) where T : class
    {
        var hash = new HashCode();
        foreach (var p in Properties<T>.All)
        {
            object? v = p.GetValue(a);
            if (v is Array array)
            {
                foreach (object? e in array)
                {
                    hash.Add(e);
                }
            }
            else
            {
                hash.Add(v);
            }
        }
        return hash.ToHashCode();
    }

    /// <summary>
    /// Every differing field as "path: a != b" (nested records and array elements named by their
    /// path, e.g. <c>Fpu.Xmm[3]</c>); empty when the two are equal.
    /// </summary>
    public static List<string> Differences<T>(T a, T b) where T : class
    {
        var found = new List<string>();
        Compare(typeof(T), a, b, "", found);
        return found;
    }

    static void Compare(Type type, object? a, object? b, string path, List<string> found)
    {
        if (a is null || b is null)
        {
            if (!ReferenceEquals(a, b))
            {
                found.Add($"{path}: {Show(a)} != {Show(b)}");
            }
            return;
        }
        if (a is Array x && b is Array y)
        {
            if (x.Length != y.Length)
            {
                found.Add($"{path}: length {x.Length} != {y.Length}");
                return;
            }
            for (int i = 0; i < x.Length; i++)
            {
                Compare(type.GetElementType()!, x.GetValue(i), y.GetValue(i), $"{path}[{i}]", found);
            }
            return;
        }
        if (type.IsClass && type != typeof(string))
        {
            foreach (var p in PublicProperties(type))
            {
                Compare(p.PropertyType, p.GetValue(a), p.GetValue(b), path.Length == 0 ? p.Name : $"{path}.{p.Name}", found);
            }
            return;
        }
        if (!Equals(a, b))
        {
            found.Add($"{path}: {Show(a)} != {Show(b)}");
        }
    }

    static string Show(object? v) => v switch
    {
        null => "null",
        ulong u => $"0x{u:x}",
        long l => $"0x{l:x}",
        uint u => $"0x{u:x}",
        ushort u => $"0x{u:x}",
        _ => v.ToString() ?? "",
    };

    static bool ValueEqual(object? a, object? b)
    {
        if (a is Array x && b is Array y)
        {
            return StructuralComparisons.StructuralEqualityComparer.Equals(x, y);
        }
        return Equals(a, b);
    }

    static PropertyInfo[] PublicProperties(Type t) =>
        t.GetProperties(BindingFlags.Public | BindingFlags.Instance).Where(p => p.GetIndexParameters().Length == 0).ToArray();

    static class Properties<T>
    {
        public static readonly PropertyInfo[] All = PublicProperties(typeof(T));
    }
}
