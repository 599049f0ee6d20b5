using System.Security.Cryptography;

namespace SharpVisor.Fuzz.Tests;

/// <summary>The seed and regression inputs in fuzz/corpus/TARGET, and where test findings are written.</summary>
static class Corpus
{
    /// <summary>The repository root (the folder holding SharpVisor.slnx), found from the test assembly's folder.</summary>
    public static readonly string Root = FindRoot();

    public static string Directory(string target) => Path.Combine(Root, "fuzz", "corpus", target);

    public static string File(string target, string name) => Path.Combine(Directory(target), name);

    /// <summary>Every input of a target, by file name.</summary>
    public static IEnumerable<string> Files(string target) =>
        System.IO.Directory.EnumerateFiles(Directory(target)).Order(StringComparer.Ordinal);

    /// <summary>Writes an input that broke a target to fuzz/findings/tests (gitignored) and returns its path.</summary>
    public static string SaveFinding(string target, byte[] input)
    {
        string dir = Path.Combine(Root, "fuzz", "findings", "tests", target);
        System.IO.Directory.CreateDirectory(dir);
        string path = Path.Combine(dir, Convert.ToHexStringLower(SHA256.HashData(input))[..16]);
        System.IO.File.WriteAllBytes(path, input);
        return path;
    }

    static string FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (System.IO.File.Exists(Path.Combine(dir.FullName, "SharpVisor.slnx")))
            {
                return dir.FullName;
            }
        }
        throw new InvalidOperationException($"no SharpVisor.slnx above {AppContext.BaseDirectory}");
    }
}
