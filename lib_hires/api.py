"""The script's arguments as the WebUI hands them over, and their validation before a job starts.

`alwayson_scripts["hires methods"]["args"]` is either `[{...}]`, a versioned dict of parameters
(keys from `params.py`; omitted keys take defaults; `enabled` defaults to true since sending the dict
means "use it"), or the UI's positional values in field order (what the UI itself sends; choices by
label or key).

The WebUIs catch every exception a script raises, so an invalid dict cannot stop a job from inside
the script. `ApiValidation` is a plain ASGI middleware that checks the script's arguments in
`/sdapi/v1/txt2img` and `/sdapi/v1/img2img` requests first and answers HTTP 422 naming every bad
field and what it allows; valid requests pass through untouched.
"""
from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from .params import GROUPS, ParamError, Settings, all_fields, from_ui, validate_api_dict

SCRIPT_KEY = "hires methods"
VALIDATED_PATHS = ("/sdapi/v1/txt2img", "/sdapi/v1/img2img")


def settings_from_args(args: Sequence[object]) -> Settings:
    """Settings from the script's argument slice: a dict in `args[0]` (the WebUI fills the rest of the
    slice with the UI's defaults, which are ignored), or positional UI values."""
    if args and isinstance(args[0], dict):
        return validate_api_dict(GROUPS, {"enabled": True, **args[0]})
    fields = all_fields(GROUPS)
    if len(args) > len(fields):
        raise ParamError({"args": f"expected at most {len(fields)} positional values, got {len(args)}"})
    return from_ui(GROUPS, {field.api_key: field.choice_of(value) for field, value in zip(fields, args)})


def _kind(value: object) -> str:
    return "null" if value is None else {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def script_problems(entry: object) -> dict[str, str]:
    """What is wrong with one `alwayson_scripts` entry for this script (empty if nothing is): its shape
    (an object whose optional `args` is a list), then the arguments themselves."""
    if not isinstance(entry, dict):
        return {"alwayson_scripts": f"the '{SCRIPT_KEY}' entry must be an object like {{\"args\": [{{...}}]}}, "
                                    f"got {_kind(entry)}"}
    if "args" not in entry:
        return {}  # the WebUI runs the script with its UI defaults (off)
    args = entry["args"]
    if not isinstance(args, list):
        return {"args": f"must be a list: [{{...}}] (one dict of parameters) or the UI's positional values, "
                        f"got {_kind(args)}"}
    if args and isinstance(args[0], dict) and len(args) > 1:
        return {"args": f"a dict of parameters must be the only element of args, got {len(args)} elements"}
    try:
        settings_from_args(args)
    except ParamError as error:
        return error.problems
    return {}


def request_problem(body: bytes) -> dict[str, object] | None:
    """The 422 payload for a txt2img/img2img request body whose Hires Methods entry is malformed or has
    invalid arguments, else None. Requests that do not name this script are never judged."""
    try:
        request = json.loads(body or b"{}")
    except ValueError:
        return None  # not ours to judge: the WebUI answers malformed JSON itself
    scripts = request.get("alwayson_scripts") if isinstance(request, dict) else None
    if not isinstance(scripts, dict):
        return None  # absent, or malformed for the WebUI's own validation to answer
    problems: dict[str, str] = {}
    for key, entry in scripts.items():
        if key.lower() == SCRIPT_KEY:
            problems.update(script_problems(entry))
    if not problems:
        return None
    detail = "; ".join(f"{key}: {text}" for key, text in problems.items())
    return {"error": "HiresMethodsArgs", "detail": f"alwayson_scripts['{SCRIPT_KEY}']: {detail}", "errors": problems}


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class ApiValidation:
    """ASGI middleware answering 422 for requests with invalid Hires Methods args (see module docstring)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or scope.get("method") != "POST" or scope.get("path") not in VALIDATED_PATHS:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, receive, send)  # disconnected: let the app see it
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        problem = request_problem(body)
        if problem is not None:
            payload = json.dumps(problem).encode()
            await send({"type": "http.response.start", "status": 422,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(payload)).encode())]})
            await send({"type": "http.response.body", "body": payload})
            return
        replayed = False

        async def replay() -> MutableMapping[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
