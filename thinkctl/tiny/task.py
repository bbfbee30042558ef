"""The tiny default task: multi-step arithmetic word problems with a verifiable integer answer.

Every problem can be answered in two styles, which is what makes a reference/aligned pair. Both
start with the same worked steps and then differ only in how many redundant verification passes
(each a full redo of the steps) come before ``</think>``:

* the *long* trace over-thinks like an R1-style model: 1, 2 or 3 passes (probabilities 0.2, 0.3,
  0.5), so greedy decoding of the reference re-checks three times;
* the *short* trace is the fast thinker: no pass, except that harder problems get one quick check
  with probability 0.3 per extra step (level 2: 0.3, level 3: 0.6).

Because the styles share everything but these stop-or-check decisions, fusing the two models moves
one decision at a time as λ rises, so thinking shortens in steps rather than in one jump; and since
the aligned model still sometimes checks, extrapolating (λ > 1) shortens it further. Numbers stay
small (operands 2–9, every intermediate value 0–59) so a tiny model learns the arithmetic on CPU.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, replace

NAMES = ["Ana", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kim", "Leo", "Mia", "Noor", "Omar", "Pia"]
OBJECTS = ["apples", "marbles", "stickers", "coins", "books", "shells", "cards", "pens"]
ADD_PHRASES = ["finds {n} more", "buys {n} more", "gets {n} more", "wins {n} more"]
SUB_PHRASES = ["gives {n} to {friend}", "loses {n}", "sells {n}", "gives away {n}"]
ORDINALS = ["First", "Second", "Third", "Fourth"]
CHECK_OPENERS = ("Wait, let me double-check.", "Hmm, let me verify that again.", "Let me check once more.")
LONG_PASS_WEIGHTS = (0.2, 0.3, 0.5)  # P(1, 2, 3 verification passes) in a long trace
SHORT_CHECK_PER_LEVEL = 0.3  # P(one pass) in a short trace grows by this per step beyond the first

TASK_VERSION = 2  # part of every build digest: bump it when problems or traces change, to retrain
MAX_VALUE = 59
MIN_OPERAND, MAX_OPERAND = 2, 9
MAX_LEVEL = 3
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass(frozen=True)
class Step:
    """One operation: ``before op operand = after``, with the sentence that states it."""

    op: str
    operand: int
    before: int
    after: int
    sentence: str

    @property
    def equation(self) -> str:
        return f"{self.before} {self.op} {self.operand} = {self.after}"


def clause(problem: TinyProblem, i: int) -> str:
    """Operation ``i`` as the question states it, e.g. ``"Second, Ana buys 8 more"``.

    The traces restate each clause verbatim: copying text that follows a unique marker is the first
    thing a small transformer learns (an induction head), whereas fetching "the k-th operand" from a
    free-form question is not learnable by a tiny model in a few CPU minutes.
    """
    return f"{ORDINALS[i]}, {problem.name} {problem.steps[i].sentence}"


@dataclass(frozen=True)
class TinyProblem:
    """A generated problem; ``level`` is its number of operations (the difficulty grade)."""

    id: str
    question: str
    answer: str
    level: int
    name: str
    obj: str
    start: int
    steps: tuple[Step, ...]


def _split_of(question: str) -> str:
    """Assign a question to a split by hash, so train and test can never share a question."""
    digest = hashlib.sha256(question.encode()).digest()
    return "test" if digest[0] < 26 else "train"  # ~10% test


def _make_problem(rng: random.Random) -> TinyProblem:
    name, friend = rng.sample(NAMES, 2)
    obj = rng.choice(OBJECTS)
    level = rng.randint(1, MAX_LEVEL)
    value = rng.randint(5, 30)
    start = value
    steps: list[Step] = []
    for _ in range(level):
        n = rng.randint(MIN_OPERAND, MAX_OPERAND)
        can_add, can_sub = value + n <= MAX_VALUE, value - n >= 0
        if can_add and (not can_sub or rng.random() < 0.5):
            phrase, op, new = rng.choice(ADD_PHRASES), "+", value + n
        else:
            phrase, op, new = rng.choice(SUB_PHRASES), "-", value - n
        steps.append(Step(op, n, value, new, phrase.format(n=n, friend=friend)))
        value = new
    problem = TinyProblem("", "", str(value), level, name, obj, start, tuple(steps))
    sentences = [f"{name} has {start} {obj}."]
    sentences += [f"{clause(problem, i)}." for i in range(level)]
    sentences.append(f"How many {obj} does {name} have now?")
    return replace(problem, question=" ".join(sentences))


def generate_problems(n: int, seed: int = 0, split: str = "test") -> list[TinyProblem]:
    """``n`` distinct problems of one split ("train" or "test"), deterministic in ``seed``.

    Ids are ``tiny-<split>-<seed>-<k>``, stable for a given seed, so sweeps over the same problems resume.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = random.Random(f"tiny-{seed}-{split}")
    seen: set[str] = set()
    out: list[TinyProblem] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 200 * n + 10_000:
            raise RuntimeError(f"could not generate {n} distinct {split} problems; the task space is too small")
        p = _make_problem(rng)
        if p.question in seen or _split_of(p.question) != split:
            continue
        seen.add(p.question)
        out.append(TinyProblem(f"tiny-{split}-{seed}-{len(out)}", p.question, p.answer, p.level, p.name, p.obj, p.start, p.steps))
    return out


def _steps_text(problem: TinyProblem) -> str:
    """The worked steps, e.g. ``"First, Ana buys 8 more: 5 + 8 = 13. Second, …"``."""
    return " ".join(f"{clause(problem, i)}: {s.equation}." for i, s in enumerate(problem.steps))


def _trace(problem: TinyProblem, passes: int) -> str:
    """The steps, ``passes`` verification passes (each opener used once, in order), the boxed answer."""
    steps = _steps_text(problem)
    checks = [f"{CHECK_OPENERS[i]} {problem.start}. {steps} Yes, that is right." for i in range(passes)]
    body = " ".join([f"{problem.start}. {steps}", *checks])
    return f"{THINK_OPEN} {body} {THINK_CLOSE} The answer is \\boxed{{{problem.answer}}}."


def short_trace(problem: TinyProblem, rng: random.Random) -> str:
    """The fast thinker's response: the steps once; a harder problem sometimes gets one check."""
    return _trace(problem, int(rng.random() < SHORT_CHECK_PER_LEVEL * (problem.level - 1)))


def long_trace(problem: TinyProblem, rng: random.Random) -> str:
    """The over-thinker's response: the same steps, then 1–3 passes that redo them all.

    Each pass repeats the steps verbatim, so what is learnt on short traces (copying each clause,
    chaining the running value, the arithmetic) carries over unchanged; the extra length is pure
    re-checking, the way an over-thinking model spends its tokens.
    """
    return _trace(problem, rng.choices((1, 2, 3), weights=LONG_PASS_WEIGHTS)[0])
