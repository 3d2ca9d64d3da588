"""The terminal frontend, end to end: ``python -m frontends.cli`` in a subprocess.

Each test starts the program the way a user does, with its stdin piped and
Open-Meteo replaced by the fake server of the `openmeteo` fixture (the
subprocess inherits its ``OPEN_METEO_*`` variables). Piped stdin is not a
terminal, so the program writes each answer back after its prompt and
stdout reads as the whole dialogue. A few small flows below are run with
``--flow tests.test_cli:...``.
"""

from __future__ import annotations

import io
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import pytest

from engine.commands import Choose, Input, Print
from engine.frontend import Notice
from engine.journal import JournalError, SqliteJournal
from engine.states import State, Steps
from flows.weather import WeatherFlow
from frontends.cli import EXIT_INPUT_ENDED, LineReader, TerminalFrontend, run
from tests.support.flows import tiny_png
from tests.support.openmeteo_server import FakeOpenMeteo, load_fixture

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "frontends.cli"]
PROG = "python -m frontends.cli"
TIMEOUT = 15.0

LONDON_CHOICES = """\
Which one do you mean?
0) London, England, United Kingdom
1) London, Ontario, Canada
2) London, Ohio, United States
3) London, Kentucky, United States
4) London, Arkansas, United States
> """
WHAT_NEXT = "What next?\n0) continue\n1) quit\n2) forecast\n> "
#: The weather flow's greeting of the local user (LOGNAME=ann, see cli_env).
HELLO = "Hello, ann! Name a city or share a location, and I tell you its weather.\n"
UNAVAILABLE = "The weather service is unavailable right now, please try again later."


# -- small flows for the tests (the subprocess imports them by name) ---------


@dataclass(frozen=True)
class CleanupFlow(State):
    """Asks one question; its ``finally`` leaves a file, to see that it ran."""

    def run(self) -> Steps:
        try:
            name = yield Input("Your name: ")
            yield Print(f"Hello, {name}!")
        finally:
            Path(os.environ["CLI_TEST_MARKER"]).write_text("finally ran", encoding="utf-8")
        return None


@dataclass(frozen=True)
class HalvingFlow(State):
    """A flow with a bug: it fails on an answer that is not a number."""

    def run(self) -> Steps:
        answer = yield Input("A number: ")
        yield Print(f"Half of it is {int(answer) / 2}")
        return None


# -- running the program -------------------------------------------------------


def cli_env(**extra: str) -> dict[str, str]:
    """This process's environment (with the fake server's URLs) for the program."""
    env = dict(os.environ)
    env["PYTHONIOENCODING"] = "utf-8"  # whatever the locale of the test run
    env.pop("PYTHONSTARTUP", None)
    env["LOGNAME"] = "ann"  # the local user the weather flow greets
    env.update(extra)
    return env


def run_cli(
    *args: str, input: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the program to its end with `input` piped in (killed after TIMEOUT)."""
    return subprocess.run(
        [*CLI, *args],
        input=input,
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=ROOT,
        env=env or cli_env(),
        timeout=TIMEOUT,
    )


def assert_quiet(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert "Exception ignored" not in stderr, stderr


class Session:
    """The program with a pipe held open on its stdin, to answer as a person does."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        # Python turns SIGINT into KeyboardInterrupt unless it was ignored when
        # it started (as in a background job): make sure the program sees Ctrl-C.
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            self.process = subprocess.Popen(
                [*CLI, *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=ROOT,
                env=env or cli_env(),
            )
        finally:
            signal.signal(signal.SIGINT, previous)
        self._out = bytearray()
        self._err = bytearray()
        self._changed = threading.Condition()
        self._seen = 0
        assert self.process.stdout is not None and self.process.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self._out)),
            threading.Thread(target=self._read, args=(self.process.stderr, self._err)),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: io.BufferedReader | None, into: bytearray) -> None:
        assert stream is not None
        while chunk := os.read(stream.fileno(), 4096):
            with self._changed:
                into.extend(chunk)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def stdout(self) -> str:
        with self._changed:
            return self._out.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        with self._changed:
            return self._err.decode("utf-8", "replace")

    def expect(self, text: str, timeout: float = TIMEOUT) -> str:
        """Wait until `text` is written (after what was expected before); the output so far."""

        def seen() -> bool:
            return self._out.decode("utf-8", "replace").find(text, self._seen) >= 0

        with self._changed:
            if not self._changed.wait_for(seen, timeout):
                raise AssertionError(
                    f"waited {timeout} s for {text!r}; stdout: {self.stdout!r}, "
                    f"stderr: {self.stderr!r}"
                )
            output = self._out.decode("utf-8", "replace")
            self._seen = output.find(text, self._seen) + len(text)
            return output

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{line}\n".encode())
        self.process.stdin.flush()

    def close_input(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()

    def wait(self, timeout: float = TIMEOUT) -> int:
        status = self.process.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)
        return status

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for reader in self._readers:
            reader.join(5)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    """Where CleanupFlow's ``finally`` writes."""
    yield tmp_path / "marker"


