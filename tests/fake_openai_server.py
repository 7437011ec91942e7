"""A loopback HTTP server that speaks the OpenAI chat completions API and injects faults.

Runs in a thread of the test process (``ThreadingHTTPServer``), so a client under test can be
run in-process or as a subprocess that the test kills. What each request gets is decided by a
``script`` callable; :class:`FaultPlan` is the script used by the annotation tests: it finds the
item in the prompt, looks up the scripted fault for that item, and otherwise answers with the
item's correct relations. Every request is logged (item, time, what was sent back).
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cattune.annotate.prompt import ITEM_MARKER


@dataclass
class Action:
    """What the server does with one request.

    kind: ``reply`` (200 with ``content``), ``slow`` (sleep ``delay`` then reply: the client has
    timed out by then), ``status`` (``status`` with ``headers``), ``bad_body`` (200 with truncated
    JSON), ``reset`` (TCP reset, no response).
    """

    kind: str
    content: str = ""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class LoggedRequest:
    item: int | None
    time: float
    action: str
    authorization: str
    conversation_turns: int
    usage: tuple[int, int] | None = None  # tokens of a reply the client can receive


def item_text(messages: list[dict[str, Any]]) -> str | None:
    """The text of the item being annotated: what follows the marker in the last user turn that has it."""
    for message in reversed(messages):
        if message.get("role") == "user" and ITEM_MARKER in message.get("content", ""):
            return message["content"].split(ITEM_MARKER, 1)[1]
    return None


class FakeOpenAIServer:
    """``with FakeOpenAIServer(script) as server: ... server.url ...``"""

    def __init__(self, script: Callable[[list[dict[str, Any]], int | None, int], Action],
                 identify: Callable[[list[dict[str, Any]]], int | None]):
        self.script = script
        self.identify = identify
        self.log: list[LoggedRequest] = []
        self._lock = threading.Lock()
        self._attempts: dict[int | None, int] = {}
        self._httpd: ThreadingHTTPServer | None = None
        self.in_flight = 0
        self.peak_in_flight = 0

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def requests_for(self, item: int) -> list[LoggedRequest]:
        with self._lock:
            return [r for r in self.log if r.item == item]

    def __enter__(self) -> FakeOpenAIServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like real endpoints

            def log_message(self, *args: Any) -> None:
                pass

            def finish(self) -> None:
                try:
                    super().finish()
                except (OSError, ValueError):
                    pass  # the connection was reset on purpose or by the client

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                with server._lock:
                    server.in_flight += 1
                    server.peak_in_flight = max(server.peak_in_flight, server.in_flight)
                try:
                    self._answer()
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                try:
                    request = json.loads(self.rfile.read(length))
                except (OSError, ValueError):
                    self.close_connection = True  # a client killed while sending its request
                    return
                messages = request["messages"]
                item = server.identify(messages)
                with server._lock:
                    attempt = server._attempts.get(item, 0)
                    server._attempts[item] = attempt + 1
                action = server.script(messages, item, attempt)
                entry = LoggedRequest(item, time.monotonic(), action.kind, self.headers.get("Authorization", ""),
                                      len(messages))
                if action.kind in ("reply", "slow"):
                    prompt_tokens = sum(len(m["content"]) for m in messages) // 4
                    completion_tokens = max(1, len(action.content) // 4)
                    if action.kind == "reply":
                        entry.usage = (prompt_tokens, completion_tokens)
                with server._lock:
                    server.log.append(entry)
                try:
                    if action.kind == "reset":
                        # Linger 0 makes close() send a TCP RST instead of a FIN.
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        self.connection.close()
                        self.close_connection = True
                    elif action.kind == "status":
                        body = json.dumps({"error": {"message": f"injected {action.status}", "type": "fault"}}).encode()
                        self._send(action.status, body, action.headers)
                    elif action.kind == "bad_body":
                        self._send(200, b'{"id": "chatcmpl-x", "object": "chat.completion", "choices": [{"ind')
                    else:
                        if action.kind == "slow":
                            time.sleep(action.delay)
                        body = json.dumps({
                            "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": request["model"],
                            "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": action.content}}],
                            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                      "total_tokens": prompt_tokens + completion_tokens},
                        }).encode()
                        self._send(200, body)
                except OSError:
                    self.close_connection = True  # the client gave up on a slow reply

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # resets and killed clients are part of the test, not errors

        httpd = Server(("127.0.0.1", 0), Handler, bind_and_activate=False)
        httpd.daemon_threads = True
        httpd.request_queue_size = 128  # 16 clients connecting at once must not overflow the backlog
        httpd.server_bind()
        httpd.server_activate()
        self._httpd = httpd
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._httpd is not None
        self._httpd.shutdown()
        self._httpd.server_close()


# ---- the dataset and fault plan used by the annotation tests ---------------------------------

NAMES = ["Ann", "Bob", "Cleo", "Dev", "Eve", "Finn", "Gus", "Hana"]

# Buckets of item index % 40 and the fault each gets; every other bucket is answered cleanly.
FAULTS = {
    0: "slow_first", 1: "slow_first",
    2: "429_retry_after_s", 3: "429_retry_after_ms",
    4: "500_twice", 5: "500_twice",
    6: "500_always",
    7: "bad_body_first", 8: "bad_body_first",
    9: "reset_first", 10: "reset_first",
    11: "bad_json_until_feedback", 12: "bad_json_until_feedback",
    13: "bad_json_always",
    14: "some_spans_wrong", 15: "some_spans_wrong",
    16: "all_spans_wrong",
    17: "fenced_with_prose",
}
EXPECTED_FAILURE_KIND = {"500_always": "transport", "bad_json_always": "reply", "all_spans_wrong": "reply"}


def fault_of(index: int) -> str:
    return FAULTS.get(index % 40, "clean")


def make_item(index: int) -> dict[str, Any]:
    name = NAMES[index % len(NAMES)]
    a, b = 3 + index % 17, 2 + index % 11
    return {
        "id": f"item-{index}",
        "meta": {"fault": fault_of(index), "n": [a, b]},
        "input": f"Item {index}: {name} has {a} apples. {name} buys {b} more apples. "
                 f"How many apples does {name} have now? Answer: ",
        "target": a + b,  # an integer target, as in STG_H: must be written back as an integer
    }


def good_relations(item: dict[str, Any]) -> list[dict[str, list[str]]]:
    a, b = item["meta"]["n"]
    name = item["input"].split(": ", 1)[1].split(" ", 1)[0]
    return [{"How many apples": [f"{name} has", "buys"]}, {str(a + b): [f"{a} apples", f"{b} more apples", "How many apples"]}]


class FaultPlan:
    """The script for :class:`FakeOpenAIServer` over the items made by :func:`make_item`.

    Outcomes depend only on the item and the conversation, not on how many requests an item had
    before (attempt counts carry across a killed and a resumed run), so an interrupted run and an
    uninterrupted one must end with the same annotations.
    """

    def __init__(self, items: list[dict[str, Any]], *, slow_delay: float = 0.6):
        self.by_text = {item["input"] + str(item["target"]): index for index, item in enumerate(items)}
        self.items = items
        self.slow_delay = slow_delay

    def identify(self, messages: list[dict[str, Any]]) -> int | None:
        text = item_text(messages)
        return self.by_text.get(text) if text is not None else None

    def __call__(self, messages: list[dict[str, Any]], item: int | None, attempt: int) -> Action:
        if item is None:
            return Action("status", status=400)
        fault = fault_of(item)
        relations = good_relations(self.items[item])
        good = json.dumps({"important": relations})
        got_feedback = messages[-1]["content"].startswith("Your reply could not be used")
        if fault == "slow_first" and attempt == 0:
            return Action("slow", content=good, delay=self.slow_delay)
        if fault == "429_retry_after_s" and attempt == 0:
            return Action("status", status=429, headers={"Retry-After": "1"})
        if fault == "429_retry_after_ms" and attempt == 0:
            return Action("status", status=429, headers={"retry-after-ms": "150"})
        if (fault == "500_twice" and attempt < 2) or fault == "500_always":
            return Action("status", status=500)
        if fault == "bad_body_first" and attempt == 0:
            return Action("bad_body")
        if fault == "reset_first" and attempt == 0:
            return Action("reset")
        if fault == "bad_json_always" or (fault == "bad_json_until_feedback" and not got_feedback):
            return Action("reply", content="Sure! The relations are: {important: [{How many apples: [has]}")
        if fault == "some_spans_wrong":
            a, _ = self.items[item]["meta"]["n"]
            wrong = relations + [{"oranges": ["has"]}, {f"{a} apples": ["How many apples", "pears"]}]
            return Action("reply", content=json.dumps({"important": wrong}))
        if fault == "all_spans_wrong":
            return Action("reply", content=json.dumps({"important": [{"bananas": ["pears"]}, {"Item": ["now"]}]}))
        if fault == "fenced_with_prose":
            return Action("reply", content=f"Here is the annotation:\n```json\n{good}\n```\nHope this helps.")
        return Action("reply", content=good)


EXAMPLES_YAML = """\
task: answering arithmetic word problems
examples:
  - input: "Item X: Zoe has 4 pears. Zoe buys 5 more pears. How many pears does Zoe have now? Answer: "
    target: "9"
    important:
      - {"How many pears": ["Zoe has", "buys"]}
      - {"9": ["4 pears", "5 more pears", "How many pears"]}
"""
