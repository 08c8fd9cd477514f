"""Validation cost on a GPU: a validator's one prefill over prompt + output over the executor's
generation of that output, batch 1, medians, for the shipped model and random-weight Llama models
of about 1B parameters and of the 7B shape (bf16). Needs a CUDA GPU, torch and transformers only.

    python3 -m benchmarks.validation_cost_gpu    # writes benchmarks/results/validation_cost_gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, StaticCache

ROOT = Path(__file__).resolve().parents[1]
NAME = "validation_cost_gpu.json"

# As benchmarks/detection.py's run_cost uses them (agents.verification.calibration needs pydantic).
ARTIFACT_TOP_K = 5  # the executor's per-token top-k logprobs (calibration.ARTIFACT_TOP_K)
VALIDATOR_TOP_K = 256  # the validator's per-position top-k (calibration.VALIDATOR_TOP_K)
TEMPERATURE = 0.7  # detection.ATTACK_TEMPERATURE
PROMPT_TOKENS = 100
LENGTHS = (64, 256)

LLAMA_1B = dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                intermediate_size=5632, vocab_size=32000)  # TinyLlama-1.1B's shape
LLAMA_7B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                intermediate_size=11008, vocab_size=32000)  # Llama-2-7B's shape


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


def load_model(spec: str, device, dtype):
    if spec == "ref-tiny":
        model = LlamaForCausalLM.from_pretrained(ROOT / "models" / "ref-tiny", dtype=dtype).to(device)
    else:
        shape = {"llama-1b": LLAMA_1B, "llama-7b": LLAMA_7B}[spec]
        config = LlamaConfig(**shape, max_position_embeddings=4096, eos_token_id=2, bos_token_id=1,
                             pad_token_id=0, tie_word_embeddings=False)
        torch.manual_seed(0)
        with torch.device(device):
            model = LlamaForCausalLM._from_config(config, dtype=dtype)  # random weights
    return model.eval()


# -- the executor: prefill the prompt, then one forward per token on the KV cache ------------------


def sample(logits: torch.Tensor, gen: torch.Generator):
    """Engine._token on the device: a Gumbel-max sample at TEMPERATURE from float32 logits, the
    log_softmax and the artifact's top-k, read back to the host each step (as a stream does)."""
    z = logits.float()
    u = torch.rand(z.shape, device=z.device, generator=gen).clamp_(min=1e-20)
    token = torch.argmax(z / TEMPERATURE - torch.log(-torch.log(u)))
    lp = torch.log_softmax(z, dim=-1)
    top = torch.topk(lp, ARTIFACT_TOP_K)
    return int(token), lp[token].item(), top.indices.cpu(), top.values.cpu()


@torch.inference_mode()
def generate_loop(model, prompt: torch.Tensor, n: int, gen: torch.Generator) -> list[int]:
    """agents/mlnode/engine.py's decode loop with transformers' dynamic KV cache, eager."""
    out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
    cache, ids = out.past_key_values, []
    for position in range(n):  # no EOS stop: always n tokens
        token = sample(out.logits[0, -1], gen)[0]
        ids.append(token)
        if position == n - 1:
            break
        out = model(input_ids=torch.tensor([[token]], device=prompt.device), past_key_values=cache,
                    use_cache=True)
    return ids


class GraphDecoder:
    """The same loop with a static KV cache and each one-token forward replayed from a CUDA graph
    (what vLLM / SGLang do for decode), so that it is not bound by kernel launches."""

    def __init__(self, model, max_len: int, device):
        self.model, self.device = model, device
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self.token = torch.zeros((1, 1), dtype=torch.long, device=device)
        self.pos = torch.zeros((1,), dtype=torch.long, device=device)
        self.graph = None

    def _step(self):
        return self.model(input_ids=self.token, past_key_values=self.cache, cache_position=self.pos,
                          position_ids=self.pos[None], use_cache=True).logits

    @torch.inference_mode()
    def capture(self, prompt: torch.Tensor) -> None:
        self._prefill(prompt)
        self.graph, self.logits = capture_graph(self._step)

    def _prefill(self, prompt: torch.Tensor):
        self.cache.reset()
        n = prompt.shape[1]
        return self.model(input_ids=prompt, past_key_values=self.cache,
                          cache_position=torch.arange(n, device=self.device), use_cache=True,
                          logits_to_keep=1).logits

    @torch.inference_mode()
    def generate(self, prompt: torch.Tensor, n: int, gen: torch.Generator) -> list[int]:
        logits = self._prefill(prompt)
        self.pos.fill_(prompt.shape[1])
        ids = []
        for position in range(n):
            token = sample(logits[0, -1], gen)[0]
            ids.append(token)
            if position == n - 1:
                break
            self.token.fill_(token)
            if self.graph is None:
                logits = self._step()
            else:
                self.graph.replay()
                logits = self.logits
            self.pos.add_(1)
        return ids


