"""The commands' progress bar: a line per tenth off a terminal, one redrawn line on one."""

import io

from django.core.management.base import OutputWrapper

from fleet_app.progress import ProgressBar


def test_off_a_terminal_it_writes_a_line_per_tenth():
    out = io.StringIO()
    bar = ProgressBar(OutputWrapper(out), 50, "rows")

    for _ in range(50):
        bar.step()
    bar.close()

    lines = out.getvalue().splitlines()
    # the first item, then each tenth: 1, 5, 10, … 50
    assert lines[0] == "1/50 rows" and lines[-1] == "50/50 rows"
    assert len(lines) == 11


def test_on_a_terminal_it_redraws_one_line():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    bar = ProgressBar(OutputWrapper(out), 4, "groups")
    for done in range(1, 5):
        bar.show(done)
    bar.close()

    assert out.getvalue().count("\r") == 4
    assert out.getvalue().endswith("4/4 groups\n")
