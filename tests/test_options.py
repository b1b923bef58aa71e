"""Options are validated when a machine is made, with messages that name what was wrong."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from runmachine import DriverOptions, OptionError, RunMachine


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tool_concurrency": 0}, r"tool_concurrency must be an int >= 1, got 0"),
        ({"tool_concurrency": "lots"}, r"tool_concurrency must be an int >= 1, got str 'lots'"),
        ({"tool_concurrency": True}, r"tool_concurrency must be an int >= 1, got bool True"),
        ({"max_rounds": "many"}, r"max_rounds must be an int >= 1, got str 'many'"),
        ({"max_identical_rounds": 0}, r"max_identical_rounds must be an int >= 1"),
        ({"submit_attempts": -1}, r"submit_attempts must be an int >= 1, got -1"),
        ({"deadline_margin": -1.0}, r"deadline_margin must be a finite number of seconds >= 0"),
        ({"deadline_margin": float("nan")}, r"deadline_margin must be a finite number"),
        ({"poll_interval": 0}, r"poll_interval must be a finite number of seconds > 0, got 0"),
        ({"cancel_timeout": float("inf")}, r"cancel_timeout must be a finite number"),
        ({"stream": "yes"}, r"stream must be True or False, got str 'yes'"),
        (
            {"poll_interval": 5.0, "max_poll_interval": 1.0},
            r"max_poll_interval \(1.0\) must be at least poll_interval \(5.0\)",
        ),
    ],
)
def test_a_bad_option_is_refused_at_construction(options: dict[str, Any], message: str) -> None:
    with pytest.raises(OptionError, match=rf"^RunMachine\(\): {message}"):
        RunMachine(**options)
    with pytest.raises(OptionError, match=message):
        DriverOptions(**options)


def test_an_option_error_is_a_type_and_a_value_error() -> None:
    with pytest.raises(TypeError):
        RunMachine(tool_concurrency="lots")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tool_concurrency"):
        RunMachine(tool_concurrency=0)


class Raiser(RunMachine):
    pass


def test_an_unknown_option_names_the_closest_one_and_lists_them_all() -> None:
    with pytest.raises(OptionError) as info:
        Raiser(max_round=3)  # type: ignore[call-arg]
    message = str(info.value)
    assert message.startswith(
        "Raiser() got an unknown option 'max_round' (did you mean 'max_rounds'?)"
    )
    assert "tool_concurrency" in message and "cancel_timeout" in message
    assert "DriverOptions" not in message


def test_a_sync_client_is_refused_at_construction() -> None:
    client = openai.OpenAI(api_key="k", base_url="http://127.0.0.1:9/v1")
    try:
        with pytest.raises(
            OptionError,
            match=r"RunMachine needs an AsyncOpenAI or AsyncAzureOpenAI client, got openai"
            r".*OpenAI \(use openai.AsyncOpenAI",
        ):
            RunMachine(client)  # type: ignore[arg-type]
    finally:
        client.close()


def test_a_ledger_that_is_not_one_is_refused() -> None:
    with pytest.raises(OptionError, match=r"ledger=.*must implement runmachine.Ledger, got dict"):
        RunMachine(ledger={})  # type: ignore[arg-type]


def test_a_tool_method_may_not_replace_the_machines_own_api() -> None:
    from runmachine import tool

    with pytest.raises(TypeError, match=r"Shop.run is a @tool, but 'run' is part of RunMachine"):

        class Shop(RunMachine):
            @tool
            def run(self) -> str:  # type: ignore[override]
                return "x"


def test_internal_names_do_not_collide_with_a_users_attributes() -> None:
    class Busy(RunMachine):
        def __init__(self) -> None:
            super().__init__()
            self.core_state = "mine"
            self.driving = "mine"
            self.backend = "mine"

    machine = Busy()
    assert machine.state == "pending"
    assert (machine.core_state, machine.driving, machine.backend) == ("mine",) * 3
