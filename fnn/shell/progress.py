"""Progress display for ``Model.fit``/``evaluate``/``predict``.

On a terminal: a tqdm bar with live loss/metrics and steps/s, refreshed at most every
``interval`` seconds (the only moments the device is synchronised). Otherwise: one line
when the epoch ends. Nothing at ``verbose=0``.

>>> import io
>>> out = io.StringIO()
>>> p = Progress(3, desc="Epoch 1/1", verbose=1, file=out)
>>> p.update(3, {"loss": 0.5})
>>> p.close({"loss": 0.25, "accuracy": 0.875})
>>> out.getvalue().startswith("Epoch 1/1 - 3 steps")
True
>>> "loss: 0.2500 - accuracy: 0.8750" in out.getvalue()
True
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping

import numpy as np


def format_value(value) -> str:
    """Keras's number style: 4 decimals, scientific notation for tiny values."""
    value = float(np.asarray(value))
    return f"{value:.4e}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"


def format_logs(logs: Mapping | None) -> str:
    """``"loss: 0.1234 - accuracy: 0.9500"``."""
    if not logs:
        return ""
    return " - ".join(f"{k}: {format_value(v)}" for k, v in logs.items() if np.ndim(v) == 0)


def is_tty(file) -> bool:
    """Whether ``file`` is an interactive terminal (the progress bar redraws only there)."""
    isatty = getattr(file, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # closed stream
        return False


class Progress:
    """One progress display: ``update(step, logs)`` after each step, ``close(logs)`` at the end.

    ``verbose``: 0 silent; 1 a bar on a TTY, else one final line; 2 one final line.
    ``logs`` may be lazy: they are read only when the display refreshes.
    """

    def __init__(
        self,
        total: int | None,
        *,
        desc: str = "",
        verbose: int | str = 1,
        interval: float = 0.2,
        file=None,
        final_line: bool = True,
    ):
        self.total = total
        self.desc = desc
        self.file = sys.stdout if file is None else file
        self.interval = interval
        self.final_line = final_line
        self.start = time.perf_counter()
        self._last = self.start
        self.steps = 0
        verbose = 1 if verbose == "auto" else int(verbose)
        self.mode = (
            None if verbose == 0 else ("bar" if verbose == 1 and is_tty(self.file) else "line")
        )
        self._bar = None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total, desc=desc, unit="step", file=self.file, dynamic_ncols=True, leave=True
            )

    def update(self, step: int, logs: Mapping | None = None) -> None:
        self.steps = step
        if self._bar is None:
            return
        now = time.perf_counter()
        if now - self._last < self.interval:
            return
        self._last = now
        if logs is not None:
            self._bar.set_postfix_str(format_logs(logs), refresh=False)
        self._bar.update(step - self._bar.n)

    def close(self, logs: Mapping | None = None) -> None:
        elapsed = time.perf_counter() - self.start
        if self._bar is not None:
            if self.total is not None:
                self.steps = max(self.steps, self.total)
            if logs:
                self._bar.set_postfix_str(format_logs(logs), refresh=False)
            self._bar.update(self.steps - self._bar.n)
            self._bar.close()
            self._bar = None
        elif self.mode == "line" and self.final_line:
            steps = self.steps or self.total or 0
            per_step = elapsed / steps * 1e3 if steps else 0.0
            parts = [self.desc, f"{steps} steps", f"{elapsed:.2f}s", f"{per_step:.2f}ms/step"]
            text = format_logs(logs)
            if text:
                parts.append(text)
            print(" - ".join(p for p in parts if p), file=self.file, flush=True)
        self.mode = None
