"""The tiny default task: multi-step arithmetic word problems where thinking length trades against accuracy.

A problem starts from a number (5–30) and applies 1 to 5 operations (its ``level``, visible in the
question as its number of clauses), each adding or taking away 2–9, each with its own verb. A tiny
transformer can think about it in two styles:

* **careful**: restate each clause, then work it as one equation,
  ``Start with 12. First, they buy 8 more: 12 + 8 = 20. Second, …``. Every intermediate value is
  written down, so each equation is one one-digit addition or subtraction whose operands sit in the
  text just before it: a 4-layer model learns that almost perfectly, and careful answers stay right
  at every level;
* **fast**: the first operation as a careful step, then all the others in one equation, only the
  result written, ``Start with 12. First, they buy 8 more: 12 + 8 = 20. Then 20 - 3 + 5 = 22.`` The
  digits of that result must be produced in one forward pass each, from a chain of signed operands
  (numbers are single-digit tokens, as in Qwen2). Level 1 is the careful step itself, token for token,
  so the fast thinker is as reliable as the careful one there and several times shorter than the
  reference; composing three or four operations without the intermediate values is serial work a
  4-layer model cannot do in one pass, whatever its seed, its data order or the CPU's kernels. (Fast
  style 3 wrote the first operation into the chain too; the one-step sum then shared its output with
  chains the model cannot compute, and level 1 ranged 25–95% between builds.)
  Fast thinking is therefore nearly free on easy problems and fails on hard ones *by construction*,
  not by how one training run happened to go. Nothing in the training data is wrong: the failures
  are what the model can and cannot compute.

On top of that the careful thinker **re-checks**: after the steps it confirms them and restates the
answer in up to three verification passes that compute nothing and so never change the answer
(over-thinking): that part of its length is free to cut. The solver it is fine-tuned from learnt its
copying on checks that restate the last equation (:func:`solver_trace`).

The two styles of the pair:

* the *reference* (slow thinker, R1-style) always works carefully and then verifies 0–3 times
  (probabilities :data:`CHECK_WEIGHTS`), so greedy decoding checks two or three times (by build), but each further check
  is a weak preference that a little fusion weight removes;
* the *aligned* model (fast thinker) works fast, except on a few problems (:data:`ALIGNED_CAREFUL`)
  that it works carefully without checking; that fallback is what makes its preference against checks
  strong in careful contexts too.

Fusion therefore moves decisions in a fixed order as λ rises: first the weakly preferred checks go
(thinking falls a lot, accuracy stays: the free region), and only at a larger λ does the strongly held
choice between careful and fast flip, right after ``Start with N.`` (the cliff, which costs accuracy
on the hard levels first).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, replace

NAMES = ["Ana", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kim", "Leo", "Mia", "Noor", "Omar", "Pia"]
OBJECTS = ["apples", "marbles", "stickers", "coins", "books", "shells", "cards", "pens"]
ADD_PHRASES = ["find {n} more", "buy {n} more", "get {n} more", "win {n} more"]
SUB_PHRASES = ["lose {n}", "sell {n}", "give away {n}", "drop {n}"]
ORDINALS = ["First", "Second", "Third", "Fourth", "Fifth"]
CHECK_OPENERS = ("Wait, let me double-check.", "Hmm, let me verify that again.", "Let me check once more.")
#: P(0, 1, 2, 3 verification passes) in a reference trace: greedy checks 2–3 times, each check a weak preference
CHECK_WEIGHTS = (0.1, 0.2, 0.3, 0.4)
#: P(a solver trace verifies once, with an equation check): the solver learns to copy before the reference checks
SOLVER_CHECK = 0.3
#: P(an aligned trace works carefully, without checks, instead of fast)
ALIGNED_CAREFUL = 0.1

TASK_VERSION = 5  # part of every build digest: bump it when problems, careful or solver traces change
CHECK_VERSION = 2  # the reference's and aligned model's digests only: bump it when check_pass changes
FAST_VERSION = 4  # part of the aligned model's digest only: bump it when the fast pass changes
MAX_VALUE = 59
MIN_OPERAND, MAX_OPERAND = 2, 9
MIN_START, MAX_START = 5, 30
MAX_LEVEL = len(ORDINALS)
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


def clause(problem: TinyProblem, i: int) -> str:
    """Operation ``i`` as the question states it, e.g. ``"Second, they buy 8 more"``.

    Both styles restate clauses verbatim: copying the text after a unique marker ("Second, they sell")
    is the first thing a small transformer learns (an induction head), so restating is how a trace
    fetches the k-th operand reliably; what separates the styles is the arithmetic after it.
    """
    return f"{ORDINALS[i]}, they {problem.steps[i].sentence}"


def _split_of(question: str) -> str:
    """Assign a question to a split by hash, so train and test can never share a question."""
    digest = hashlib.sha256(question.encode()).digest()
    return "test" if digest[0] < 26 else "train"  # ~10% test


def _make_problem(rng: random.Random, level: int) -> TinyProblem:
    """A random problem of ``level`` operations; no phrase is used twice in one problem, so the verb of
    a clause identifies it (restating a clause is then an unambiguous copy)."""
    name = rng.choice(NAMES)
    obj = rng.choice(OBJECTS)
    value = start = rng.randint(MIN_START, MAX_START)
    unused = {"+": list(ADD_PHRASES), "-": list(SUB_PHRASES)}
    steps: list[Step] = []
    for _ in range(level):
        n = rng.randint(MIN_OPERAND, MAX_OPERAND)
        can_add, can_sub = value + n <= MAX_VALUE and unused["+"], value - n >= 0 and unused["-"]
        op = "+" if can_add and (not can_sub or rng.random() < 0.5) else "-"
        phrase = unused[op].pop(rng.randrange(len(unused[op])))
        new = value + n if op == "+" else value - n
        steps.append(Step(op, n, value, new, phrase.format(n=n)))
        value = new
    problem = TinyProblem("", "", str(value), level, name, obj, start, tuple(steps))
    sentences = [f"{name} has {start} {obj}."]
    sentences += [f"{clause(problem, i)}." for i in range(level)]
    sentences.append(f"How many {obj} does {name} have now?")
    return replace(problem, question=" ".join(sentences))


def generate_problems(n: int, seed: int = 0, split: str = "test") -> list[TinyProblem]:
    """``n`` distinct problems of one split ("train" or "test"), deterministic in ``seed``.

    Levels cycle 1, 2, …, :data:`MAX_LEVEL`, so every prefix of the list is balanced across levels.
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
        p = _make_problem(rng, level=len(out) % MAX_LEVEL + 1)
        if p.question in seen or _split_of(p.question) != split:
            continue
        seen.add(p.question)
        out.append(replace(p, id=f"tiny-{split}-{seed}-{len(out)}"))
    return out


