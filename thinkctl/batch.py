"""Token rows → model inputs: padding, labels and position ids, the same way for every job.

Training (TrRa, InRa, the tiny build) pads on the right and masks the prompt out of the labels;
generation pads on the left so every row's next token sits in the last column. Position ids count
real tokens only, so a padded row sees the positions it would see alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: label value that losses skip (``torch.nn.CrossEntropyLoss``'s default ``ignore_index``)
IGNORE_INDEX = -100

#: a training example: prompt + response token ids, and how many of them are the prompt
Example = tuple[Sequence[int], int]


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a padded batch (left or right): 0 at each row's first real token, pads get 0 too."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def pad(rows: Sequence[Sequence[int]], pad_id: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of rows padded to the longest, on the right (or the left)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, span] = torch.as_tensor(r, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (:data:`IGNORE_INDEX` on prompt and padding)."""
    input_ids, attention_mask = pad([ids for ids, _ in examples], pad_id)
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    for i, (_, n_prompt) in enumerate(examples):
        labels[i, :n_prompt] = IGNORE_INDEX
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def encode(tokenizer: object, prompt: str, response_ids: Sequence[int], max_length: int) -> Example:
    """An :data:`Example`: the rendered prompt's tokens then the response's, cut to ``max_length``."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    return (prompt_ids + list(response_ids))[:max_length], min(len(prompt_ids), max_length)


def encode_text(tokenizer: object, prompt: str, response: str, max_length: int) -> Example:
    """:func:`encode` for a response given as text (a dataset's, not generated here): tokenized and closed with
    EOS, so the model learns to stop where the text ends."""
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    return encode(tokenizer, prompt, response_ids + [tokenizer.eos_token_id], max_length)  # type: ignore[attr-defined]