# -- whole sessions -------------------------------------------------------------


def test_a_whole_session(openmeteo: FakeOpenMeteo) -> None:
    openmeteo.set_forecast(42.98339, -81.23304, temperature=21.5, weather_code=0, wind_speed=0)
    result = run_cli(input="London\n1\ncontinue\n東京\nquit\n")
    assert result.stdout == (
        HELLO + "Name a city: London\n" + LONDON_CHOICES + "1\n"
        "Found London (Canada) at latitude 42.98339 and longitude -81.23304\n"
        "Current temperature is 21.5 °C\n"
        "Clear sky, no wind\n" + WHAT_NEXT + "continue\n"
        "Name a city: \n0) London, Ontario, Canada\n> 東京\n"
        "Found 東京 (日本) at latitude 35.6895 and longitude 139.69171\n"
        "Current temperature is 15.6 °C\n"
        "Overcast, wind 4.8 km/h from the north\n" + WHAT_NEXT + "quit\n"
        "Terminating\n"
    )
    assert result.stderr == ""
    assert result.returncode == 0


def test_answering_line_by_line_as_a_person_does(openmeteo: FakeOpenMeteo) -> None:
    """Each prompt is on screen (flushed, no newline) before anything is typed."""
    with Session() as session:
        session.expect("Name a city: ")  # on screen before anything is typed
        session.send("London")
        session.expect(LONDON_CHOICES)
        # Nothing came between the prompt and the echoed answer: it waited for it.
        assert session.stdout == HELLO + "Name a city: London\n" + LONDON_CHOICES
        session.send("London, Ohio, United States")
        session.expect("Found London (United States) at latitude 39.88645")
        session.expect(WHAT_NEXT)
        session.send("1")
        session.expect("Terminating\n")
        assert session.wait() == 0
        assert session.stderr == ""
    assert len(openmeteo.requests) == 2


def test_the_service_failing_then_working(openmeteo: FakeOpenMeteo) -> None:
    openmeteo.fail("server_error", endpoint="search")
    openmeteo.fail("rate_limit", endpoint="forecast")
    result = run_cli(input="London\nLondon\n0\nLondon\n0\nquit\n")
    assert result.stdout == (
        HELLO + "Name a city: London\n"
        f"{UNAVAILABLE}\n"
        "Name a city: London\n" + LONDON_CHOICES + "0\n"
        "Found London (United Kingdom) at latitude 51.50853 and longitude -0.12574\n"
        f"{UNAVAILABLE}\n"
        "Name a city: \n0) London, England, United Kingdom\n> London\n"
        + LONDON_CHOICES + "0\n"
        "Found London (United Kingdom) at latitude 51.50853 and longitude -0.12574\n"
        "Current temperature is 15.6 °C\n"
        "Overcast, wind 4.8 km/h from the north\n" + WHAT_NEXT + "quit\n"
        "Terminating\n"
    )
    assert result.returncode == 0
    assert result.stderr == ""  # the user was told in a sentence; -v shows the details
    assert [r.failure for r in openmeteo.requests] == [
        "server_error",
        None,
        "rate_limit",
        None,
        None,
    ]


