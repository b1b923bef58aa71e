"""``python many.py BACKEND LEDGER N``: drive N concurrent runs that record into one ledger file.

Used by the test in which two such processes share a file; prints each run id it drove.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import openai

from runmachine import SQLiteLedger

sys.path.insert(0, str(Path(__file__).parent))

from shop import Counter


async def main(path: str, n: int) -> None:
    ledger = SQLiteLedger(path)
    async with openai.AsyncOpenAI(max_retries=2) as client:

        async def one(i: int) -> None:
            assistant = await client.beta.assistants.create(
                model="gpt-4o",
                tools=Counter.tool_definitions(),  # type: ignore[arg-type]
            )
            # This process cannot script the emulator: the toy model plans the round (one
            # parallel call of each tool named) from the user's words.
            thread = await client.beta.threads.create(
                messages=[{"role": "user", "content": f"call add and note for item {i}"}]
            )
            machine = Counter(client, ledger=ledger)
            result = await machine.run(thread_id=thread.id, assistant_id=assistant.id)
            assert result.status == "completed", result
            print(result.run_id, flush=True)

        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i)
    ledger.close()


if __name__ == "__main__":
    _, backend, path, n = sys.argv
    anyio.run(main, path, int(n), backend=backend)
