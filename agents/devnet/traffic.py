"""Demo traffic: a client deposits, signs requests and sends them to the gateways."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agents.client.sdk import NulliusClient

# The reference model is trained on Python sources, so code prompts give readable answers.
PROMPTS = [
    "def fibonacci(n):\n",
    "import os\nimport sys\n\n\ndef main():\n",
    "class Stack:\n    def __init__(self):\n",
    "    def __repr__(self):\n        return",
    "# Copyright 2001 Python Software Foundation\n",
    "def _read_config(path):\n    with open(path) as f:\n",
]
CHAT = [
    [{"role": "system", "content": "You write Python."},
     {"role": "user", "content": "Write a function that parses a date."}],
    [{"role": "user", "content": "def sort_items(items):"}],
]

def send(clients: list[NulliusClient], requests: int, max_tokens: int, concurrency: int = 3) -> list[bytes]:
    """Send `requests` inferences round-robin over the clients; returns the inference ids."""

    def one(i: int) -> bytes:
        client = clients[i % len(clients)]
        temperature = (0.0, 0.7, 1.0)[i % 3]
        if i % 4 == 3:
            result = client.infer(messages=CHAT[i % len(CHAT)], max_tokens=max_tokens,
                                  temperature=temperature)
        else:
            result = client.infer(prompt=PROMPTS[i % len(PROMPTS)], max_tokens=max_tokens,
                                  temperature=temperature)
        return result.inference_id

    ids: list[bytes] = []
    with Progress(TextColumn("[bold]inferences"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn()) as progress:
        task = progress.add_task("send", total=requests)
        with ThreadPoolExecutor(concurrency) as pool:
            for inference_id in pool.map(one, range(requests)):
                ids.append(inference_id)
                progress.advance(task)
    return ids
