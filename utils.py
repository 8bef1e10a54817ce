"""Pieces shared by the entry scripts: atomic file writes and progress reporting.

(Distributed set-up, precision, logging and checkpoint I/O join this module as the training
scripts need them; nothing here is copied between scripts.)
"""

import contextlib
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

logger = logging.getLogger("bert")


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`; renames it onto `path` only if the block
    succeeds, so an interrupted write never leaves a half-written file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def atomic_write_text(path, text):
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


class Progress:
    """A tqdm bar on an interactive terminal; otherwise a log line every `log_seconds`.

    Batch jobs (Slurm, CI) capture stderr into files where a redrawn bar is noise.
    """

    def __init__(self, total, desc, unit="it", disable=False, log_seconds=30.0):
        interactive = sys.stderr.isatty() and not disable
        self.bar = tqdm(total=total, desc=desc, unit=unit, disable=not interactive,
                        unit_scale=True, dynamic_ncols=True)
        self.log = not interactive and not disable
        self.total, self.desc, self.unit = total, desc, unit
        self.done, self.log_seconds = 0, log_seconds
        self.start = self.last_log = time.monotonic()

    def update(self, amount, **postfix):
        self.done += amount
        self.bar.update(amount)
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)
        now = time.monotonic()
        if self.log and now - self.last_log >= self.log_seconds:
            self.last_log = now
            share = f" ({100 * self.done / self.total:.1f}%)" if self.total else ""
            extra = "".join(f", {k} {v}" for k, v in postfix.items())
            logger.info("%s: %s %s%s after %.0f s%s", self.desc, f"{self.done:,.0f}", self.unit,
                        share, now - self.start, extra)

    def close(self):
        self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def setup_logging(level=logging.INFO):
    """Readable log lines on stdout for the entry scripts."""
    logging.basicConfig(level=level, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
