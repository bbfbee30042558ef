"""Benchmarks as lists of :class:`Problem`, loaded by name from a registry or from local files.

Named benchmarks live in a registry: the hub benchmarks (MATH-500, GSM8K, AIME 2024 and 2025) register
here and load through ``datasets`` for users with a network; other packages register their own (the
generated tiny task registers itself from :mod:`thinkctl.tiny.benchmark`). Every benchmark can also be
loaded from a local JSONL/JSON/parquet file, or a directory of them, which is what offline machines and
the tests use; ``NAME=PATH`` loads local files under a benchmark's name (``aime25=data/aime2025/``), so
records and reports read the same online and offline. Field names are normalised here once, so the
rest of thinkctl sees one schema.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thinkctl.answers import gold_answer
from thinkctl.errors import DataFormatError
from thinkctl.io import iter_jsonl
from thinkctl.prompts import PromptConfig

#: the bare question: what the tiny models were trained on, and the default everywhere
PLAIN = PromptConfig()


@dataclass(frozen=True)
class Problem:
    """One question with a verifiable gold answer; ``level`` is a difficulty grade when known."""

    id: str
    question: str
    answer: str
    level: int | None = None
    source: str = ""


#: ``loader(split, limit, seed)`` → problems; ``limit`` may be None (the benchmark's own default)
BenchmarkLoader = Callable[[str | None, int | None, int], list[Problem]]

_BENCHMARKS: dict[str, BenchmarkLoader] = {}


def register_benchmark(name: str, loader: BenchmarkLoader) -> None:
    """Make ``load_benchmark(name, split, limit, seed)`` call ``loader(split, limit, seed)``."""
    _BENCHMARKS[name] = loader


#: record keys that hold the question, the gold answer and the id, in order of preference
QUESTION_KEYS = ("question", "problem", "prompt")
ANSWER_KEYS = ("answer", "gold", "solution")
ID_KEYS = ("id", "unique_id", "problem_id")


def first_key(record: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    """The first of ``keys`` that ``record`` has (the field a dataset uses for that role), else None."""
    return next((k for k in keys if k in record), None)


def _parse_level(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, int):
        return value
    digits = "".join(ch for ch in str(value) if ch.isdigit())
    return int(digits) if digits else None


def problem_from_record(record: dict[str, Any], index: int, source: str) -> Problem:
    """Normalise one raw record; ``source`` and ``index`` name it in errors (``file:line``)."""
    question_key, answer_key = first_key(record, QUESTION_KEYS), first_key(record, ANSWER_KEYS)
    if question_key is None or answer_key is None:
        missing = "a question field (question/problem/prompt)" if question_key is None else "an answer field (answer/gold/solution)"
        raise DataFormatError(f"{source}: record has no {missing}; keys are {sorted(record)}")
    id_key = first_key(record, ID_KEYS)
    question, raw_answer = record[question_key], record[answer_key]
    for key, value in ((question_key, question), (answer_key, raw_answer)):
        if _is_blank(value):
            raise DataFormatError(
                f"{source}: `{key}` is {'null' if value is None or isinstance(value, float) else 'empty'}; every problem "
                "needs a question and a gold answer (a null gold would be graded as the text 'None', an empty one never matches)"
            )
    answer = gold_answer(str(raw_answer), from_solution=answer_key == "solution")
    if not answer:
        raise DataFormatError(f"{source}: `{answer_key}` {str(raw_answer)[:60]!r} holds no final answer")
    return Problem(
        id=str(record[id_key]) if id_key else str(index),
        question=str(question),
        answer=answer,
        level=_parse_level(record.get("level")),
        source=source,
    )


def _is_blank(value: Any) -> bool:
    """A missing value as datasets write it: null, NaN (pandas/parquet), or text of only whitespace."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip())


