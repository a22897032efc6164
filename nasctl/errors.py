"""The one exception type that reaches users as a single line.

Library code raises :class:`NasctlError` (or a subclass) for bad input it can explain: the message
names the problem and the fix. The CLI prints it as ``nasctl: error: <message>`` and exits with 2;
anything else is a bug and keeps its traceback.
"""


class NasctlError(Exception):
    """Bad input or environment, with a message that says what is wrong and how to fix it."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C inside a run: carries the run folder so the message can say exactly what to resume."""

    def __init__(self, run_dir: object):
        super().__init__(str(run_dir))
        self.run_dir = run_dir
