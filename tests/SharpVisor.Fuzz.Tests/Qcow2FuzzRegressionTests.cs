namespace SharpVisor.Fuzz.Tests;

/// <summary>
/// Inputs the qcow2 fuzz target found (fuzz/corpus/qcow2/crash-*) or that pin the same defect down by
/// hand (regress-*): each must now be refused with the promised one-line error.
/// </summary>
public sealed class Qcow2FuzzRegressionTests
{
    static FuzzOutcome Replay(string name)
    {
        using var target = FuzzTarget.Create("qcow2");
        return target.Run(File.ReadAllBytes(Corpus.File("qcow2", name)));
    }

    /// <summary>
    /// afl-fuzz: a backing file name holding a line break and tabs was copied into the error, so the
    /// user saw a two-line message (and a name with escape sequences would have reached the terminal).
    /// </summary>
    [Fact]
    public void Backing_file_name_with_control_characters_is_one_printable_line()
    {
        var outcome = Replay("crash-backing-name-control-chars");
        Assert.False(outcome.Accepted);
        Assert.Contains("unsupported qcow2 feature: backing file '", outcome.Error);
        Assert.DoesNotContain(outcome.Error!, char.IsControl);
    }

    /// <summary>The same through the feature name table: an unknown incompatible bit named "evil\n\e[31mred".</summary>
    [Fact]
    public void Feature_name_with_control_characters_is_one_printable_line()
    {
        var outcome = Replay("regress-feature-name-control-chars");
        Assert.False(outcome.Accepted);
        Assert.Contains("unsupported qcow2 feature: 'evil", outcome.Error);
        Assert.Contains("(incompatible bit 40)", outcome.Error);
        Assert.DoesNotContain(outcome.Error!, char.IsControl);
    }
}
