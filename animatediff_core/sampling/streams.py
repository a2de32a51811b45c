"""Streams: several rows sampled at once in one CPU process, on threads that share one pipeline's modules.

A torch op on T threads ends when the slowest of them does. On a CPU that anything else shares (on a
2-core machine, Ray's own processes beside the actor), one thread losing its core for a moment stalls the
others at the op's next barrier. T single-thread streams, each sampling its own rows, do not wait for one
another, and unlike T single-thread processes they hold one copy of the weights. bench/README.md measures
it ("One actor, two streams").

A stream samples through a `view` of the pipeline: the same modules, its own scheduler (a scheduler keeps
a call's step state) and its own tokenizers (a fast tokenizer's padding and truncation are set on it for
each call), and its own call attributes. What changes the shared modules for the length of a call runs one
row at a time: `generate.shareable` says which rows may run in streams. GPU actors run one stream (their
rows batch instead). A row's frames do not depend on its stream, only on its torch threads, as before.
"""

from __future__ import annotations

import copy
import logging
import queue
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Callable, Iterator

from animatediff_core.configs import need

log = logging.getLogger(__name__)

TOKENIZERS = ("tokenizer", "tokenizer_2")  # the parts of a pipeline that keep per-call state besides its scheduler
DEFAULT_MAX = 4  # streams by default at most: each holds one call's activations (GBs at SD-1.5's 512x512 on a CPU)


def default_count(threads: int) -> int:
    """One single-thread stream per torch thread, up to DEFAULT_MAX streams sharing the threads evenly."""
    return max(n for n in range(1, DEFAULT_MAX + 1) if threads % n == 0)


def count(requested: int | None, threads: int, device: str) -> int:
    """Streams for an actor of `threads` torch threads: `requested` (it divides `threads`), else `default_count`;
    1 on a GPU."""
    if device == "cuda":
        if requested and requested > 1:
            log.info("--streams %d applies to CPU actors; a GPU actor runs one stream (its rows batch instead)", requested)
        return 1
    return requested or default_count(threads)


class Streams:
    """`n` stream threads over one pipeline, for one actor. `map` runs a function over items at once on the
    streams, each item on a free stream's view of the pipeline, or one after another on the pipeline itself."""

    def __init__(self, n: int, threads: int):
        import torch

        need(n >= 1 and threads % n == 0, f"streams {n}: must divide the actor's torch threads ({threads})")
        self.n = n
        self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="animate-stream") if n > 1 else None
        self._tokenizers: dict[tuple[int, str], tuple[object, object]] = {}  # (stream, part) -> (original, its copy)
        if n > 1:
            torch.set_num_threads(threads // n)  # read by each new thread at its first parallel op
            log.info("%d generation streams of %d torch thread(s) each", n, threads // n)

    def map(self, pipe, fn: Callable, items: list, shared: bool = True) -> Iterator[tuple[object, Exception | None]]:
        """`(fn(p, item), None)`, or `(None, the exception)`, for each item in order, each as soon as it and those
        before it are done. With several streams and `shared`, the items run at once, `p` being `pipe` or a view
        of it; otherwise one after another on `pipe` (nothing runs before the caller asks for it)."""
        if self._pool is None or not shared or len(items) < 2:
            for item in items:
                yield _outcome(lambda: fn(pipe, item))
            return
        free: queue.SimpleQueue = queue.SimpleQueue()
        for i in range(min(self.n, len(items))):
            free.put(pipe if i == 0 else self.view(pipe, i))

        def run(item):
            p = free.get()
            try:
                return fn(p, item)
            finally:
                free.put(p)

        futures = [self._pool.submit(run, item) for item in items]
        try:
            for future in futures:
                yield _outcome(future.result)
        finally:  # a caller that stops early: nothing of this map samples on while it switches weights next
            for future in futures:
                future.cancel()
            wait(futures)

    def view(self, pipe, stream: int):
        """`pipe`'s modules under another pipeline object, with its own scheduler and tokenizers. The tokenizers
        are copied once per stream (~0.1 s each) and kept while the pipeline's own stay the same."""
        v = copy.copy(pipe)  # the modules and config are shared; attributes set on `v` stay on `v`
        v.scheduler = copy.deepcopy(pipe.scheduler)
        for part in TOKENIZERS:
            original = getattr(pipe, part, None)
            if original is None:
                continue
            kept = self._tokenizers.get((stream, part))
            if kept is None or kept[0] is not original:
                kept = self._tokenizers[(stream, part)] = (original, copy.deepcopy(original))
            setattr(v, part, kept[1])
        return v


def _outcome(call: Callable) -> tuple[object, Exception | None]:
    try:
        return call(), None
    except Exception as e:
        return None, e