class GraphPrefill:
    """`validator_prefill` at one fixed length, replayed from a CUDA graph (the scoring included),
    so that the validator is not bound by kernel launches either."""

    def __init__(self, model, length: int, n_out: int, device):
        self.model, self.n_out = model, n_out
        self.ids = torch.zeros((1, length), dtype=torch.long, device=device)
        self.graph = None

    def _run(self):
        return score(self.model, self.ids, self.n_out)

    @torch.inference_mode()
    def capture(self) -> None:
        self.graph, self.out = capture_graph(self._run)

    @torch.inference_mode()
    def __call__(self, ids: torch.Tensor):
        self.ids.copy_(ids)
        if self.graph is None:
            out = self._run()
        else:
            self.graph.replay()
            out = self.out
        return tuple(t.cpu() for t in out)


@torch.inference_mode()
def generate_hf(model, prompt: torch.Tensor, n: int) -> list[int]:
    """transformers' own `generate`, greedy, forced to n tokens."""
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n,
                         do_sample=False, pad_token_id=0)
    return out[0, prompt.shape[1]:].tolist()


# -- the validator: one forward over prompt + output, no cache ---------------------------------


@torch.inference_mode()
def forward_only(model, ids: torch.Tensor, n_out: int):
    return model(input_ids=ids, use_cache=False, logits_to_keep=n_out + 1).logits


def score(model, ids: torch.Tensor, n_out: int):
    """The forward, then the log_softmax, the top-256, the token logprobs and ranks over the
    output positions, on the device."""
    logits = model(input_ids=ids, use_cache=False, logits_to_keep=n_out + 1).logits[0, :-1].float()
    lp = torch.log_softmax(logits, dim=-1)
    token_lp = lp.gather(1, ids[0, -n_out:, None])
    top = torch.topk(lp, VALIDATOR_TOP_K, dim=-1)
    return top.indices, top.values, token_lp, (lp > token_lp).sum(-1) + 1


@torch.inference_mode()
def validator_prefill(model, ids: torch.Tensor, n_out: int):
    """Engine.prefill(ids, VALIDATOR_TOP_K, start=len(prompt)) on the device: `score`, to host."""
    return tuple(t.cpu() for t in score(model, ids, n_out))