def test_invalid_choices_are_asked_again(openmeteo: FakeOpenMeteo) -> None:
    result = run_cli(input="London\n7\nohio\n\n-1\n 2 \ncontinue\n")
    try_again = "Try again\n" + LONDON_CHOICES
    assert result.stdout == (
        HELLO + "Name a city: London\n"
        + LONDON_CHOICES
        + "7\n"
        + try_again
        + "ohio\n"
        + try_again
        + "\n"
        + try_again
        + "-1\n"
        + try_again
        + " 2 \n"
        "Found London (United States) at latitude 39.88645 and longitude -83.44825\n"
        "Current temperature is 15.6 °C\n"
        "Overcast, wind 4.8 km/h from the north\n" + WHAT_NEXT + "continue\n"
        "Name a city: \n0) London, Ohio, United States\n> \n"  # then the input ends
    )
    assert result.returncode == EXIT_INPUT_ENDED
    assert result.stderr == ""


# -- the end of input and Ctrl-C --------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "shown"),
    [
        ("", HELLO + "Name a city: \n"),
        ("London\n", HELLO + "Name a city: London\n" + LONDON_CHOICES + "\n"),
        ("London", HELLO + "Name a city: London\n" + LONDON_CHOICES + "\n"),  # no final newline
    ],
    ids=["at once", "mid-dialogue", "last line without newline"],
)
def test_the_end_of_input_ends_the_program(
    openmeteo: FakeOpenMeteo, typed: str, shown: str
) -> None:
    result = run_cli(input=typed)
    assert result.stdout == shown
    assert result.stderr == ""
    assert result.returncode == EXIT_INPUT_ENDED  # not 0: the dialogue was not finished


def test_the_end_of_input_cancels_the_flow_so_its_finally_runs(marker: Path) -> None:
    result = run_cli(
        "--flow", "tests.test_cli:CleanupFlow", env=cli_env(CLI_TEST_MARKER=str(marker))
    )
    assert (result.returncode, result.stdout, result.stderr) == (
        EXIT_INPUT_ENDED, "Your name: \n", ""
    )
    assert marker.read_text(encoding="utf-8") == "finally ran"


def test_ctrl_c_while_waiting_for_an_answer(openmeteo: FakeOpenMeteo) -> None:
    with Session() as session:
        session.expect("Name a city: ")
        session.send("London")
        session.expect(LONDON_CHOICES)
        session.process.send_signal(signal.SIGINT)
        assert session.wait() == 130
        assert session.stdout.endswith(LONDON_CHOICES + "\n")
        assert session.stderr == ""


def test_ctrl_c_cancels_the_flow_so_its_finally_runs(marker: Path) -> None:
    env = cli_env(CLI_TEST_MARKER=str(marker))
    with Session("--flow", "tests.test_cli:CleanupFlow", env=env) as session:
        session.expect("Your name: ")
        session.process.send_signal(signal.SIGINT)
        assert session.wait() == 130
        assert session.stderr == ""
    assert marker.read_text(encoding="utf-8") == "finally ran"


def test_ctrl_c_during_a_slow_request_exits_at_once(openmeteo: FakeOpenMeteo) -> None:
    openmeteo.fail("hang")
    with Session() as session:
        session.expect("Name a city: ")
        session.send("London")
        deadline = time.monotonic() + TIMEOUT
        while not openmeteo.requests and time.monotonic() < deadline:
            time.sleep(0.02)
        assert openmeteo.requests, "the program never asked the server"
        interrupted = time.monotonic()
        session.process.send_signal(signal.SIGINT)
        assert session.wait() == 130
        assert time.monotonic() - interrupted < 3.0
        assert_quiet(session.stderr)
        assert session.stdout == HELLO + "Name a city: London\n"


# -- failures -------------------------------------------------------------------


def test_a_failing_flow_is_told_in_one_line_each(tmp_path: Path) -> None:
    result = run_cli("--flow", "tests.test_cli:HalvingFlow", input="eight\n")
    assert result.stdout == f"A number: eight\n{Notice.FAILED.value}\n"
    assert result.returncode == 1
    assert_quiet(result.stderr)
    [line] = result.stderr.splitlines()
    assert "conversation terminal failed in state HalvingFlow" in line
    assert "ValueError: invalid literal for int()" in line
    assert "-v shows the traceback" in line


def test_verbose_logs_details_and_tracebacks_to_stderr() -> None:
    result = run_cli("-v", "--flow", "tests.test_cli:HalvingFlow", input="eight\n")
    assert result.stdout == f"A number: eight\n{Notice.FAILED.value}\n"
    assert "DEBUG" in result.stderr and "conversation terminal begins" in result.stderr
    assert "Traceback" in result.stderr  # asked for


