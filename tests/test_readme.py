"""The README's examples run as written."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

from engine import Input, Print, User
from engine.testing import FlowTest, check_transcript
from tests.support.flows import tiny_png

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def _run_block(source: str, name: str) -> dict[str, object]:
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(compile(source, f"README:{name}", "exec"), module.__dict__)
    return module.__dict__


def test_the_flow_example_runs_and_recovers_from_bad_input() -> None:
    flow_example = next(block for block in _python_blocks() if "class AskPlace" in block)
    names = _run_block(flow_example, "myflow")
    flow = FlowTest(names["AskPlace"]())  # type: ignore[operator]
    assert flow.command == Input("Latitude and longitude: ")
    flow.answer("somewhere")
    flow.expect(Print("Please write them as 51.5, -0.12"))
    flow.answer("51.5, -0.12")
    weather = sys.modules["flows.openmeteo"].Weather(temperature=12.5)  # type: ignore[attr-defined]
    flow.returns(weather)
    flow.expect(Print("Current temperature is 12.5 °C"))
    flow.answer("quit")
    assert flow.finished


def test_the_example_with_who_a_location_memory_and_a_picture_runs() -> None:
    example = next(block for block in _python_blocks() if "class Greet" in block)
    names = _run_block(example, "greet")
    png = tiny_png()
    test = check_transcript(
        names["Greet"](),  # type: ignore[operator]
        f"""
        bot: Hello Ann!
        bot: Last time: Rome
        bot: Name a city or share a location:
        you: 48.8566, 2.3522
        remember: {{'places': ['48.86, 2.35', 'Rome']}}
        call: draw_chart('48.86, 2.35')
        picture: Weather at 48.86, 2.35 ({len(png)} bytes)
        """,
        calls={"draw_chart": lambda place: png},
        user=User("7", "Ann"),
        memory={"places": ["Rome"]},
    )
    assert test.memory == {"places": ["48.86, 2.35", "Rome"]}
    check_transcript(
        names["Greet"](),  # type: ignore[operator]
        """
        bot: Hello Ann!
        remember: {'places': ['berlin']}
        call: draw_chart
        picture: Weather at berlin (69 bytes)
        """,
        calls={"draw_chart": lambda place: png},
        user=User("7", "Ann", start="berlin"),
    )


def test_the_testing_examples_pass() -> None:
    test_blocks = [block for block in _python_blocks() if "def test_" in block]
    assert len(test_blocks) == 2
    for number, block in enumerate(test_blocks):
        names = _run_block(block, f"readme_test_{number}")
        tests = [value for key, value in names.items() if key.startswith("test_")]
        assert tests
        for test in tests:
            test()  # type: ignore[operator]


def test_the_first_lines_are_the_two_commands() -> None:
    first_block = re.search(r"```sh\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert first_block is not None
    commands = first_block.group(1).strip().splitlines()
    assert len(commands) == 2
    assert commands[0].endswith("weather-cli")
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert commands[1] in ci, "CI must run the README's test command"


def test_the_reminder_example_reminds_then_ends() -> None:
    example = next(block for block in _python_blocks() if "class AskName" in block)
    names = _run_block(example, "reminder")
    flow = FlowTest(names["AskName"]())  # type: ignore[operator]
    assert flow.command == Input("What is your name?", timeout=600)
    flow.times_out()
    flow.expect(Print("Still there? I would like to know your name."))
    flow.times_out()
    flow.expect(Print("No answer, so I stopped here. Goodbye!"))
    assert flow.finished
    flow.check_replay()
    answered = FlowTest(names["AskName"]())  # type: ignore[operator]
    answered.answer("Ann")
    answered.expect(Print("Hello, Ann!"))
    assert answered.finished
