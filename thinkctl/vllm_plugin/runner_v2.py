"""Model Runner V2 support for the dual-stream models: tell ``compute_logits`` which request each row is.

Under V2 the λ processor keeps λ per request *slot* (:mod:`thinkctl.vllm_plugin.lam`), but the
logits rows ``compute_logits`` receives are in this step's batch order, which V2 reshuffles every
step, and V2 runs logits processors only after ``compute_logits``. The one per-step hook V2 gives a
model before its forward pass is the model's own ``ModelState`` (``model.get_model_state_cls()``, as
vLLM's LongCat n-gram and diffusion Gemma models use it): :class:`LambdaModelState` is vLLM's default
state plus one line, which publishes ``input_batch.expanded_idx_mapping`` (logits row → request slot)
to the model's λ table.

Imported only by Model Runner V2 (through ``get_model_state_cls``); the V1 and CPU runners never
import this module.
"""

from __future__ import annotations

from typing import Any

from vllm.v1.worker.gpu.input_batch import InputBatch
from vllm.v1.worker.gpu.model_states.default import DefaultModelState
from vllm.v1.worker.gpu.states import RequestState


class LambdaModelState(DefaultModelState):
    """vLLM's default V2 model state; also records each step's logits-row → request-slot map."""

    def prepare_inputs(self, input_batch: InputBatch, req_states: RequestState) -> dict[str, Any]:
        table = getattr(self.model, "lambdas", None)
        if table is not None:
            table.row_slots = input_batch.expanded_idx_mapping
        return super().prepare_inputs(input_batch, req_states)
