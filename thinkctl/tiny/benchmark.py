"""The generated tiny task as the benchmark ``"tiny"``: ``load_benchmark("tiny", split, limit, seed)``.

Registering from here keeps :mod:`thinkctl.data` free of any knowledge of the tiny package; importing
``thinkctl`` imports this module (see ``thinkctl/__init__.py``), so the name works everywhere.
"""

from __future__ import annotations

from thinkctl.data import Problem, register_benchmark
from thinkctl.tiny.task import generate_problems

#: problems generated when no limit is given
DEFAULT_COUNT = 200


def load_tiny(split: str | None, limit: int | None, seed: int) -> list[Problem]:
    """``limit`` (default 200) problems of ``split`` ("train" or "test", default test) generated from ``seed``."""
    return [
        Problem(p.id, p.question, p.answer, p.level, "tiny")
        for p in generate_problems(limit or DEFAULT_COUNT, seed=seed, split=split or "test")
    ]


register_benchmark("tiny", load_tiny)
