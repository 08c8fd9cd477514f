"""Client nonces: dense from a random word-aligned base, so the Ledger's replay bitmap writes one
fresh word per 256 inferences."""

from __future__ import annotations

import threading

from agents.protocol.nonces import NonceCounter


def test_counter__dense_from_a_word_aligned_base():
    nonces = NonceCounter()
    first = nonces()
    assert first % 256 == 0
    assert [nonces() for _ in range(3)] == [first + 1, first + 2, first + 3]


def test_counter__two_counters__different_words():
    assert NonceCounter()() >> 8 != NonceCounter()() >> 8


def test_counter__given_base__starts_there():
    nonces = NonceCounter(base=512)
    assert (nonces(), nonces()) == (512, 513)


def test_counter__threads__no_nonce_twice():
    nonces = NonceCounter()
    seen: list[int] = []

    def draw() -> None:
        seen.extend(nonces() for _ in range(1000))

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 4000
