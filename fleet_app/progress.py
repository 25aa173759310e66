"""The progress bar every long command shows (on stderr or stdout, as the command chooses).

On a terminal: one line redrawn in place. Elsewhere (logs, CI, tests): a line each time
another tenth is done, so the output stays short and readable.
"""


class ProgressBar:
    WIDTH = 30

    def __init__(self, stream, total: int, unit: str):
        self.stream, self.total, self.unit = stream, total, unit
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.done = 0
        self.tenth_shown = -1

    def step(self, *_args) -> None:
        """One more item done (usable as a ``progress`` callback of any signature)."""
        self.show(self.done + 1)

    def show(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        if not self.total:
            return
        fraction = min(done / self.total, 1.0)
        if self.tty:
            filled = int(self.WIDTH * fraction)
            self.stream.write(
                f"\r[{'#' * filled}{'.' * (self.WIDTH - filled)}] {done}/{self.total} {self.unit}",
                ending="",
            )
            self.stream.flush()
        elif int(fraction * 10) > self.tenth_shown:
            self.tenth_shown = int(fraction * 10)
            self.stream.write(f"{done}/{self.total} {self.unit}")

    def close(self) -> None:
        if self.tty and self.total:
            self.stream.write("")
