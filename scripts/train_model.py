"""Train the small reference models that ship in `models/`, deterministically, on offline text.

No weights or data sets can be fetched here, so the corpus is the Python standard library's
top-level sources. Two models share one byte-level BPE tokenizer:

- `models/ref-tiny`  ("nullius/ref-tiny"): the pinned reference model every honest node serves;
- `models/sub-nano`  ("nullius/sub-nano"): a much smaller model that a cheating participant serves
  under the reference name (the substitution attack of the verification benchmark).

The corpus is cut into top-level blocks (functions, classes, module heads) that each end with
`<|endoftext|>`, so the models learn to stop, plus chat samples (docstring -> function source) in
the chat template, so chat requests produce code and end with EOS.

Each folder gets config.json, model.safetensors (float16; the engine computes in float32), the
tokenizer files and manifest.json. `spec_hash` of a model = sha256 of its manifest.json bytes;
`tokenizer_sha256` = sha256 of tokenizer.json bytes followed by tokenizer_config.json bytes.

Usage: python scripts/train_model.py [--only ref|sub] [--ref-steps N] [--sub-steps N]
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import random
import re
import textwrap
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[1]
CORPUS_DIR = Path("/root/.pyenv/versions/3.11.7/lib/python3.11")
SEED = 1234
VOCAB_SIZE = 4096
CONTEXT = 512
EOS = "<|endoftext|>"
SPECIALS = [EOS, "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
# System and user turns end with <|end|>; an assistant turn ends with EOS, which is where
# generation stops. Newlines are emitted as expressions because HF renders templates with
# trim_blocks, which drops a literal newline after a block tag.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ '" + EOS + "\\n' }}{% else %}{{ '<|end|>\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
SYSTEM_PROMPT = "You write Python."

MODELS = {
    "ref": dict(
        name="nullius/ref-tiny", folder="ref-tiny", layers=4, hidden=256, heads=4,
        intermediate=704, steps=500, batch=2, lr=3e-3,
    ),
    "sub": dict(
        name="nullius/sub-nano", folder="sub-nano", layers=2, hidden=128, heads=4,
        intermediate=352, steps=400, batch=4, lr=3e-3,
    ),
}

_BLOCK_SPLIT = re.compile(r"\n\n+(?=(?:def |class |async def |@))")


def corpus_files() -> list[Path]:
    return sorted(CORPUS_DIR.glob("*.py"))


def blocks(text: str) -> list[str]:
    """Top-level blocks of a source file: each becomes one document ending with EOS."""
    return [b.strip("\n") + "\n" for b in _BLOCK_SPLIT.split(text) if b.strip()]


def chat_samples(text: str) -> list[str]:
    """(docstring summary -> function source) pairs rendered in the chat template."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return []
    nodes = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        nodes += [n for n in cls.body if isinstance(n, ast.FunctionDef)]
    out = []
    for node in nodes:
        doc = ast.get_docstring(node)
        source = ast.get_source_segment(text, node)
        if not doc or not source or len(source) > 1500:
            continue
        ask = doc.strip().splitlines()[0]
        out.append(
            f"<|system|>\n{SYSTEM_PROMPT}<|end|>\n<|user|>\n{ask}<|end|>\n"
            f"<|assistant|>\n{textwrap.dedent(source)}\n{EOS}"
        )
    return out


def documents() -> list[str]:
    docs: list[str] = []
    for path in corpus_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        docs += [b + EOS for b in blocks(text)]
        docs += chat_samples(text)
    random.Random(SEED).shuffle(docs)
    return docs


