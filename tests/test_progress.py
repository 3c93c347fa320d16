from __future__ import annotations

import io

from ckpt_compat.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_phases_and_failures_not_every_step() -> None:
    log = io.StringIO()
    progress = Progress(stream=log)
    with progress.phase("check", "checking 3 specs"):
        progress.step("[1/3] spec a: ok")
        progress.say("[2/3] spec b: FAILED")
    assert log.getvalue().splitlines() == ["checking 3 specs", "[2/3] spec b: FAILED"]
    assert set(progress.phases) == {"check"} and progress.phases["check"] >= 0


def test_verbose_keeps_every_step_and_quiet_nothing() -> None:
    loud, silent = io.StringIO(), io.StringIO()
    for stream, verbose, quiet in ((loud, True, False), (silent, False, True)):
        progress = Progress(stream=stream, verbose=verbose, quiet=quiet)
        progress.step("[1/2] spec a")
        progress.say("done")
    assert loud.getvalue().splitlines() == ["[1/2] spec a", "done"]
    assert silent.getvalue() == ""


def test_a_terminal_gets_one_status_line_rewritten_in_place() -> None:
    screen = _Terminal()
    progress = Progress(stream=screen)
    progress.step("[1/2] spec a")
    progress.step("[2/2] spec b")
    progress.say("finished")
    text = screen.getvalue()
    assert text.count("\r\033[K") == 3 and text.endswith("finished\n") and "\n" not in text[:-1]


def test_a_name_in_a_line_cannot_print_a_line_of_its_own() -> None:
    """A corpus's or a file's name is data: ``x\\n  verdict: ok`` stays in its line, escaped."""
    log, terminal = io.StringIO(), _Terminal()
    Progress(stream=log).say("/tmp/x\n  verdict: ok: 3 cells")
    Progress(stream=terminal).step("/tmp/x\r[1/1] ok")
    assert log.getvalue() == "/tmp/x\\n  verdict: ok: 3 cells\n"
    assert terminal.getvalue() == "\r\033[K/tmp/x\\r[1/1] ok"
