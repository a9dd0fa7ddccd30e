"""The one progress bar of fastnn: ``Trainer.fit(progress=True)``, ``fastnn
train`` and ``fastnn bench`` all draw this one."""

import sys

WIDTH = 30


class ProgressBar:
    """``[#########.....................] epoch 3/10 text`` on a stream.

    On a terminal the line is redrawn in place, and ``write`` prints lines
    above it; elsewhere (a file, a pipe, a notebook's captured stderr) every
    ``update`` is a line of its own, so logs stay readable.

    Parameters
    ----------
    total : int, the number of steps
    unit : str, what a step is ('epoch'), shown before the count; '' for none
    stream : text stream, default sys.stderr (the one current at construction)
    """

    def __init__(self, total, unit="", stream=None):
        self.total, self.unit = total, unit
        self.stream = sys.stderr if stream is None else stream
        self.tty = isatty(self.stream)
        self.shown = ""  # what the terminal shows now
        if self.tty:
            self._draw(0, "")

    def update(self, done, text=""):
        """Show ``done`` steps of ``total``, with ``text`` after the count."""
        if self.tty:
            self._draw(done, text)
        else:
            self.stream.write(self._line(done, text) + "\n")
            self.stream.flush()

    def write(self, line, stream=None):
        """Print ``line`` (on ``stream``, default the bar's) above the bar."""
        stream = self.stream if stream is None else stream
        if self.tty:
            self._clear()
        stream.write(line + "\n")
        stream.flush()
        if self.tty and self.shown:
            self.stream.write(self.shown)
            self.stream.flush()

    def close(self):
        """End the bar's line (on a terminal: leave the last state shown)."""
        if self.tty and self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = ""

    def _line(self, done, text):
        filled = int(WIDTH * min(done, self.total) / max(self.total, 1))
        count = f"{self.unit} {done}/{self.total}" if self.unit else f"{done}/{self.total}"
        return f"[{'#' * filled}{'.' * (WIDTH - filled)}] {count}{text}"

    def _draw(self, done, text):
        self.shown = "\r" + self._line(done, text) + "\033[K"
        self.stream.write(self.shown)
        self.stream.flush()

    def _clear(self):
        self.stream.write("\r\033[K")
        self.stream.flush()


def isatty(stream):
    """Whether ``stream`` is a terminal (False for streams that cannot say)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