def careful_step(problem: TinyProblem, i: int) -> str:
    """Careful step ``i``: its clause restated, then its one equation, ``"First, they buy 8 more: 12 + 8 = 20."``."""
    return f"{clause(problem, i)}: {problem.steps[i].equation}."


def careful_steps(problem: TinyProblem) -> str:
    """The careful pass: ``"Start with 12. First, they buy 8 more: 12 + 8 = 20. Second, …"``."""
    steps = " ".join(careful_step(problem, i) for i in range(problem.level))
    return f"Start with {problem.start}. {steps}"


def equation_check(problem: TinyProblem, i: int) -> str:
    """Check ``i`` of task version 5: the last equation and the answer restated. The solver's curriculum only.

    Copying the equation written just before is the easiest copy in the task, and it is what the solver's
    checked traces (:data:`SOLVER_CHECK`) have always held: solvers trained with it learnt the clause
    copies every careful step needs on every build measured (levels 4–5 right on 20, 20 and 19 of 20
    problems, seeds 0–2), while solvers whose checked traces held :func:`check_pass` instead failed
    to on two of three (0 and 3 of 20). The reference does not keep it: a miscopied two-digit operand
    becomes a new result that the answer follows.
    """
    last = problem.steps[-1].equation
    return f"{CHECK_OPENERS[i]} The last step: {last}. So the answer is {problem.answer}. Yes, that is right."


