namespace SharpVisor.Fuzz.Tests;

/// <summary>
/// Every input in fuzz/corpus (the seeds, and every crash a fuzzer found, kept as a regression input)
/// replays without a crash or a hang: the parser accepts it or refuses it with its one-line error.
/// This is the replay CI runs even where afl-fuzz is not installed.
/// </summary>
public sealed class CorpusReplayTests
{
    public static TheoryData<string, string> Inputs()
    {
        var data = new TheoryData<string, string>();
        foreach (string target in FuzzTarget.All.Keys)
        {
            foreach (string file in Corpus.Files(target))
            {
                data.Add(target, Path.GetFileName(file));
            }
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(Inputs))]
    public void Corpus_input_replays_without_crash_or_hang(string target, string name)
    {
        using var fuzz = FuzzTarget.Create(target);
        var result = Program.ReplayOne(fuzz, File.ReadAllBytes(Corpus.File(target, name)), TimeSpan.FromSeconds(30));
        switch (result)
        {
            case Program.ReplayResult.Crash crash:
                Assert.Fail($"fuzz/corpus/{target}/{name} crashes the {target} target: {crash.Exception}");
                break;
            case Program.ReplayResult.Hang:
                Assert.Fail($"fuzz/corpus/{target}/{name} hangs the {target} target (no answer in 30 s)");
                break;
        }
    }

    [Fact]
    public void Every_target_has_seeds_the_parser_accepts()
    {
        // A corpus of only rejected inputs would leave the fuzzer outside the parser's interesting paths.
        foreach (string target in FuzzTarget.All.Keys)
        {
            using var fuzz = FuzzTarget.Create(target);
            int accepted = Corpus.Files(target).Count(f => f.Contains("seed-") && fuzz.Run(File.ReadAllBytes(f)).Accepted);
            Assert.True(accepted >= 2, $"only {accepted} seeds of the {target} target are accepted");
        }
    }
}
