"""Set environment variables for the child processes a block starts, then put them back.

Pipeline steps and engines inherit the parent's environment, so settings and the trace
context reach them through ``os.environ``; the block must leave it as it found it, because
the same process (a test, a DAG task, ``make run``) goes on to do other work.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager


@contextmanager
def overlaid(values: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set inside the block; the old values (or their
    absence) come back after it, also when it raises."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
