"""A stand-in for the Anthropic Messages API that real Claude Code can talk to offline.

It is a real HTTP server (stdlib only) that answers `POST /v1/messages` with streamed
server-sent events (message_start, content_block_start, content_block_delta with
text_delta / input_json_delta, content_block_stop, message_delta, message_stop), or with
one JSON message when the request did not ask for a stream. What it answers is scripted
per conversation: the prompt names a script with a `[[script:NAME]]` tag, and the reply
to the agent's n-th request in that conversation is step n of the script (n = number of
assistant turns already in the request's history). Requests without tools (Claude Code's
side calls, such as titles or quota checks) get a short text reply and never advance a
script.

Every request is recorded (method, path, headers, JSON body) so tests can assert which
credential the agent sent and that tool results came back.

Steps (plain dicts, so the CLI can read them from JSON):
    {"tool_uses": [{"name": "Read", "input": {...}}, ...]}   one turn calling tools
    {"text": "final answer"}                                   the final turn (end_turn)
    {"repeat": {"name": "Bash", "input": {...}}}               call this tool on every
                                                               turn from here on (busy agent)
String values in tool inputs and texts may contain `{{find:REGEX}}`: replaced by group 1
of the first match of REGEX in the tool results the request carries (so the scripted
model can only "know" what a tool really returned).
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import re
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SCRIPT_TAG = re.compile(r"\[\[script:([A-Za-z0-9_.-]+)\]\]")
FIND_TEMPLATE = re.compile(r"\{\{find:(.+?)\}\}")
CLONE_NEWNET = 0x40000000
MODEL_NAME = "standin-model"

Step = dict[str, Any]


def _text_of(content: Any) -> str:
    """All text inside a message content value (string or list of blocks, nested)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(_text_of(item) for item in content)
    if isinstance(content, dict):
        if content.get("type") == "text":
            return str(content.get("text", ""))
        if content.get("type") == "tool_result":
            return _text_of(content.get("content", ""))
    return ""


def tool_results(body: dict) -> list[dict]:
    """The tool_result blocks a request carries, in order."""
    found = []
    for message in body.get("messages", []):
        content = message.get("content")
        if message.get("role") == "user" and isinstance(content, list):
            found.extend(
                b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"
            )
    return found


def _fill(value: Any, results_text: str) -> Any:
    """Replace {{find:REGEX}} templates in every string of a tool input."""
    if isinstance(value, str):

        def one(match: re.Match) -> str:
            hit = re.search(match.group(1), results_text)
            return hit.group(1) if hit else "<not found>"

        return FIND_TEMPLATE.sub(one, value)
    if isinstance(value, dict):
        return {k: _fill(v, results_text) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, results_text) for v in value]
    return value


