"""Build the tiny Llama-architecture model of the embedded default locally (no model hub).

    python scripts/build_tiny_model.py --out .cache/tiny-llama [--seed 0] [--force]
    (or `shadowreplay.embedded.tiny_model.build(out)` from code)

Writes a Hugging Face model directory that vLLM (CPU or CUDA) serves as is:
- `tokenizer.json`: a byte-level BPE tokenizer (vocabulary 4096) trained with `tokenizers` on a fixed
  corpus that every Python installation carries: the standard library's own `.py` sources, taken in
  sorted path order up to a size cap. Same Python version + same seed -> byte-identical files.
- `tokenizer_config.json`: Llama-3-style special tokens and chat template. The tokenizer's
  post-processor adds `<|begin_of_text|>` when special tokens are added (a completions prompt, as
  vLLM counts it), and the chat template writes it itself (vLLM tokenizes a rendered chat prompt
  without adding special tokens), so a chat prompt carries exactly one BOS either way.
- `config.json` + `model.safetensors`: LlamaForCausalLM, hidden 256, intermediate 512, 4 layers,
  4 heads, 2 KV heads, random float16 weights written with numpy + safetensors (no torch).
- `generation_config.json`, and `build_info.json`, which records the inputs: a rerun with the same
  inputs leaves the directory untouched (idempotent); `--force` rebuilds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

BUILD_FORMAT = 1  # bump when this script's output changes for the same inputs
VOCAB_SIZE = 4096
CORPUS_CAP_BYTES = 3_000_000
MAX_POSITION_EMBEDDINGS = 8192

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = [BOS, EOS, START_HEADER, END_HEADER, EOT, PAD]

# Llama-3's layout, without its whitespace trimming of message content (a synthesized prompt's exact
# token count depends on the content reaching the tokenizer unchanged).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

ARCHITECTURE = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def corpus_files(stdlib: Path) -> list[Path]:
    """The standard library's `.py` files in sorted relative-path order, up to the size cap."""
    chosen, total = [], 0
    for path in sorted(stdlib.rglob("*.py"), key=lambda p: p.relative_to(stdlib).as_posix()):
        relative = path.relative_to(stdlib).parts
        if relative[0] in {"site-packages", "dist-packages", "test", "idlelib"} or "__pycache__" in relative:
            continue
        size = path.stat().st_size
        if total + size > CORPUS_CAP_BYTES:
            break
        chosen.append(path)
        total += size
    return chosen


def corpus_texts(files: list[Path]) -> Iterator[str]:
    for path in files:
        yield path.read_text(encoding="utf-8", errors="replace")


def corpus_fingerprint(stdlib: Path, files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(stdlib).as_posix().encode())
        digest.update(path.stat().st_size.to_bytes(8, "little"))
    return digest.hexdigest()[:16]


def train_tokenizer(files: list[Path]) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus_texts(files), trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
            ),
        ]
    )
    return tokenizer


def tokenizer_config() -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOT,
        "pad_token": PAD,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MAX_POSITION_EMBEDDINGS,
        "chat_template": CHAT_TEMPLATE,
    }


def model_config(tokenizer: Tokenizer) -> dict:
    hidden, heads = ARCHITECTURE["hidden_size"], ARCHITECTURE["num_attention_heads"]
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": tokenizer.get_vocab_size(),
        **ARCHITECTURE,
        "head_dim": hidden // heads,
        "hidden_act": "silu",
        "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
        "bos_token_id": tokenizer.token_to_id(BOS),
        "eos_token_id": [tokenizer.token_to_id(EOS), tokenizer.token_to_id(EOT)],
        "pad_token_id": tokenizer.token_to_id(PAD),
        "torch_dtype": "float16",
        "use_cache": True,
    }


def generation_config(config: dict) -> dict:
    return {
        "bos_token_id": config["bos_token_id"],
        "eos_token_id": config["eos_token_id"],
        "pad_token_id": config["pad_token_id"],
    }


def random_weights(config: dict, seed: int) -> dict[str, np.ndarray]:
    """LlamaForCausalLM's tensors, normal(0, initializer_range), norms at one."""
    rng = np.random.default_rng(seed)
    hidden, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    std = config["initializer_range"]

    def normal(*shape: int) -> np.ndarray:
        return rng.normal(0.0, std, size=shape).astype(np.float16)

    tensors = {"model.embed_tokens.weight": normal(vocab, hidden)}
    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}"
        tensors |= {
            f"{prefix}.self_attn.q_proj.weight": normal(hidden, hidden),
            f"{prefix}.self_attn.k_proj.weight": normal(kv, hidden),
            f"{prefix}.self_attn.v_proj.weight": normal(kv, hidden),
            f"{prefix}.self_attn.o_proj.weight": normal(hidden, hidden),
            f"{prefix}.mlp.gate_proj.weight": normal(inter, hidden),
            f"{prefix}.mlp.up_proj.weight": normal(inter, hidden),
            f"{prefix}.mlp.down_proj.weight": normal(hidden, inter),
            f"{prefix}.input_layernorm.weight": np.ones(hidden, dtype=np.float16),
            f"{prefix}.post_attention_layernorm.weight": np.ones(hidden, dtype=np.float16),
        }
    tensors["model.norm.weight"] = np.ones(hidden, dtype=np.float16)
    tensors["lm_head.weight"] = normal(vocab, hidden)
    return tensors


def write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")


def build(out: Path, seed: int, force: bool = False) -> bool:
    """Build the model into `out`; returns False when `out` already holds this exact build."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = corpus_files(stdlib)
    if not files:
        raise SystemExit(f"build_tiny_model: no Python sources found under {stdlib} to train the tokenizer on")
    build_info = {
        "format": BUILD_FORMAT,
        "seed": seed,
        "vocab_size": VOCAB_SIZE,
        "corpus": {
            "source": "python stdlib *.py, sorted, capped",
            "python": ".".join(map(str, sys.version_info[:3])),
            "files": len(files),
            "fingerprint": corpus_fingerprint(stdlib, files),
        },
    }
    info_path = out / "build_info.json"
    if not force and info_path.exists() and json.loads(info_path.read_text()) == build_info:
        return False

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        tokenizer = train_tokenizer(files)
        tokenizer.save(str(staging / "tokenizer.json"))
        write_json(staging / "tokenizer_config.json", tokenizer_config())
        write_json(
            staging / "special_tokens_map.json",
            {"bos_token": BOS, "eos_token": EOT, "pad_token": PAD},
        )
        config = model_config(tokenizer)
        write_json(staging / "config.json", config)
        write_json(staging / "generation_config.json", generation_config(config))
        save_file(random_weights(config, seed), str(staging / "model.safetensors"), metadata={"format": "pt"})
        write_json(staging / "build_info.json", build_info)  # written last: marks a complete build
        staging.chmod(0o755)
        for path in staging.iterdir():
            path.chmod(0o644)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    parser.add_argument("--force", action="store_true", help="rebuild even when the directory is up to date")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if build(args.out, args.seed, args.force):
        print(f"build_tiny_model: wrote {args.out} in {time.perf_counter() - started:.1f} s")
    else:
        print(f"build_tiny_model: {args.out} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
