"""The one exception type that reaches users as a single line.

Library code raises :class:`NasctlError` (or a subclass) for bad input it can explain: the message
names the problem and the fix. The CLI prints it as ``nasctl: error: <message>`` and exits with 2;
anything else is a bug and keeps its traceback.
"""


class NasctlError(Exception):
    """Bad input or environment, with a message that says what is wrong and how to fix it."""
