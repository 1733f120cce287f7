"""Build an offline Hugging Face cache entry for ``openai/clip-vit-large-patch14`` (tokenizer + config).

AUTOMATIC1111's SD1 text encoder loads the ``openai/clip-vit-large-patch14`` tokenizer and model
config with ``from_pretrained``; without internet it needs them in the HF cache. This tool writes::

    $HF_HOME/hub/models--openai--clip-vit-large-patch14/
        refs/main                          (the revision name below)
        snapshots/<rev>/vocab.json         (49408 tokens)
        snapshots/<rev>/merges.txt         ("#version: 0.2" + the first 48894 merges)
        snapshots/<rev>/config.json        (CLIPConfig; text: 768 hidden, 12 layers, 12 heads, 3072 MLP,
                                            77 positions, vocab 49408, quick_gelu)
        snapshots/<rev>/tokenizer_config.json, special_tokens_map.json, preprocessor_config.json

``vocab.json`` and ``merges.txt`` are derived from OpenAI's BPE file ``bpe_simple_vocab_16e6.txt.gz``
as shipped inside the PyPI packages ``open-clip-torch`` (``open_clip/``) or ``clip-anytorch``
(``clip/``), exactly as CLIP's own tokenizer builds its vocabulary: the 256 byte symbols, the same
with ``</w>``, one token per merge, then ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407).
``<rev>`` is a hash of the written files, so rerunning with the same inputs gives the same layout.

When ``transformers`` is importable the tool loads the tokenizer back from the cache (offline) and
checks that 'a photo of a cat' encodes to 49406 320 1125 539 320 2368 49407; it fails otherwise.

This is a developer tool (not run in CI). It needs ``open-clip-torch`` or ``clip-anytorch`` installed
(or ``--bpe PATH``), and ``transformers`` for the check. Run::

    HF_HOME=~/hosts/hf-cache python tools/make_clip_tokenizer_cache.py
    # or: python tools/make_clip_tokenizer_cache.py --hf-home ~/hosts/hf-cache [--bpe FILE.txt.gz]

then start the host with ``HF_HOME=<same dir> HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1``.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path

REPO_ID = "openai/clip-vit-large-patch14"
N_MERGES = 49152 - 256 - 2  # 48894, as in CLIP's SimpleTokenizer
N_TOKENS = 49408
EXPECTED = [49406, 320, 1125, 539, 320, 2368, 49407]  # 'a photo of a cat'

CONFIG: dict[str, object] = {
    "_name_or_path": REPO_ID,
    "architectures": ["CLIPModel"],
    "initializer_factor": 1.0,
    "logit_scale_init_value": 2.6592,
    "model_type": "clip",
    "projection_dim": 768,
    "text_config": {
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": "quick_gelu",
        "hidden_size": 768,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 3072,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "model_type": "clip_text_model",
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "pad_token_id": 1,
        "projection_dim": 768,
        "vocab_size": N_TOKENS,
    },
    "vision_config": {
        "attention_dropout": 0.0,
        "dropout": 0.0,
        "hidden_act": "quick_gelu",
        "hidden_size": 1024,
        "image_size": 224,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 4096,
        "layer_norm_eps": 1e-05,
        "model_type": "clip_vision_model",
        "num_attention_heads": 16,
        "num_channels": 3,
        "num_hidden_layers": 24,
        "patch_size": 14,
        "projection_dim": 768,
    },
}


def _special(content: str) -> dict[str, object]:
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True,
            "rstrip": False, "single_word": False}


TOKENIZER_CONFIG: dict[str, object] = {
    "add_prefix_space": False,
    "bos_token": _special("<|startoftext|>"),
    "do_lower_case": True,
    "eos_token": _special("<|endoftext|>"),
    "errors": "replace",
    "model_max_length": 77,
    "name_or_path": REPO_ID,
    "pad_token": "<|endoftext|>",
    "tokenizer_class": "CLIPTokenizer",
    "unk_token": _special("<|endoftext|>"),
}
SPECIAL_TOKENS_MAP: dict[str, object] = {
    "bos_token": {k: v for k, v in _special("<|startoftext|>").items() if k != "__type"},
    "eos_token": {k: v for k, v in _special("<|endoftext|>").items() if k != "__type"},
    "pad_token": "<|endoftext|>",
    "unk_token": {k: v for k, v in _special("<|endoftext|>").items() if k != "__type"},
}
PREPROCESSOR_CONFIG: dict[str, object] = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": 224,
}


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable unicode map (the 256 base symbols, in vocabulary order)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def find_bpe_file() -> Path:
    """``bpe_simple_vocab_16e6.txt.gz`` from an installed open-clip-torch or clip-anytorch."""
    for package in ("open_clip", "clip"):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bpe_simple_vocab_16e6.txt.gz"
            if candidate.is_file():
                return candidate
    raise SystemExit("bpe_simple_vocab_16e6.txt.gz not found: install open-clip-torch or clip-anytorch, "
                     "or pass --bpe")


def build_vocab_and_merges(bpe_path: Path) -> tuple[dict[str, int], list[str]]:
    """CLIP's 49408-token vocabulary and its 48894 merges (as 'a b' lines), from the BPE file."""
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = lines[1:N_MERGES + 1]
    if len(merges) != N_MERGES:
        raise SystemExit(f"{bpe_path}: expected at least {N_MERGES} merges, found {len(merges)}")
    pairs = [tuple(m.split()) for m in merges]
    if any(len(p) != 2 for p in pairs):
        raise SystemExit(f"{bpe_path}: malformed merge line")
    tokens = list(bytes_to_unicode().values())
    tokens = tokens + [t + "</w>" for t in tokens]
    tokens += ["".join(p) for p in pairs]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != N_TOKENS:
        raise SystemExit(f"vocabulary has {len(vocab)} distinct tokens, expected {N_TOKENS}")
    return vocab, [" ".join(p) for p in pairs]


