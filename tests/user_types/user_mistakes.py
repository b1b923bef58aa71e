"""A user's program with mistakes ``mypy --strict`` must reject, each on its marked line."""

from __future__ import annotations

import openai

from runmachine import RunMachine


def build(client: openai.AsyncOpenAI) -> None:
    RunMachine(client, tool_concurency=4)  # error: misspelled option
    RunMachine(client, max_rounds="many")  # error: wrong type
    machine = RunMachine(client)
    print(machine.stat)  # error: misspelled attribute


async def answer(machine: RunMachine) -> None:
    await machine.resume(session_id="s", turn_id="t", approvals={"a": "maybe"})  # error: decision
    await machine.resume(run_id="r", turn_id="t")  # error: a run and a turn at once
