"""What the model is asked: the template around each question, and an optional system prompt.

Evaluations of R1-style checkpoints add DeepSeek's math instruction to every question, in the user
turn after the question ("Please reason step by step, and put your final answer within \\boxed{}.";
DeepSeek-R1's usage recommendations also advise against a system prompt). A model evaluated without
it answers in whatever format it likes, and a grader that reads ``\\boxed{}`` then under-counts it.
The tiny models were trained on bare questions, so the default template is the bare question; the
presets are opt-in, and the ``evals/`` suites for real checkpoints name ``r1-math``.

The template makes the user turn (``{question}`` is replaced as plain text, so LaTeX braces in a
template need no escaping); the tokenizer's chat template then renders the conversation, with the
system prompt when one is given. Runs record both (``run.json``), so a result says what was asked.
"""

from __future__ import annotations

from dataclasses import dataclass

from thinkctl.config import option
from thinkctl.errors import ConfigError

QUESTION = "{question}"

#: named templates: ``--prompt-template r1-math``
PROMPT_PRESETS: dict[str, str] = {
    "plain": QUESTION,
    "r1-math": QUESTION + "\nPlease reason step by step, and put your final answer within \\boxed{}.",
}


@dataclass(frozen=True)
class PromptConfig:
    """The user turn around each question, and the system prompt; composed by sweeps and ``generate``."""

    prompt_template: str = option(
        "plain", f"the user turn: a text containing {QUESTION}, or a preset: {', '.join(PROMPT_PRESETS)} "
                 "(plain: the bare question; r1-math: DeepSeek-R1's math instruction after it)"
    )
    system_prompt: str | None = option(None, "system prompt for the chat template (DeepSeek advises none for R1 models)")

    def __post_init__(self) -> None:
        self.template  # noqa: B018 (validates: a bad template fails where the config is built)

    @property
    def template(self) -> str:
        """The template text: a preset's, or the given text."""
        text = PROMPT_PRESETS.get(self.prompt_template, self.prompt_template)
        if QUESTION not in text:
            raise ConfigError(
                f"prompt_template {self.prompt_template!r} is neither a preset ({', '.join(PROMPT_PRESETS)}) "
                f"nor a text containing {QUESTION}"
            )
        return text

    def messages(self, question: str) -> list[dict[str, str]]:
        """The conversation for ``question``: the system prompt (if any), then the templated user turn."""
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*system, {"role": "user", "content": self.template.replace(QUESTION, question)}]