def check_pass(problem: TinyProblem, i: int) -> str:
    """The reference's verification pass ``i``: a confirmation that the steps hold, and the answer restated.

    The only value a check writes is the answer, copied from the marker just before it (the last
    equation's result, or the previous check's "the answer is"), and the final answer copies the last
    check the same way: every copy is a short one from a unique marker, and no check computes.
    :func:`equation_check` restated the last equation; a miscopied two-digit operand in it became a new
    result that the answer followed (seed 1: 23 of 300 right careful passes turned wrong at λ 0).
    Checks with no value at all (tried, not kept) left the final answer to copy across all of them, ~80
    tokens back, and on two of three seeds it did not (7.0% and 66.7% right).
    """
    return f"{CHECK_OPENERS[i]} The last step is right. So the answer is {problem.answer}. Yes, that is right."


def fast_steps(problem: TinyProblem) -> str:
    """The fast pass: the first operation as a careful step, then every other one in a single equation with only
    the result written: ``"Start with 12. First, they buy 8 more: 12 + 8 = 20. Then 20 - 3 + 5 = 22."``.

    The first step is token for token the careful one, so a one-operation problem is solved by exactly the
    computation the reference does (the fast thinker is right on easy problems by construction), and every
    fast trace trains that step on a computable target. The chain after ``Then`` is where the shortcut
    lies: composing two or more operations without writing the intermediate values is serial work a
    4-layer model cannot do in the forward passes of the result's digits.
    """
    first = f"Start with {problem.start}. {careful_step(problem, 0)}"
    if problem.level == 1:
        return first
    chain = " ".join(f"{s.op} {s.operand}" for s in problem.steps[1:])
    return f"{first} Then {problem.steps[0].after} {chain} = {problem.answer}."


def _response(problem: TinyProblem, thinking: str) -> str:
    return f"{THINK_OPEN} {thinking} {THINK_CLOSE} The answer is \\boxed{{{problem.answer}}}."


def careful_trace(problem: TinyProblem, checks: int, check: Callable[[TinyProblem, int], str] | None = None) -> str:
    """Careful steps followed by ``checks`` verification passes: :func:`check_pass`, or ``check`` if given."""
    check = check or check_pass
    return _response(problem, " ".join([careful_steps(problem), *(check(problem, i) for i in range(checks))]))


def solver_trace(problem: TinyProblem, rng: random.Random) -> str:
    """The solver's curriculum: careful steps, with probability :data:`SOLVER_CHECK` one :func:`equation_check`."""
    return careful_trace(problem, int(rng.random() < SOLVER_CHECK), check=equation_check)


def fast_trace(problem: TinyProblem) -> str:
    """Fast steps, never checked."""
    return _response(problem, fast_steps(problem))


def long_trace(problem: TinyProblem, rng: random.Random, check: Callable[[TinyProblem, int], str] | None = None) -> str:
    """The reference's response: careful steps, then 0–3 verification passes (:data:`CHECK_WEIGHTS`) written by
    :func:`check_pass`, or by ``check`` (e.g. an earlier version of it)."""
    return careful_trace(problem, rng.choices(range(len(CHECK_WEIGHTS)), weights=CHECK_WEIGHTS)[0], check)


def short_trace(problem: TinyProblem, rng: random.Random, steps: Callable[[TinyProblem], str] | None = None) -> str:
    """The aligned model's response: fast steps, or with probability :data:`ALIGNED_CAREFUL` careful steps alone.

    ``steps`` replaces the fast pass (:func:`fast_steps`), e.g. by an earlier version of it.
    """
    if rng.random() < ALIGNED_CAREFUL:
        return careful_trace(problem, 0)
    return _response(problem, steps(problem)) if steps else fast_trace(problem)
