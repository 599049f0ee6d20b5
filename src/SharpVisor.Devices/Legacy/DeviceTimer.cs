using SharpVisor.Core;

namespace SharpVisor.Devices.Legacy;

/// <summary>
/// A <see cref="TimerQueue.Timer"/> used as "call me back no later than": a device asks for a
/// callback by a deadline and re-plans inside the callback. A pending earlier deadline is kept and
/// nothing is ever cancelled, because every re-arm or cancel leaves a stale entry in the queue
/// until its deadline passes; a guest re-programming a timer in a loop could otherwise fill the
/// queue. Callbacks must therefore tolerate running early or with nothing to do.
/// </summary>
sealed class DeviceTimer(TimerQueue queue, string name, Action callback)
{
    readonly TimerQueue.Timer _timer = queue.Create(name, callback);
    long _armedAtNs;

    /// <summary>Ensures a callback at or before <paramref name="deadlineNs"/>.</summary>
    public void EnsureBy(long deadlineNs)
    {
        if (!_timer.IsArmed || deadlineNs < _armedAtNs)
        {
            _armedAtNs = deadlineNs;
            _timer.ArmAt(deadlineNs);
        }
    }
}