def test_a_closed_stdout_ends_the_program_quietly(openmeteo: FakeOpenMeteo) -> None:
    process = subprocess.Popen(
        CLI,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=cli_env(),
    )
    try:
        assert process.stdout is not None and process.stdin is not None
        assert process.stderr is not None
        shown = b""
        deadline = time.monotonic() + TIMEOUT
        while b"Name a city: " not in shown and time.monotonic() < deadline:
            if select.select([process.stdout], [], [], 0.1)[0]:
                shown += os.read(process.stdout.fileno(), 4096)
        process.stdout.close()  # as `weather-cli | head -1` does
        process.stdin.write(b"London\n0\n")
        process.stdin.close()
        assert process.wait(TIMEOUT) == 1
        assert process.stderr.read() == b""
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()


# -- --state: a conversation that survives a restart -------------------------------


def test_with_state_ctrl_c_keeps_the_conversation_for_the_next_run(
    openmeteo: FakeOpenMeteo, tmp_path: Path
) -> None:
    state = str(tmp_path / "state.sqlite3")
    with Session("--state", state) as session:
        session.expect("Name a city: ")
        session.send("London")
        session.expect(LONDON_CHOICES)
        session.process.send_signal(signal.SIGINT)
        assert session.wait() == 130
        assert session.stderr == ""
    result = run_cli("--state", state, input="1\nquit\n")
    assert result.stdout.startswith(LONDON_CHOICES + "1\nFound London (Canada)")  # asked again
    assert result.stdout.endswith("quit\nTerminating\n")
    assert (result.returncode, result.stderr) == (0, "")
    assert len(openmeteo.requests_to("search")) == 1  # not searched again
    result = run_cli("--state", state, input="")  # that conversation is over
    remembered = "Name a city: \n0) London, Ontario, Canada\n> \n"  # the place looked up
    assert (result.returncode, result.stdout, result.stderr) == (
        EXIT_INPUT_ENDED, HELLO + remembered, ""
    )


def test_with_state_a_call_cut_off_by_ctrl_c_is_made_again(
    openmeteo: FakeOpenMeteo, tmp_path: Path
) -> None:
    state = str(tmp_path / "state.sqlite3")
    openmeteo.fail("hang")
    with Session("--state", state) as session:
        session.expect("Name a city: ")
        session.send("London")
        deadline = time.monotonic() + TIMEOUT
        while not openmeteo.requests and time.monotonic() < deadline:
            time.sleep(0.02)
        session.process.send_signal(signal.SIGINT)
        assert session.wait() == 130
    result = run_cli("--state", state, input="0\nquit\n")
    assert result.stdout.startswith(LONDON_CHOICES + "0\nFound London (United Kingdom)")
    assert result.returncode == 0
    assert [r.failure for r in openmeteo.requests_to("search")] == ["hang", None]


def test_with_state_the_end_of_input_ends_the_conversation(
    openmeteo: FakeOpenMeteo, tmp_path: Path
) -> None:
    state = str(tmp_path / "state.sqlite3")
    first = run_cli("--state", state, input="London\n")
    shown = HELLO + "Name a city: London\n" + LONDON_CHOICES + "\n"
    assert (first.returncode, first.stdout) == (EXIT_INPUT_ENDED, shown)
    again = run_cli("--state", state, input="")
    assert (again.returncode, again.stdout, again.stderr) == (
        EXIT_INPUT_ENDED, HELLO + "Name a city: \n", ""
    )


def test_an_unusable_state_file_is_one_line_and_status_2(tmp_path: Path) -> None:
    state = tmp_path / "state.sqlite3"
    state.write_bytes(b"this is not a database" * 100)
    result = run_cli("--state", str(state), input="London\n")
    assert (result.returncode, result.stdout) == (2, "")
    [line] = result.stderr.splitlines()
    assert line.startswith(f"{PROG}: error: {state}: ")


# -- options --------------------------------------------------------------------


