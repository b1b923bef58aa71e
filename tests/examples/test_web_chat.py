"""The web chat example in headless Chromium: a tool-calling run as the page shows it.

``examples/web_chat/app.py`` runs in a subprocess exactly as a user starts it (embedded emulator,
``--port 0``); Selenium drives Debian's ``chromium`` through its ``chromedriver``. The test waits
for the page to say the run is over (polling the DOM), then asserts on what the page shows: the
assistant's text, the tool calls with their outputs, the lit final state, and the order in which
the page showed them. A screenshot is saved next to the test's temporary files.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

APP = Path(__file__).resolve().parents[2] / "examples" / "web_chat" / "app.py"
MESSAGE = "call get_current_temperature and get_rain_probability for Paris, then slow_forecast."
STARTUP_TIMEOUT = 60.0
RUN_TIMEOUT = 120.0


def _executable(name: str, *candidates: str) -> str:
    for candidate in (*candidates, shutil.which(name)):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(
        f"{name} is not installed: the browser test needs Debian's chromium and chromium-driver "
        "packages (apt-get install chromium chromium-driver)"
    )


@pytest.fixture
def app_url() -> Iterator[str]:
    """The example app, started as a user starts it; its address from its first line."""
    process = subprocess.Popen(
        [sys.executable, str(APP), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        try:
            first = lines.get(timeout=STARTUP_TIMEOUT)
        except queue.Empty:
            pytest.fail("the web chat app printed nothing")
        assert first.startswith("web chat at http://127.0.0.1:"), first
        yield first.split()[3]
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(timeout=15)
        assert process.stdout is not None
        process.stdout.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _executable("chromium", "/usr/bin/chromium")
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(argument)
    service = Service(executable_path=_executable("chromedriver", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_page_shows_a_tool_calling_run(app_url: str, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(app_url)
    assert browser.find_element(By.ID, "state_pending").get_attribute("class") == "node lit"
    field = browser.find_element(By.ID, "input")
    # A hint, not a value: typed text is the whole message, never appended to a pre-filled one.
    assert field.get_attribute("value") == ""
    assert "get_current_temperature" in (field.get_attribute("placeholder") or "")
    field.send_keys(MESSAGE)
    browser.find_element(By.ID, "send").click()

    def finished(driver: Any) -> str | None:
        status = driver.find_element(By.TAG_NAME, "body").get_attribute("data-status")
        return status if status in ("completed", "error") else None

    status = WebDriverWait(browser, RUN_TIMEOUT, poll_frequency=0.2).until(finished)
    browser.save_screenshot(str(tmp_path / "web_chat.png"))
    errors = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".msg.error")]
    assert status == "completed", errors

    # The assistant's text: the emulator's model quotes every tool output.
    bubbles = browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")
    assert [b.text for b in bubbles] == [
        'get_current_temperature returned "18 degrees C in Paris". '
        'get_rain_probability returned "0.2". '
        'slow_forecast returned "dry all week in Paris".'
    ]
    assert browser.find_element(By.CSS_SELECTOR, ".msg.user").text == MESSAGE

    # The tool calls, with their arguments and outputs.
    cards = browser.find_elements(By.CSS_SELECTOR, "#tools .tool")
    shown = [
        (
            card.find_element(By.CLASS_NAME, "name").text,
            card.find_element(By.CLASS_NAME, "arguments").text,
            card.find_element(By.CLASS_NAME, "output").text,
            card.get_attribute("class"),
        )
        for card in cards
    ]
    assert shown == [
        (
            "get_current_temperature",
            '{"location": "Paris"}',
            "→ 18 degrees C in Paris",
            "tool done",
        ),
        ("get_rain_probability", '{"location": "Paris"}', "→ 0.2", "tool done"),
        ("slow_forecast", '{"location": "Paris"}', "→ dry all week in Paris", "tool done"),
    ]

    # The diagram: completed lit, and nothing else.
    lit = browser.find_elements(By.CSS_SELECTOR, "#diagram g.node.lit")
    assert [node.get_attribute("id") for node in lit] == ["state_completed"]
    assert browser.find_element(By.ID, "state").get_attribute("textContent") == "completed"
    log = browser.find_element(By.ID, "transitions").text.splitlines()
    assert log[0] == "pending → queued (thread.run.created)"
    assert log.count("requires_action → submitting (submit_tool_outputs)") == 2
    assert log[-1] == "in_progress → completed (thread.run.completed)"

    # The order the page showed things in: each tool running before its output, while the run
    # waited in requires_action; the text in many pieces; completed last.
    order: list[str] = browser.execute_script("return window.shown")
    for name in ("get_current_temperature", "get_rain_probability", "slow_forecast"):
        running = order.index(f"tool {name} running")
        done = order.index(f"tool {name} done")
        assert running < order.index("lit requires_action", running) < done
    slow_running = order.index("tool slow_forecast running")
    assert "lit submitting" in order[slow_running : order.index("tool slow_forecast done")]
    assert order.count("text") > 10
    assert order.index("text") > order.index("tool slow_forecast done")
    assert order[-1] == "lit completed"
    assert (tmp_path / "web_chat.png").stat().st_size > 10_000
