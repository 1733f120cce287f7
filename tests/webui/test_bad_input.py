"""Malformed requests through a real WebUI's API: each answered before any job runs (422 naming the
field and what is allowed), or run with a warning naming the value the plan could not use; a plain job
afterwards gives the same image as before them."""
from __future__ import annotations

from typing import Any

import pytest

from lib_hires.params import parse_infotext
from tests.webui.conftest import Result, WebUI
from tests.webui.test_api import CUSTOM


def ours(args: Any) -> dict[str, Any]:
    return {"alwayson_scripts": {"hires methods": args}}


# (name, extra payload, key the 422 names, text the message contains)
REFUSED = [
    ("block no model has", ours({"args": [{"scalecrafter_dilation": "DB9=2"}]}), "scalecrafter_dilation",
     "no block 'DB9' in any supported model; blocks: DB0-DB3, MB, UB0-UB3"),
    ("factor padding by 1000 px", ours({"args": [{"scalecrafter_dilation": "DB2=1000"}]}), "scalecrafter_dilation",
     "the factor must be a number from 1 to 8"),
    ("same block twice", ours({"args": [{"scalecrafter_dilation": "DB2=2 DB2=3"}]}), "scalecrafter_dilation",
     "'DB2' is given twice"),
    ("NaN", ours({"args": [{"scalecrafter_tau": float("nan")}]}), "scalecrafter_tau", "got nan"),
    ("Infinity", ours({"args": [{"scalecrafter_ndcfg_tau": float("inf")}]}), "scalecrafter_ndcfg_tau", "got inf"),
    ("args a dict", ours({"args": {"method": "scalecrafter"}}), "args", "must be a list"),
    ("args null", ours({"args": None}), "args", "got null"),
    ("args a string", ours({"args": "scalecrafter"}), "args", "got a string"),
    ("entry not an object", ours("on"), "alwayson_scripts", "must be an object"),
    ("two dicts", ours({"args": [{}, {"method": "none"}]}), "args", "must be the only element"),
    ("empty factor", ours({"args": [{"scalecrafter_dilation": "DB2="}]}), "scalecrafter_dilation",
     "expected BLOCK=FACTOR"),
    ("part that does not exist", ours({"args": [{"scalecrafter_dilation": "DB2.attn=2"}]}),
     "scalecrafter_dilation", "must be 'resnets' or 'sampler'"),
    ("sampler no block has", ours({"args": [{"scalecrafter_disperse_blocks": "DB3.sampler"}]}),
     "scalecrafter_disperse_blocks", "DB3 has no sampler conv in any supported model"),
    ("whole block after its part", ours({"args": [{"scalecrafter_dilation": "DB2.sampler=4 DB2=3"}]}),
     "scalecrafter_dilation", "would replace it"),
    ("tile of 1 px", ours({"args": [{"tiled_vae_enabled": True, "tiled_vae_decoder_tile": 1}]}),
     "tiled_vae_decoder_tile", "0 (auto) or an integer from 16 to 512"),
    ("version 2", ours({"args": [{"version": 2}]}), "version", "allowed: 1"),
    ("unknown key", ours({"args": [{"scalecrafter_taus": 0.5}]}), "scalecrafter_taus", "unknown key"),
    ("positional junk", ours({"args": [True, "Bogus"]}), "method", "got 'Bogus'"),
    ("positional dict in slot 2", ours({"args": [True, {"method": "none"}]}), "method", "got {'method': 'none'}"),
]


@pytest.fixture(scope="module")
def plain_before(webui: WebUI) -> Result:
    return webui.txt2img()


@pytest.mark.parametrize("name, extra, key, message", REFUSED, ids=[case[0] for case in REFUSED])
def test_refused_before_the_job(webui: WebUI, plain_before: Result, name: str, extra: dict[str, Any], key: str,
                                message: str) -> None:
    result = webui.txt2img(**extra)
    assert result.status == 422, (name, result.status, result.body)
    assert key in result.body["errors"] and message in result.body["errors"][key], result.body
    assert message in result.body["detail"]


def warning(result: Result) -> str:
    return parse_infotext(result.infotexts[0].splitlines()[-1]).get("Hires Methods warning", "")


@pytest.mark.parametrize("name, args, text", [
    ("explicit dilation, Auto at 128 px", {"scalecrafter_dilation": "DB1=2"},
     "not used: scalecrafter_dilation (nothing is re-dilated: first pass 128x128: Auto: at or below"),
    ("padding beyond the 2 px maps", {**CUSTOM, "scalecrafter_dilation": "MB=3"},
     "MB=3 would pad a conv's 2-pixel feature map by 3 pixels per side, beyond the map"),
    ("values of a method not chosen", {"method": "none", "scalecrafter_tau": 0.3, "tiled_vae_enabled": True},
     "not used (method is none): scalecrafter_tau"),
])
def test_run_with_a_warning(webui: WebUI, plain_before: Result, name: str, args: dict[str, Any], text: str) -> None:
    result = webui.txt2img(**ours({"args": [args]}))
    assert result.status == 200, (name, result.body)
    assert text in warning(result)


def test_other_scripts_are_left_to_the_webui(webui: WebUI) -> None:
    result = webui.txt2img(alwayson_scripts={"no such script": {"args": {"junk": 1}}})
    assert result.body.get("error") != "HiresMethodsArgs"


def test_a_plain_job_afterwards_is_unchanged(webui: WebUI, plain_before: Result) -> None:
    assert webui.txt2img().image_hashes == plain_before.image_hashes