def test_help_says_what_it_does() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert result.stderr == ""
    help_text = result.stdout
    assert " ".join(help_text.split("\n\n")[0].split()) == (
        f"usage: {PROG} [-h] [--flow MODULE:ATTR] [--state PATH] [-v] [--start PAYLOAD] "
        "[--pictures DIR]"
    )
    for words in [
        "Hold a conversation in the terminal",
        "name a city",  # the default flow's help
        "Open-Meteo",
        "--flow MODULE:ATTR",
        "flows.weather:WeatherFlow",
        "--state PATH",
        "--start PAYLOAD",
        "--pictures DIR",
        "(default: ./weather-pictures",
        "-v, --verbose",
        "OPEN_METEO_GEOCODING_URL",
        "OPEN_METEO_FORECAST_URL",
        "OPEN_METEO_TIMEOUT",
        "130 on Ctrl-C",
    ]:
        assert words in help_text


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("flows.weather", "--flow must look like MODULE:ATTR, got 'flows.weather'"),
        ("no_such_module:Flow", "cannot import flow module 'no_such_module'"),
        ("flows.weather:NoSuchFlow", "module 'flows.weather' has no attribute 'NoSuchFlow'"),
        ("os:getcwd", "cannot start flow os:getcwd: TypeError: a flow must be a State"),
    ],
)
def test_a_bad_flow_is_one_line_and_status_2(spec: str, reason: str) -> None:
    result = run_cli("--flow", spec, input="London\n")
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"{PROG}: error: {reason}")


def test_a_flow_in_the_current_directory_is_found_by_the_console_script(
    tmp_path: Path,
) -> None:
    """``weather-cli --flow myflow:Greet`` finds ./myflow.py, as the README says."""
    launcher = tmp_path / "bin" / "weather-cli"  # what pip writes for the entry point
    launcher.parent.mkdir()
    launcher.write_text(
        "import sys\nfrom frontends.cli import main\nsys.exit(main())\n", encoding="utf-8"
    )
    work = tmp_path / "work"
    work.mkdir()
    (work / "myflow.py").write_text(
        textwrap.dedent(
            """
            from engine import Input, Print, State

            class Greet(State):
                def run(self):
                    name = yield Input("Your name: ")
                    yield Print(f"Hello, {name}!")
            """
        ),
        encoding="utf-8",
    )
    result = subprocess.run(
        [sys.executable, str(launcher), "--flow", "myflow:Greet"],
        input="Ada\n",
        capture_output=True,
        text=True,
        cwd=work,
        env=cli_env(PYTHONPATH=str(ROOT)),
        timeout=TIMEOUT,
    )
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        "Your name: Ada\nHello, Ada!\n",
        "",
    )


# -- in process -------------------------------------------------------------------


def test_the_terminal_frontend_shows_questions_and_says_what_the_driver_needs() -> None:
    out = io.StringIO()
    frontend = TerminalFrontend(out)
    frontend.deliver("terminal", Print("Hello\nthere"))
    assert not frontend.asking
    frontend.ask("terminal", Input("Name a city: "))
    assert frontend.asking
    frontend.notify("terminal", Notice.TRY_AGAIN)
    frontend.notify("terminal", Notice.CANCELLED)
    frontend.notify("terminal", Notice.NOT_STARTED)
    frontend.restored("terminal", Choose("What next?", ["continue", "quit"]))
    frontend.ask("terminal", Input())
    assert out.getvalue() == (
        "Hello\nthere\nName a city: Try again\nWhat next?\n0) continue\n1) quit\n> > "
    )
    assert not frontend.failed and not frontend.finished
    frontend.notify("terminal", Notice.FAILED)
    frontend.ended("terminal")
    assert frontend.failed and frontend.finished and not frontend.asking


def test_an_output_that_cannot_be_written_is_noted_not_raised() -> None:
    out = io.StringIO()
    out.close()
    frontend = TerminalFrontend(out)
    frontend.deliver("terminal", Print("Hello"))
    assert frontend.gone is not None


def test_the_line_reader_waits_no_longer_than_told() -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "r", encoding="utf-8") as stream:
        reader = LineReader(stream)
        assert reader.readline(timeout=0) is None  # nothing yet: the timer goes first
        os.write(write_end, b"Ber")
        assert reader.readline(timeout=0) is None  # half a line
        os.write(write_end, b"lin\nPa")
        assert reader.readline(timeout=0) == "Berlin\n"
        os.close(write_end)
        assert reader.readline() == "Pa"  # the last line, without Enter
        assert reader.readline() == ""