class StandinModel:
    """The scripted model and the record of what it was asked."""

    def __init__(self, scripts: dict[str, list[Step]] | None = None) -> None:
        self.scripts: dict[str, list[Step]] = dict(scripts or {})
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def record(self, entry: dict) -> None:
        with self._lock:
            self.requests.append(entry)

    def message_requests(self) -> list[dict]:
        """Recorded POST /v1/messages requests that belong to a scripted conversation."""
        with self._lock:
            return [
                r for r in self.requests if r["path"].startswith("/v1/messages") and r.get("script")
            ]

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):06d}"

    def reply_blocks(self, body: dict) -> tuple[str | None, list[dict], str]:
        """(script name, content blocks, stop_reason) for one Messages request."""
        messages = body.get("messages", [])
        first_user = next((m for m in messages if m.get("role") == "user"), {})
        tag = SCRIPT_TAG.search(_text_of(first_user.get("content", "")))
        if not body.get("tools") or tag is None:
            return None, [{"type": "text", "text": "ok"}], "end_turn"
        name = tag.group(1)
        script = self.scripts.get(name)
        if script is None:
            return name, [{"type": "text", "text": f"standin: no script named {name}"}], "end_turn"
        turn = sum(1 for m in messages if m.get("role") == "assistant")
        step = self._step_at(script, turn)
        results_text = "\n".join(_text_of(r.get("content", "")) for r in tool_results(body))
        if "text" in step:
            return name, [{"type": "text", "text": _fill(step["text"], results_text)}], "end_turn"
        uses = step["tool_uses"] if "tool_uses" in step else [step["repeat"]]
        blocks = [
            {
                "type": "tool_use",
                "id": self.new_id("toolu_standin"),
                "name": use["name"],
                "input": _fill(use["input"], results_text),
            }
            for use in uses
        ]
        return name, blocks, "tool_use"

    @staticmethod
    def _step_at(script: list[Step], turn: int) -> Step:
        for index, step in enumerate(script):
            if "repeat" in step and turn >= index:
                return step
            if index == turn:
                return step
        return {"text": "standin: script finished"}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _record(self, raw: bytes) -> dict:
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        entry = {
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body,
        }
        self.server.model.record(entry)
        return entry

    def _json(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._record(b"")
        self._answer_other()

    def do_HEAD(self) -> None:
        self._record(b"")
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        entry = self._record(self._read_body())
        path = self.path.split("?", 1)[0]
        body = entry["body"] if isinstance(entry["body"], dict) else {}
        if path == "/v1/messages/count_tokens":
            self._json(200, {"input_tokens": max(1, len(json.dumps(body)) // 4)})
        elif path == "/v1/messages":
            self._answer_messages(entry, body)
        else:
            self._answer_other()

    def _answer_other(self) -> None:
        # Claude Code probes a few account/feature endpoints at start; a plain 404 makes it
        # carry on with defaults, which is what the real API does for an API-key user.
        self._json(
            404,
            {"type": "error", "error": {"type": "not_found_error", "message": "standin: not here"}},
        )

    def _answer_messages(self, entry: dict, body: dict) -> None:
        script, blocks, stop_reason = self.server.model.reply_blocks(body)
        entry["script"] = script
        entry["reply"] = blocks
        message_id = self.server.model.new_id("msg_standin")
        usage = {"input_tokens": 10, "output_tokens": 5}
        if not body.get("stream"):
            self._json(
                200,
                {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": body.get("model", MODEL_NAME),
                    "content": blocks,
                    "stop_reason": stop_reason,
                    "stop_sequence": None,
                    "usage": usage,
                },
            )
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        self._event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": body.get("model", MODEL_NAME),
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 10, "output_tokens": 1},
                },
            },
        )
        for index, block in enumerate(blocks):
            if block["type"] == "text":
                self._event(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
                self._event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": block["text"]},
                    },
                )
            else:
                start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
                self._event(
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": start},
                )
                raw = json.dumps(block["input"])
                # Split the JSON like the real API does, so partial-JSON assembly is exercised.
                for cut in range(0, len(raw), 40):
                    delta = {"type": "input_json_delta", "partial_json": raw[cut : cut + 40]}
                    self._event(
                        "content_block_delta",
                        {"type": "content_block_delta", "index": index, "delta": delta},
                    )
            self._event("content_block_stop", {"type": "content_block_stop", "index": index})
        self._event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": usage,
            },
        )
        self._event("message_stop", {"type": "message_stop"})

    def _event(self, name: str, data: dict) -> None:
        self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    model: StandinModel


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    with open(path, "rb") as ns:
        if libc.setns(ns.fileno(), CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}) failed")


def listening_socket(host: str, port: int, netns: str | None = None) -> socket.socket:
    """A listening TCP socket, optionally created inside the network namespace at `netns`.

    The network namespace of a thread is its own, so a short-lived thread enters the
    namespace, creates the socket and ends; the socket stays in that namespace and can be
    served from any thread of this process.
    """
    made: list[socket.socket] = []
    errors: list[BaseException] = []

    def create() -> None:
        try:
            if netns:
                _setns(netns)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(64)
            made.append(sock)
        except BaseException as exc:  # handed to the caller below
            errors.append(exc)

    thread = threading.Thread(target=create)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return made[0]


class StandinServer:
    """Runs a StandinModel on a socket in a background thread (a context manager)."""

    def __init__(
        self, model: StandinModel, host: str = "127.0.0.1", port: int = 0, netns: str | None = None
    ):
        self.model = model
        sock = listening_socket(host, port, netns)
        self._httpd = _Server((host, port), _Handler, bind_and_activate=False)
        self._httpd.socket.close()
        self._httpd.socket = sock
        self._httpd.server_address = sock.getsockname()
        self._httpd.model = model
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def __enter__(self) -> StandinServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def main(argv: list[str] | None = None, on_ready: Callable[[int], None] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Scripted stand-in for the Anthropic Messages API."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--scripts", type=Path, required=True, help="JSON file {name: [step, ...]}")
    parser.add_argument(
        "--record", type=Path, help="write every request as a JSON line here at exit"
    )
    args = parser.parse_args(argv)
    model = StandinModel(json.loads(args.scripts.read_text()))
    server = StandinServer(model, args.host, args.port)
    print(f"standin model listening on {args.host}:{server.port}", flush=True)
    try:
        with server:
            threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        if args.record:
            args.record.write_text("".join(json.dumps(r) + "\n" for r in model.requests))


if __name__ == "__main__":
    main()
