"""SIGTERM and SIGINT (preemptible machines send SIGTERM): the loop finishes the step in flight, saves a checkpoint
and ends with `Interrupted`, which the CLI turns into exit code 128 + the signal."""
import signal
import sys
import threading


class Interrupted(Exception):
    """SIGTERM or SIGINT arrived: the run saved a checkpoint and ends (exit code 128 + the signal)."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


class Signals:
    """SIGTERM / SIGINT set a flag the loop reads between steps (the step in flight finishes first)."""

    def __init__(self):
        self.received, self._previous = None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None:         # a second signal: the user insists
            raise KeyboardInterrupt
        self.received = signum
        print(f"\n{signal.Signals(signum).name}: finishing this step, then saving a checkpoint", file=sys.stderr)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
