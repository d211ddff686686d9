"""A training progress display (tqdm when installed, else one line per update) that only rank 0 shows."""

from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


class Progress:
    """Shows step, loss and tokens/s for steps ``start..total``; silent unless ``enabled`` (rank 0)."""

    def __init__(self, total: int, start: int = 0, enabled: bool = True, desc: str = "train",
                 print_every: int = 1) -> None:
        self.enabled, self.total, self.step, self.print_every = enabled, total, start, max(1, print_every)
        self._bar = None
        self._t0 = time.perf_counter()
        self.tokens, self.seconds = 0, 0.0  # over the steps run here, for ``tokens_per_second``
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self._bar = tqdm(total=total, initial=start, desc=desc, dynamic_ncols=True, file=sys.stdout)

    def update(self, loss: float, tokens: int) -> None:
        """Record one finished step that consumed ``tokens`` tokens (globally) at ``loss``."""
        now = time.perf_counter()
        rate = tokens / max(now - self._t0, 1e-9)
        self.tokens += tokens
        self.seconds += now - self._t0
        self._t0 = now
        self.step += 1
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{rate:,.0f}", refresh=False)
            self._bar.update(1)
        elif self.step % self.print_every == 0 or self.step == self.total:
            print(f"step {self.step}/{self.total}  loss {loss:.4f}  tokens/s {rate:,.0f}", flush=True)

    @property
    def tokens_per_second(self) -> float:
        """Mean throughput of the steps recorded so far (0 before the first)."""
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def close(self) -> None:
        """Finish the bar (no-op for plain prints)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
