using System.Diagnostics.CodeAnalysis;

namespace SharpVisor.Core;

/// <summary>
/// Throw sites kept out of line so hot methods stay small and inlinable (dotnet/runtime pattern).
/// Exceptions mean VMM bugs or host errors; guest-caused errors are values.
/// </summary>
public static class ThrowHelper
{
    [DoesNotReturn]
    public static void ArgumentOutOfRange(string name, string message) => throw new ArgumentOutOfRangeException(name, message);

    [DoesNotReturn]
    public static void InvalidOperation(string message) => throw new InvalidOperationException(message);
}

/// <summary>A user-facing error: the CLI prints its message as one line and exits non-zero.</summary>
public class UserErrorException(string message) : Exception(message);