def capture_graph(fn):
    """(graph, fn's output tensors) for `fn` captured as a CUDA graph, after warm-up runs on a side
    stream as CUDA graph capture requires; `graph.replay()` refreshes those tensors."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def copy_bandwidth(device) -> float:
    """Bytes read + written per second by a device-to-device copy of 2 GiB."""
    src = torch.empty(2**30, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = [timed(lambda: dst.copy_(src), device)[0] for _ in range(10)]
    del src, dst
    return 2 * 2**31 / statistics.median(times)


def measure(spec: str, device, dtype, repeats: int, graphs: bool, bandwidth: float | None) -> dict:
    model = load_model(spec, device, dtype)
    vocab = model.config.vocab_size
    params = sum(p.numel() for p in model.parameters())
    # bytes a decode step must read: every weight but the embedding table (one row of it is read)
    step_bytes = sum(p.numel() * p.element_size() for name, p in model.named_parameters()
                     if "embed_tokens" not in name)
    gen = torch.Generator(device=device)
    rows = {}
    for n in LENGTHS:
        gen.manual_seed(n)
        prompts = [torch.randint(4, vocab, (1, PROMPT_TOKENS), device=device, generator=gen)
                   for _ in range(repeats)]
        loop_s, hf_s, graph_s, pre_s, fwd_s, graph_pre_s = [], [], [], [], [], []
        # warm-up: every eager path once at this length
        outs = generate_loop(model, prompts[0], n, gen)
        generate_hf(model, prompts[0], n)
        full = torch.cat([prompts[0], torch.tensor([outs], device=device)], dim=1)
        for _ in range(3):
            validator_prefill(model, full, n)
            forward_only(model, full, n)
        for prompt in prompts:
            t, outs = timed(lambda: generate_loop(model, prompt, n, gen), device)
            loop_s.append(t)
            assert len(outs) == n
            hf_s.append(timed(lambda: generate_hf(model, prompt, n), device)[0])
            full = torch.cat([prompt, torch.tensor([outs], device=device)], dim=1)
            pre_s.append(timed(lambda: validator_prefill(model, full, n), device)[0])
            fwd_s.append(timed(lambda: forward_only(model, full, n), device)[0])
        decoder = None
        if graphs:  # last, so that a failed capture costs nothing measured above
            try:
                decoder = GraphDecoder(model, PROMPT_TOKENS + n, device)
                decoder.capture(prompts[0])
                decoder.generate(prompts[0], n, gen)  # warm-up
                for prompt in prompts:
                    t, graph_outs = timed(lambda: decoder.generate(prompt, n, gen), device)
                    graph_s.append(t)
                    assert len(graph_outs) == n
            except Exception as exc:  # noqa: BLE001: report it and go on without graphs
                print(f"  {spec}: CUDA graph decode failed: {exc!r}", flush=True)
                graph_s = []
            if graph_s:
                try:
                    prefill = GraphPrefill(model, PROMPT_TOKENS + n, n, device)
                    prefill.capture()
                    fulls = [torch.cat([p, torch.tensor([decoder.generate(p, n, gen)], device=device)], dim=1)
                             for p in prompts]
                    for _ in range(3):
                        prefill(fulls[0])
                    for full in fulls:
                        graph_pre_s.append(timed(lambda: prefill(full), device)[0])
                except Exception as exc:  # noqa: BLE001: report it and go on without
                    print(f"  {spec}: CUDA graph prefill failed: {exc!r}", flush=True)
                    graph_pre_s = []
        med = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
        gen_loop, gen_hf, gen_graph, pre, fwd, pre_graph = map(med, (loop_s, hf_s, graph_s, pre_s, fwd_s, graph_pre_s))
        row = dict(output_tokens=n, prompt_tokens=PROMPT_TOKENS, repeats=repeats,
                   generate_loop_s=gen_loop, generate_hf_s=gen_hf, generate_graph_s=gen_graph,
                   prefill_s=pre, forward_only_s=fwd, prefill_graph_s=pre_graph,
                   ratio=pre / gen_loop, ratio_hf=pre / gen_hf,
                   ratio_graph=pre / gen_graph if gen_graph else None,
                   ratio_both_graphs=pre_graph / gen_graph if pre_graph and gen_graph else None,
                   ms_per_token_loop=1e3 * gen_loop / n, ms_per_token_hf=1e3 * gen_hf / n,
                   ms_per_token_graph=1e3 * gen_graph / n if gen_graph else None)
        if bandwidth:
            floor = (n - 1) * step_bytes / bandwidth  # n - 1 one-token forwards read the weights
            row.update(decode_floor_s=floor, ratio_floor=(pre_graph or pre) / floor)
        rows[n] = row
        print(f"  {spec} {n}: loop {1e3 * gen_loop:.1f} ms, hf {1e3 * gen_hf:.1f} ms, graph "
              f"{1e3 * gen_graph if gen_graph else float('nan'):.1f} ms, prefill {1e3 * pre:.2f} ms, "
              f"ratio {pre / gen_loop:.4f}, graph prefill "
              f"{1e3 * pre_graph if pre_graph else float('nan'):.2f} ms", flush=True)
        del decoder
    result = dict(params=params, dtype=str(dtype).removeprefix("torch."), layers=model.config.num_hidden_layers,
                  hidden=model.config.hidden_size, vocab=vocab, weights="shipped" if spec == "ref-tiny" else "random",
                  decode_step_bytes=step_bytes, lengths=rows)
    del model
    torch.cuda.empty_cache() if device.type == "cuda" else None
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="ref-tiny,llama-1b,llama-7b")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--no-graphs", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU (or --device cpu for a smoke run)")
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "benchmarks" / "results"
    path = out_dir / NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    report = dict(
        mode="validation_cost_gpu",
        device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        torch=torch.__version__, transformers=transformers.__version__,
        cuda=torch.version.cuda, batch=1, artifact_top_k=ARTIFACT_TOP_K, validator_top_k=VALIDATOR_TOP_K,
        temperature=TEMPERATURE,
        notes=("ratio = prefill_s / generate_loop_s. generate_loop: the engine's decode loop (dynamic KV cache, "
               "eager, Gumbel-max sampling at the temperature, log_softmax + top-5 read to the host per token, no "
               "EOS stop). generate_hf: transformers generate, greedy, min_new_tokens = max_new_tokens. "
               "generate_graph: the same loop as generate_loop with a static KV cache and the one-token forward "
               "replayed from a CUDA graph. prefill: one forward over prompt + output (no cache, logits for the "
               "output positions) + log_softmax, token logprobs, ranks and top-256, to the host. "
               "prefill_graph: the same prefill replayed from a CUDA graph; ratio_graph = prefill_s / generate_graph_s, "
               "ratio_both_graphs = prefill_graph_s / generate_graph_s. decode_floor_s: (n - 1) * decode_step_bytes / "
               "measured copy bandwidth, the memory-bound least time any executor needs; ratio_floor = "
               "prefill_graph_s (else prefill_s) / decode_floor_s."),
        models={},
    )
    started = time.perf_counter()
    if device.type == "cuda":
        report["copy_bandwidth_bytes_per_s"] = bandwidth = copy_bandwidth(device)
        print(f"{report['device']}, torch {torch.__version__}, transformers {transformers.__version__}, "
              f"copy {bandwidth / 1e12:.2f} TB/s", flush=True)
    else:
        bandwidth = None
    for spec in args.models.split(","):
        dtype = torch.float16 if spec == "ref-tiny" else torch.bfloat16
        if device.type == "cpu":
            dtype = torch.float32
        try:
            report["models"][spec] = measure(spec, device, dtype, args.repeats,
                                             device.type == "cuda" and not args.no_graphs, bandwidth)
        except Exception as exc:  # noqa: BLE001: keep what the other models gave
            print(f"{spec}: failed: {exc!r}", flush=True)
            report.setdefault("errors", {})[spec] = repr(exc)
        report["seconds"] = round(time.perf_counter() - started, 1)
        path.write_text(json.dumps(report, indent=2) + "\n")  # after each model, so a cut-off run keeps some
    print(f"\n{'model':<10}{'params':>8}{'out':>5}{'gen loop ms':>13}{'gen hf ms':>11}{'gen graph ms':>14}"
          f"{'prefill ms':>12}{'pre graph ms':>14}{'ratio':>8}{'ratio hf':>10}{'ratio graph':>13}{'both graphs':>13}"
          f"{'ratio floor':>13}")
    for spec, m in report["models"].items():
        for n, r in m["lengths"].items():
            g, pg = r["generate_graph_s"], r["prefill_graph_s"]
            print(f"{spec:<10}{m['params'] / 1e9:>7.3f}B{n:>5}{1e3 * r['generate_loop_s']:>13.1f}"
                  f"{1e3 * r['generate_hf_s']:>11.1f}{(1e3 * g if g else float('nan')):>14.1f}"
                  f"{1e3 * r['prefill_s']:>12.2f}{(1e3 * pg if pg else float('nan')):>14.2f}{r['ratio']:>8.4f}"
                  f"{r['ratio_hf']:>10.4f}{(r['ratio_graph'] or float('nan')):>13.4f}"
                  f"{(r['ratio_both_graphs'] or float('nan')):>13.4f}{r.get('ratio_floor', float('nan')):>13.4f}")
    print(f"\nwrote {path} in {report['seconds']} s")


if __name__ == "__main__":
    main()
