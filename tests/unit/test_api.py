"""The script's arguments: dict and positional forms, and the 422 middleware in front of the WebUI."""
from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from lib_hires.api import ApiValidation, request_problem, settings_from_args
from lib_hires.params import GROUPS, General, ParamError, ScaleCrafterParams, all_fields


def ui_defaults() -> list[object]:
    """The UI's positional values at their defaults (choices as labels, as gradio sends them)."""
    return [f.spec.choice_labels[f.spec.choices.index(f.default)] if f.spec.choice_labels else f.default
            for f in all_fields(GROUPS)]


def test_dict_args_enable_unless_told_otherwise() -> None:
    assert settings_from_args([{}])[General].enabled is True
    assert settings_from_args([{"enabled": False}])[General].enabled is False
    settings = settings_from_args([{"scalecrafter_tau": 0.3}])
    assert settings[ScaleCrafterParams].tau == 0.3 and settings.given == {"enabled", "scalecrafter_tau"}


def test_positional_args_take_labels_or_keys_and_respect_the_preset() -> None:
    values = ui_defaults()
    labels = [f.api_key for f in all_fields(GROUPS)]
    values[0] = True
    values[labels.index("scalecrafter_tau")] = 0.9
    auto = settings_from_args(values)
    assert auto[General].enabled and auto[ScaleCrafterParams].preset == "auto"
    assert "scalecrafter_tau" not in auto.given  # the preset decides it, the control is only a display
    values[labels.index("scalecrafter_preset")] = "Custom"
    custom = settings_from_args(values)
    assert custom[ScaleCrafterParams].preset == "custom" and "scalecrafter_tau" in custom.given
    values[labels.index("scalecrafter_preset")] = "sd15_2048x2048_code"  # a key is accepted too
    assert settings_from_args(values)[ScaleCrafterParams].preset == "sd15_2048x2048_code"
    with pytest.raises(ParamError, match="at most"):
        settings_from_args(values + [1])
    values[labels.index("scalecrafter_apply_to")] = "Sideways"
    with pytest.raises(ParamError, match="scalecrafter_apply_to"):
        settings_from_args(values)


def body(args: list[Any], key: str = "hires methods") -> bytes:
    return json.dumps({"prompt": "x", "alwayson_scripts": {key: {"args": args}}}).encode()


def test_request_problem() -> None:
    assert request_problem(body([{"scalecrafter_tau": 0.5}])) is None
    assert request_problem(body([True, "ScaleCrafter"])) is None
    assert request_problem(body([{"bad": 1}], key="other script")) is None
    assert request_problem(b"not json") is None
    assert request_problem(json.dumps({"prompt": "x"}).encode()) is None
    problem = request_problem(body([{"scalecrafter_tau": 2, "nope": 0}], key="Hires Methods"))
    assert problem is not None and set(problem["errors"]) == {"scalecrafter_tau", "nope"}  # type: ignore[arg-type]
    assert "from 0 to 1" in problem["detail"]  # type: ignore[operator]


def run_asgi(path: str, method: str, chunks: list[bytes]) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Drive the middleware with a recording inner app; returns what was sent and what the app read."""
    sent: list[dict[str, Any]] = []
    seen: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            seen.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(ApiValidation(app)({"type": "http", "method": method, "path": path}, receive, send))
    return sent, seen


def test_middleware_answers_422_without_running_the_job() -> None:
    payload = body([{"scalecrafter_preset": "bogus"}])
    sent, seen = run_asgi("/sdapi/v1/txt2img", "POST", [payload[:10], payload[10:]])
    assert sent[0]["status"] == 422 and seen == []
    detail = json.loads(sent[1]["body"])
    assert "scalecrafter_preset" in detail["errors"] and "'auto'" in detail["errors"]["scalecrafter_preset"]


def test_middleware_passes_valid_and_other_requests_through_unchanged() -> None:
    payload = body([{"scalecrafter_tau": 0.5}])
    sent, seen = run_asgi("/sdapi/v1/txt2img", "POST", [payload[:7], payload[7:]])
    assert sent[0]["status"] == 200 and b"".join(seen) == payload
    bad = body([{"bogus": 1}])
    sent, seen = run_asgi("/sdapi/v1/options", "POST", [bad])
    assert sent[0]["status"] == 200 and seen == [bad]


def raw(scripts: object) -> bytes:
    return json.dumps({"prompt": "x", "alwayson_scripts": scripts}).encode()


@pytest.mark.parametrize("scripts, key, message", [
    ({"hires methods": "on"}, "alwayson_scripts", "must be an object like {\"args\": [{...}]}, got a string"),
    ({"hires methods": ["args"]}, "alwayson_scripts", "got a list"),
    ({"hires methods": None}, "alwayson_scripts", "got null"),
    ({"Hires Methods": {"args": {"method": "scalecrafter"}}}, "args", "must be a list: [{...}]"),
    ({"hires methods": {"args": "scalecrafter"}}, "args", "got a string"),
    ({"hires methods": {"args": None}}, "args", "got null"),
    ({"hires methods": {"args": 1}}, "args", "got a number"),
    ({"hires methods": {"args": [{}, {}]}}, "args", "must be the only element of args, got 2"),
    ({"hires methods": {"args": [True, {"method": "x"}]}}, "method", "got {'method': 'x'}"),
    ({"hires methods": {"args": [[True]]}}, "enabled", "got [True]"),
    ({"hires methods": {"args": [{"scalecrafter_tau": float("nan")}]}}, "scalecrafter_tau", "got nan"),
    ({"hires methods": {"args": [{"scalecrafter_dilation": "DB2=1000"}]}}, "scalecrafter_dilation", "from 1 to 8"),
    ({"hires methods": {"args": [{"scalecrafter_dilation": "DB9=2"}]}}, "scalecrafter_dilation", "no block 'DB9'"),
    ({"hires methods": {"args": [{"scalecrafter_dilation": "DB2=2 DB2=3"}]}}, "scalecrafter_dilation", "twice"),
    ({"hires methods": {"args": [{"tiled_vae_decoder_tile": 1}]}}, "tiled_vae_decoder_tile", "0 (auto) or"),
])
def test_malformed_entries_are_422(scripts: object, key: str, message: str) -> None:
    problem = request_problem(raw(scripts))
    assert problem is not None and key in problem["errors"], problem  # type: ignore[operator]
    assert message in problem["errors"][key]  # type: ignore[index]
    assert message in problem["detail"]  # type: ignore[operator]


@pytest.mark.parametrize("scripts", [
    {"hires methods": {}},  # no args: the WebUI runs the script with its UI defaults (off)
    {"hires methods": {"args": []}},
    {"other script": {"args": {"not": "a list"}}},  # never ours to judge
    {"other script": "junk"},
    ["not", "a", "dict"],  # the WebUI's own validation answers this
    None,
])
def test_entries_left_to_the_webui(scripts: object) -> None:
    assert request_problem(raw(scripts)) is None
