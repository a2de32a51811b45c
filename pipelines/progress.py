"""The project's own progress, on the driver: rows done of the total, by outcome, rate and time left.

    generation: 12/48 rows (ok 10, error 1, skipped 1), 0.21 videos/s, 2m51s left

On a terminal it is one tqdm bar, redrawn in place; otherwise (a log file, CI, `ray job logs`) one such
line every `interval` seconds and a last one at the end. The first video's path is printed as soon as
it exists. Counts come from two places: what the driver sees itself (`add`), and a `Tally` actor that
stages and training workers report to (`tally.add.remote(...)`: fire and forget, so a report never slows
a row), polled by the bar's thread. The tally is for display only: the job's summary and exit code come
from the metadata, as before.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import Counter

log = logging.getLogger(__name__)

INTERVAL = 10.0  # seconds between plain progress lines (not on a terminal), when something changed
HEARTBEAT = 60.0  # seconds between plain lines when nothing changed (the job is still alive)
REFRESH = 0.5  # seconds between redraws of the bar (on a terminal)
OUTCOMES = ("ok", "error", "skipped")


def tally():
    """A `Tally` actor (no CPU) on this node; Ray must be initialized."""
    import ray

    @ray.remote(num_cpus=0, max_restarts=0)
    class Tally:
        """What workers report: counts by outcome, the first output's URI, a short note (e.g. the loss)."""

        def __init__(self):
            self.counts, self.first, self.note = Counter(), "", ""

        def add(self, counts: dict, first: str = "", note: str = "") -> None:
            self.counts.update(counts)
            self.first = self.first or first
            self.note = note or self.note

        def read(self) -> tuple[dict, str, str]:
            return dict(self.counts), self.first, self.note

    return Tally.remote()


def duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s" if rest >= 60 else f"{rest}s"


class Progress:
    """Progress of one job stage (`what`: "generation", "training", "scoring") over `total` rows.

    `unit` names what the rate counts ("videos": rows that were generated, ok or error; skipped rows
    are done but cost nothing, so they do not enter the rate). `done` starts the count (a resumed
    training run starts at its step). Use as a context manager; `tally` (an actor from `tally()`)
    is polled while it runs."""

    def __init__(self, what: str, total: int, unit: str = "videos", noun: str = "rows", tally=None,
                 done: int = 0, stream=None, interval: float = INTERVAL):
        self.what, self.total, self.unit, self.noun, self.tally = what, int(total), unit, noun, tally
        self.stream = stream or sys.stderr
        self.interval, self.start, self.initial = interval, time.time(), int(done)
        self.own: Counter = Counter()  # what the driver counted itself
        self.polled: tuple[dict, str, str] = ({}, "", "")
        self.first_shown, self._printed = False, ""
        self._since: tuple[float, int] | None = None  # (time, items worked) when the first item was done
        self._last: tuple[float, int] = (self.start, 0)  # when the count last changed
        self._stop = threading.Event()
        self._bar = None
        self._thread = threading.Thread(target=self._loop, name=f"progress-{what}", daemon=True)

    # -- counting ---------------------------------------------------------------------------------
    def add(self, **counts: int) -> None:
        self.own.update({k: int(v) for k, v in counts.items() if v})

    def counts(self) -> Counter:
        out = Counter(self.own)
        out.update(self.polled[0])
        return out

    def line(self) -> str:
        """`12/48 rows (ok 10, error 1, skipped 1), 0.21 videos/s, 2m51s left`."""
        c = self.counts()
        done = min(self.total, self.initial + sum(c[k] for k in OUTCOMES)) if self.total else self.initial + sum(c.values())
        worked = c["ok"] + c["error"]
        elapsed = time.time() - self.start
        parts = [f"{done}/{self.total} {self.noun}"]
        if any(c[k] for k in ("error", "skipped")):
            parts[0] += " (" + ", ".join(f"{k} {c[k]}" for k in OUTCOMES if c[k] or k == "ok") + ")"
        rate = self.rate(worked)
        if worked:
            parts.append(f"{rate:.2f} {self.unit}/s" if rate >= 0.01 else f"{elapsed / worked:.0f} s per {self.unit.rstrip('s')}")
            left = self.total - done
            parts.append(f"{duration(left / rate)} left" if left > 0 and rate > 0 else "")
        else:
            parts.append(f"{duration(elapsed)} elapsed")
        note = self.polled[2]
        return ", ".join(p for p in (*parts, note) if p)

    def rate(self, worked: int) -> float:
        """Items per second between the first item done and the latest (the start-up before the first
        item, loading models, is not work); from the start while only one item is done."""
        now = time.time()
        if worked and self._since is None:
            self._since = (now, worked)
        if worked != self._last[1]:
            self._last = (now, worked)
        if self._since is not None and self._last[1] > self._since[1] and self._last[0] > self._since[0]:
            return (self._last[1] - self._since[1]) / (self._last[0] - self._since[0])
        return worked / max(self._last[0] - self.start, 1e-9) if worked else 0.0

    # -- display ----------------------------------------------------------------------------------
    def __enter__(self) -> "Progress":
        self._redirect = None
        if self.stream.isatty():
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._bar = tqdm(total=self.total, initial=self.initial, desc=self.what, file=self.stream, leave=True,
                             dynamic_ncols=True, bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")
            self._redirect = logging_redirect_tqdm()  # log lines above the bar, not through it
            self._redirect.__enter__()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._poll()
        self._show(final=True)
        if self._bar is not None:
            self._bar.close()
            self._redirect.__exit__(None, None, None)

    def _loop(self) -> None:
        last_line, last_text = time.time(), ""
        while not self._stop.wait(REFRESH):
            self._poll()
            text, now = self.line(), time.time()
            changed = text.split(", ")[0] != last_text.split(", ")[0]
            due = now - last_line >= (self.interval if changed else HEARTBEAT)
            if self._bar is not None or due or (self.polled[1] and not self.first_shown):  # the first video at once
                self._show()
                last_line, last_text = now, text

    def _poll(self) -> None:
        if self.tally is None:
            return
        import ray

        try:
            self.polled = ray.get(self.tally.read.remote(), timeout=5)
        except Exception as e:  # display only: a lost tally never stops a job
            log.debug("progress tally unavailable: %s", e)

    def _show(self, final: bool = False) -> None:
        first = self.polled[1]
        if first and not self.first_shown:
            self.first_shown = True
            self._print(f"first video: {first}")
        text = self.line()
        if self._bar is not None:
            c = self.counts()
            self._bar.n = min(self.total, self.initial + sum(c[k] for k in OUTCOMES))
            self._bar.set_postfix_str(text, refresh=True)
        elif (not final or self.total) and not (final and text == self._printed):  # the last line once
            self._printed = text
            self._print(f"{self.what}: {text}")

    def _print(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)