def train_tokenizer(docs: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # specials inside the training text would be learned as merges; strip them first
    plain = (re.sub(r"<\|[a-z]+\|>", "", d) for d in docs)
    tok.train_from_iterator(plain, trainer=trainer)
    return tok


def save_tokenizer(tok: Tokenizer, folder: Path) -> str:
    tok.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS,
        "bos_token": None,
        "pad_token": EOS,
        "unk_token": None,
        "model_max_length": CONTEXT,
        "clean_up_tokenization_spaces": False,
        "additional_special_tokens": SPECIALS[1:],
        "chat_template": CHAT_TEMPLATE,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    h = hashlib.sha256((folder / "tokenizer.json").read_bytes())
    h.update((folder / "tokenizer_config.json").read_bytes())
    return h.hexdigest()


def token_stream(tok: Tokenizer, docs: list[str]) -> np.ndarray:
    ids = [e.ids for e in tok.encode_batch(docs)]
    return np.fromiter((i for doc in ids for i in doc), dtype=np.int64)


def train_model(key: str, stream: np.ndarray, eos_id: int, steps: int) -> tuple:
    spec = MODELS[key]
    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=spec["hidden"],
        intermediate_size=spec["intermediate"],
        num_hidden_layers=spec["layers"],
        num_attention_heads=spec["heads"],
        num_key_value_heads=spec["heads"],
        max_position_embeddings=CONTEXT,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    model = LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=spec["lr"], betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    rng = np.random.default_rng(SEED)
    span = CONTEXT + 1
    losses: list[float] = []
    start = time.time()
    model.train()
    for step in range(steps):
        offsets = rng.integers(0, len(stream) - span, size=spec["batch"])
        batch = torch.from_numpy(np.stack([stream[o : o + span] for o in offsets]))
        out = model(input_ids=batch[:, :-1], labels=batch[:, :-1])
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(out.loss.item())
        if step % 10 == 0 or step == steps - 1:
            print(f"[{key}] step {step}/{steps} loss {losses[-1]:.3f} "
                  f"{time.time() - start:.0f}s", flush=True)
    wall = time.time() - start
    train_tokens = steps * spec["batch"] * CONTEXT
    final_loss = float(np.mean(losses[-20:]))
    return model, params, train_tokens, final_loss, wall


def save_model(key: str, model, tok: Tokenizer, params: int, train_tokens: int,
               final_loss: float, steps: int, wall: float) -> Path:
    spec = MODELS[key]
    folder = ROOT / "models" / spec["folder"]
    folder.mkdir(parents=True, exist_ok=True)
    model.config.dtype = "float16"
    model.config.save_pretrained(folder)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    tokenizer_sha = save_tokenizer(tok, folder)
    manifest = {
        "name": spec["name"],
        "weights_sha256": hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest(),
        "tokenizer_sha256": tokenizer_sha,
        "dtype": "float16",
        "quantization": "none",
        "params": params,
        "train_tokens": train_tokens,
        "final_loss": round(final_loss, 4),
        "steps": steps,
        "wall_seconds": round(wall, 1),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(MODELS), default=None)
    parser.add_argument("--ref-steps", type=int, default=MODELS["ref"]["steps"])
    parser.add_argument("--sub-steps", type=int, default=MODELS["sub"]["steps"])
    args = parser.parse_args()
    # One thread: on the shared 2-core machine, OpenMP threads that spin while descheduled made
    # two threads several times slower than one. A fixed count also fixes the float reductions.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    t0 = time.time()
    docs = documents()
    tok = train_tokenizer(docs)
    stream = token_stream(tok, docs)
    eos_id = tok.token_to_id(EOS)
    print(f"{len(docs)} documents, {len(stream)} tokens, tokenizer {time.time() - t0:.0f}s",
          flush=True)
    steps = {"ref": args.ref_steps, "sub": args.sub_steps}
    for key in [args.only] if args.only else ["ref", "sub"]:
        model, params, train_tokens, final_loss, wall = train_model(key, stream, eos_id, steps[key])
        folder = save_model(key, model, tok, params, train_tokens, final_loss, steps[key], wall)
        print(f"[{key}] saved {folder}: {params} params, final loss {final_loss:.3f}, "
              f"{wall:.0f}s", flush=True)


if __name__ == "__main__":
    main()
