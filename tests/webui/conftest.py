"""API tests against a running A1111 or Forge whose URL is in `HIRES_WEBUI_URL` (skipped when unset).

Run a host with this extension installed (../shared/HOSTS.md; a random-weight SD1.5 checkpoint is
enough), then e.g. `HIRES_WEBUI_URL=http://127.0.0.1:7861 bash tests/run.sh tests/webui -v`. Jobs are
tiny (128 px, 2 steps) so the suite takes a few minutes on a CPU host.

The modules test the model family in their `FAMILY` (default SD1.5). With an SDXL checkpoint loaded
(`tools/make_random_checkpoint.py --family sdxl`), set `HIRES_WEBUI_FAMILY=sdxl`: only the SDXL
module runs then (tests/webui/test_sdxl.py), the others are skipped, and the other way round.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import pytest

URL = os.environ.get("HIRES_WEBUI_URL", "").rstrip("/")


@dataclass(frozen=True)
class Result:
    status: int
    body: dict[str, Any]

    @property
    def infotexts(self) -> list[str]:
        return json.loads(self.body["info"])["infotexts"]

    @property
    def image_hashes(self) -> list[str]:
        return [hashlib.sha256(base64.b64decode(image)).hexdigest() for image in self.body["images"]]


class WebUI:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=60) as response:
            return json.loads(response.read())

    def post(self, path: str, payload: dict[str, Any]) -> Result:
        request = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=1800) as response:
                return Result(response.status, json.loads(response.read()))
        except urllib.error.HTTPError as error:
            return Result(error.code, json.loads(error.read() or b"{}"))

    def interrupted_txt2img(self, after: float, **payload: Any) -> Result:
        """A txt2img job that the user interrupts `after` seconds in."""
        results: list[Result] = []
        job = threading.Thread(target=lambda: results.append(self.txt2img(**payload)))
        job.start()
        time.sleep(after)
        self.post("/sdapi/v1/interrupt", {})
        job.join()
        return results[0]

    def txt2img(self, **payload: Any) -> Result:
        base = {"prompt": "a photo of a cat", "negative_prompt": "blurry", "steps": 2, "width": 128, "height": 128,
                "seed": 1, "cfg_scale": 7, "sampler_name": "Euler", "batch_size": 1,
                # Forge needs these for hires jobs (A1111 ignores them)
                "hr_additional_modules": ["Use same choices"], "hr_cfg": 7}
        return self.post("/sdapi/v1/txt2img", {**base, **payload})


@pytest.fixture(scope="module")
def webui(request: pytest.FixtureRequest) -> WebUI:
    if not URL:
        pytest.skip("HIRES_WEBUI_URL is not set: no WebUI to test against")
    loaded, wanted = os.environ.get("HIRES_WEBUI_FAMILY", "sd1"), getattr(request.module, "FAMILY", "sd1")
    if loaded != wanted:
        pytest.skip(f"these tests need a {wanted} model loaded; HIRES_WEBUI_FAMILY says {loaded}")
    return WebUI(URL)