def test_run_in_process_leaves_no_thread(openmeteo: FakeOpenMeteo) -> None:
    out = io.StringIO()
    status = run(WeatherFlow, io.StringIO("London\n4\nquit\n"), out, echo=True)
    assert status == 0
    assert out.getvalue().endswith(
        "> 4\nFound London (United States) at latitude 35.32897 and longitude -93.25296\n"
        "Current temperature is 15.6 °C\nOvercast, wind 4.8 km/h from the north\n"
        + WHAT_NEXT
        + "quit\nTerminating\n"
    )
    left = [t.name for t in threading.enumerate() if t.name.startswith("engine-")]
    assert not left


@dataclass(frozen=True)
class Greeter(State):
    """Greets name after name."""

    def run(self) -> Steps:
        name = yield Input("Name: ")
        yield Print(f"Hello, {name}!")
        return Greeter()


class FailingDisk(SqliteJournal):
    """A state file whose disk fills up once the conversation has begun."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.commits = 0

    def commit(self, source: int | None) -> None:
        self.commits += 1
        if self.commits > 2:
            raise JournalError(f"{self.path}: cannot write the state file (disk is full)")
        super().commit(source)


def test_a_state_file_that_fails_while_running_ends_the_program_with_status_1(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = FailingDisk(tmp_path / "state.sqlite3")
    out = io.StringIO()
    try:
        status = run(Greeter, io.StringIO("Ann\nBob\n"), out, journal=journal)
    finally:
        journal.close()
    assert status == 1
    assert any("disk is full" in r.getMessage() for r in caplog.records)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("engine-")]


# -- who, typed coordinates, pictures -------------------------------------------------


def user_env(**extra: str) -> dict[str, str]:
    """The environment, as a user "alice" with a British English locale."""
    env = cli_env(LOGNAME="alice", LANG="en_GB.UTF-8", **extra)
    env.pop("LC_ALL", None)
    env.pop("LC_MESSAGES", None)
    return env


def test_the_flow_meets_the_local_user_takes_coordinates_and_saves_a_picture(
    tmp_path: Path,
) -> None:
    pictures = tmp_path / "charts"
    result = run_cli(
        "--flow",
        "tests.support.flows:Visitor",
        "--start",
        "berlin",
        "--pictures",
        str(pictures),
        input="51.5, -0.12\n",
        env=user_env(),
    )
    saved = pictures / "picture-1.png"
    assert result.stdout == (
        "Hello alice\n"
        "language en-GB, private, start berlin\n"
        "Where?51.5, -0.12\n"
        "You said point 51.5, -0.12\n"
        f"Picture saved to {saved}: Map of point 51.5, -0.12\n"
    )
    assert saved.read_bytes() == tiny_png()
    assert_quiet(result.stderr)
    assert result.returncode == 0


def test_memory_kept_in_the_state_file_between_runs(tmp_path: Path) -> None:
    state = str(tmp_path / "state.sqlite3")
    options = ["--flow", "tests.support.flows:Visitor", "--state", state]
    options += ["--pictures", str(tmp_path)]
    first = run_cli(*options, input="Paris\n", env=user_env())
    assert first.returncode == 0, first.stderr
    second = run_cli(*options, input="-33.9 151.2\n", env=user_env())
    assert second.stdout.splitlines()[:5] == [
        "Hello alice",
        "language en-GB, private, start None",
        "Last time: Paris",
        "Where?-33.9 151.2",
        "You said point -33.9, 151.2",
    ]
    assert second.stdout.endswith(f"Picture saved to {tmp_path / 'picture-2.png'}: "
                                  "Map of point -33.9, 151.2\n")
    assert second.returncode == 0


def test_a_location_question_hints_until_coordinates_come(tmp_path: Path) -> None:
    result = run_cli(
        "--flow",
        "tests.support.flows:Pin",
        "--pictures",
        str(tmp_path),
        input="Paris\n91, 0\n48.85, 2.35\n",
    )
    assert result.stdout == (
        "Share a locationParis\n"
        f"{Notice.SEND_LOCATION.value}\n"
        "Share a location91, 0\n"
        f"{Notice.NOT_ON_EARTH.value}\n"
        "Share a location48.85, 2.35\n"
        "Pinned 48.85 2.35\n"
        f"Picture saved to {tmp_path / 'picture-1.png'}\n"
    )
    assert result.returncode == 0


def test_a_picture_that_cannot_be_saved_is_said_in_one_line(tmp_path: Path) -> None:
    in_the_way = tmp_path / "file"
    in_the_way.write_text("not a directory", encoding="utf-8")
    result = run_cli(
        "--flow",
        "tests.support.flows:Pin",
        "--pictures",
        str(in_the_way),
        input="1, 2\n",
    )
    assert result.stdout.splitlines()[-1] == (
        f"Could not save a picture in {in_the_way}: File exists"
    )
    assert_quiet(result.stderr)
    assert result.returncode == 0


# -- timers and the output failing -------------------------------------------------------


def test_a_question_times_out_while_the_terminal_waits_for_a_line() -> None:
    with Session("--flow", "tests.support.flows:Hurry") as session:
        session.expect("Your name? Still there?\nYour name? ")  # nothing typed: reminded
        session.expect("Hello, stranger\n")  # then the default, after the nap
        assert session.wait() == 0
        assert session.stderr == ""


def test_an_answer_before_the_deadline_is_taken() -> None:
    result = run_cli("--flow", "tests.support.flows:Hurry", input="Ada\n")
    assert (result.returncode, result.stdout) == (0, "Your name? Ada\nHello, Ada\n")


def test_a_full_disk_on_the_output_ends_with_status_1_and_one_line() -> None:
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [*CLI, "--flow", "tests.support.flows:Echo"],
            stdout=full, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=cli_env(),
            timeout=TIMEOUT, input="hi\n",
        )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{PROG}: ERROR: frontends.cli: cannot write to the output: No space left on device"
    ]


def test_a_closed_output_at_start_ends_with_status_1_and_one_line() -> None:
    result = subprocess.run(
        [*CLI], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, cwd=ROOT, env=cli_env(), timeout=TIMEOUT, input="",
        preexec_fn=lambda: os.close(1),
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr == f"{PROG}: error: the standard output is closed\n"


# -- the weather flow's coordinates, forecast chart and start payload ---------------------


def test_typed_coordinates_give_the_weather_there(openmeteo: FakeOpenMeteo) -> None:
    openmeteo.set_forecast(48.2085, 16.3721, temperature=7.5, weather_code=0, wind_speed=0)
    result = run_cli(input="48.2085, 16.3721\nquit\n")
    assert result.stdout == (
        HELLO + "Name a city: 48.2085, 16.3721\n"
        "Your location is at latitude 48.2085 and longitude 16.3721\n"
        "Current temperature is 7.5 °C\n"
        "Clear sky, no wind\n" + WHAT_NEXT + "quit\n"
        "Terminating\n"
    )
    assert (result.returncode, result.stderr) == (0, "")


def test_forecast_prints_seven_days_and_saves_the_chart(
    openmeteo: FakeOpenMeteo, tmp_path: Path
) -> None:
    openmeteo.add_place("Enschede", 52.21833, 6.89583, country="Netherlands")
    openmeteo.set_forecast(
        52.21833, 6.89583, series=load_fixture("forecast_hourly_daily_horizon_nulls")
    )
    pictures = tmp_path / "charts"
    result = run_cli("--pictures", str(pictures), input="Enschede\nforecast\nquit\n")
    saved = pictures / "picture-1.png"
    assert (
        "forecast\n"
        "The next 7 days in Enschede:\n"
        "Sat 17 Oct: high 18 °C, Clear sky\n"
        "Sun 18 Oct: no forecast yet\n"
        f"Picture saved to {saved}: The next 48 hours in Enschede\n" + WHAT_NEXT + "quit\n"
    ) in result.stdout
    assert saved.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert (result.returncode, result.stderr) == (0, "")


def test_the_start_payload_is_the_city(openmeteo: FakeOpenMeteo) -> None:
    openmeteo.add_place("New York", 40.71427, -74.00597, country="United States")
    result = run_cli("--start", "new_york", input="quit\n")
    assert result.stdout.startswith(
        HELLO + "Found New York (United States) at latitude 40.71427 and longitude -74.00597\n"
    )
    assert [r.params.get("name") for r in openmeteo.requests_to("search")] == ["new york"]
    assert (result.returncode, result.stderr) == (0, "")