def write_cache(hf_home: Path, bpe_path: Path) -> Path:
    """Write the cache entry under ``hf_home/hub``; return the snapshot directory."""
    vocab, merges = build_vocab_and_merges(bpe_path)
    files: dict[str, str] = {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
        "config.json": json.dumps(CONFIG, indent=2, sort_keys=True) + "\n",
        "tokenizer_config.json": json.dumps(TOKENIZER_CONFIG, indent=2, sort_keys=True) + "\n",
        "special_tokens_map.json": json.dumps(SPECIAL_TOKENS_MAP, indent=2, sort_keys=True) + "\n",
        "preprocessor_config.json": json.dumps(PREPROCESSOR_CONFIG, indent=2, sort_keys=True) + "\n",
    }
    digest = hashlib.sha1()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].encode("utf-8") + b"\0")
    revision = digest.hexdigest()

    repo_dir = hf_home / "hub" / ("models--" + REPO_ID.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        tmp = snapshot / f".{name}.tmp-{os.getpid()}"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, snapshot / name)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision, encoding="utf-8")
    return snapshot


def check_tokenizer(hf_home: Path) -> list[int] | None:
    """Encode 'a photo of a cat' with transformers' CLIPTokenizer loaded offline from the cache."""
    if importlib.util.find_spec("transformers") is None:
        return None
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from transformers import CLIPTextConfig, CLIPTokenizer

    cache_dir = str(hf_home / "hub")
    tokenizer = CLIPTokenizer.from_pretrained(REPO_ID, cache_dir=cache_dir, local_files_only=True)
    ids = [int(i) for i in tokenizer("a photo of a cat")["input_ids"]]
    if ids != EXPECTED:
        raise SystemExit(f"tokenizer check failed: {ids} != {EXPECTED}")
    if len(tokenizer) != N_TOKENS:
        raise SystemExit(f"tokenizer has {len(tokenizer)} tokens, expected {N_TOKENS}")
    text = CLIPTextConfig.from_pretrained(REPO_ID, cache_dir=cache_dir, local_files_only=True)
    if (text.hidden_size, text.num_hidden_layers, text.vocab_size) != (768, 12, N_TOKENS):
        raise SystemExit(f"unexpected text config read back: {text}")
    return ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_home = os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
    parser.add_argument("--hf-home", type=Path, default=Path(default_home),
                        help="HF home directory (the cache goes to <hf-home>/hub); default $HF_HOME")
    parser.add_argument("--bpe", type=Path, default=None,
                        help="path of bpe_simple_vocab_16e6.txt.gz (default: from open_clip or clip)")
    args = parser.parse_args(argv)

    hf_home: Path = args.hf_home.expanduser().resolve()
    bpe_path: Path = args.bpe.expanduser() if args.bpe else find_bpe_file()
    snapshot = write_cache(hf_home, bpe_path)
    print(f"wrote {snapshot} (from {bpe_path})")
    ids = check_tokenizer(hf_home)
    if ids is None:
        print("transformers not installed: tokenizer check skipped")
    else:
        print("check: 'a photo of a cat' ->", " ".join(map(str, ids)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