def read_local_rows(path: Path, what: str = "benchmark file") -> list[dict[str, Any]]:
    """The raw rows of a local .jsonl, .json or .parquet file (benchmarks and trace datasets alike); ``what``
    names the file in errors."""
    if not path.is_file():
        raise DataFormatError(f"{what} does not exist: {path}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return list(iter_jsonl(path))
    if suffix in (".json", ".parquet"):
        import datasets

        kind = "json" if suffix == ".json" else "parquet"
        try:
            return list(datasets.load_dataset(kind, data_files=str(path), split="train"))
        except Exception as e:  # datasets raises many types for a bad file; name the file instead
            raise DataFormatError(f"could not read {path} as {kind}: {e}") from None
    raise DataFormatError(f"unsupported {what} type {suffix!r} for {path}: use .jsonl, .json or .parquet")


def _load_local(path: Path) -> list[Problem]:
    """A local benchmark file; records are named ``file:line`` (JSONL) or ``file[i]`` in errors."""
    rows = read_local_rows(path)
    if path.suffix.lower() == ".jsonl":
        return [problem_from_record(rec, i, f"{path}:{i}") for i, rec in enumerate(rows, start=1)]
    return [problem_from_record(rec, i, f"{path}[{i}]") for i, rec in enumerate(rows)]


LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


def _prefixed(parts: list[tuple[str, list[Problem]]]) -> list[Problem]:
    """Concatenate the problems of several parts (files, hub configs); with more than one part, each
    id is prefixed by its part's name, since parts number their problems independently."""
    if len(parts) == 1:
        return parts[0][1]
    return [dataclasses.replace(p, id=f"{name}-{p.id}") for name, problems in parts for p in problems]


def _load_path(path: Path) -> list[Problem]:
    """A local file, or every JSONL/JSON/parquet file of a directory (sorted by name, ids prefixed by stem)."""
    if not path.is_dir():
        return _load_local(path)
    files = sorted(f for f in path.iterdir() if f.suffix.lower() in LOCAL_SUFFIXES)
    if not files:
        raise DataFormatError(f"benchmark directory {path} holds no {'/'.join(LOCAL_SUFFIXES)} files")
    return _prefixed([(f.stem, _load_local(f)) for f in files])


#: hub dataset, configs and default split of the named benchmarks; several configs are concatenated
#: (AIME 2025 is two exams, I and II, as two configs of opencompass/AIME2025 with 15 problems each)
HUB_BENCHMARKS: dict[str, dict[str, Any]] = {
    "math500": {"path": "HuggingFaceH4/MATH-500", "configs": (None,), "split": "test"},
    "gsm8k": {"path": "openai/gsm8k", "configs": ("main",), "split": "test"},
    "aime": {"path": "HuggingFaceH4/aime_2024", "configs": (None,), "split": "train"},
    "aime24": {"path": "HuggingFaceH4/aime_2024", "configs": (None,), "split": "train"},
    "aime25": {"path": "opencompass/AIME2025", "configs": ("AIME2025-I", "AIME2025-II"), "split": "test"},
}


def _hub_loader(name: str) -> BenchmarkLoader:
    spec = HUB_BENCHMARKS[name]

    def load(split: str | None, limit: int | None, seed: int) -> list[Problem]:
        import datasets

        parts = []
        for config in spec["configs"]:
            try:
                ds = datasets.load_dataset(spec["path"], config, split=split or spec["split"])
            except Exception as e:  # offline machines raise connection errors of several types
                raise DataFormatError(
                    f"could not load {name} ({spec['path']}{'/' + config if config else ''}) from the hub: {e}. "
                    f"Offline? Pass local files under the benchmark's name: {name}=PATH (a JSONL/JSON/parquet "
                    "file with question/problem and answer fields, or a directory of them)."
                ) from None
            # a single config keeps its 0-based row ids; parts of a multi-config benchmark count problems from 1
            first = 0 if len(spec["configs"]) == 1 else 1
            parts.append((config, [problem_from_record(rec, i, f"{spec['path']}[{i}]") for i, rec in enumerate(ds, first)]))
        return _prefixed(parts)

    return load


_BENCHMARKS.update({name: _hub_loader(name) for name in HUB_BENCHMARKS})


def _split_spec(spec: str) -> tuple[str | None, str]:
    """``NAME=PATH`` → (NAME, PATH); anything else (a name, a path that itself contains "=") → (None, spec)."""
    name, sep, path = spec.partition("=")
    if sep and name and path and spec not in _BENCHMARKS and not Path(spec).expanduser().exists():
        return name, path
    return None, spec


def load_benchmark(spec: str, split: str | None = None, limit: int | None = None, seed: int = 0) -> list[Problem]:
    """Load ``spec``: a registered benchmark (tiny, math500, gsm8k, aime24 (= aime), aime25), a local
    file or directory of files, or ``NAME=PATH`` (local files recorded under NAME).

    ``limit`` keeps the first ``limit`` problems (a fixed prefix, so runs with the same limit compare);
    None keeps them all; a generated benchmark (tiny) generates that many, from ``seed``.
    """
    named, where = _split_spec(spec)
    if named is None and spec in _BENCHMARKS:
        problems = _BENCHMARKS[spec](split, limit, seed)
    else:
        path = Path(where).expanduser()
        if named is not None and not path.exists():
            raise DataFormatError(f"benchmark {named}: no such file or directory {path}")
        if not path.exists():
            raise DataFormatError(f"unknown benchmark {spec!r}: not one of {', '.join(sorted(_BENCHMARKS))} and no such file")
        problems = _load_path(path)
    if not problems:
        raise DataFormatError(f"benchmark {spec!r} has no problems")
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataFormatError(f"benchmark {spec!r} has duplicate problem id {dup!r}; ids must be unique to resume")
    return problems[:limit] if limit else problems


def benchmark_name(spec: str) -> str:
    """The name records carry: a registered benchmark's own name, NAME of ``NAME=PATH``, or a local file's stem."""
    named, where = _split_spec(spec)
    if named is not None:
        return named
    return spec if spec in _BENCHMARKS else Path(where).stem


def sample_problems(problems: list[Problem], n: int, seed: int = 0) -> list[Problem]:
    """A seeded random subset, for calibration splits drawn from a benchmark."""
    if n >= len(problems):
        return list(problems)
    return random.Random(seed).sample(problems, n)


def render_prompt(tokenizer: Any, question: str, prompt: PromptConfig = PLAIN) -> str:
    """The question as the model sees it: ``prompt``'s template and system prompt through the tokenizer's
    chat template, with the generation prompt appended (a ``Question: … Answer:`` frame without one)."""
    messages = prompt.messages(question)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    turns = [f"{m['content']}\n\n" if m["role"] == "system" else f"Question: {m['content']}\nAnswer:" for m in messages]
    return "".join(turns)
