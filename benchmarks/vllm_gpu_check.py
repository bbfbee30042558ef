"""vLLM on a GPU: the fused pair and InRa decode exactly like the transformers backend, graphs on and off.

    python benchmarks/vllm_gpu_check.py                  # float32; --dtype bfloat16 to try serving precision

What no CPU test can show: CUDA graphs (vLLM's default ``FULL_AND_PIECEWISE``: full graphs for decode
batches, piecewise graphs for mixed prefill/decode batches up to the capture size), torch.compile of the
model bodies, and the GPU kernels (the in-place fused add-RMSNorm). Two random tiny Qwen2 models (the test
suite's, head_dim 64, far-apart logits so float rounding cannot flip a greedy token) and an InRa checkpoint
over the first decode 24 prompts of different lengths at λ ∈ {0, 0.5, 1} per request, greedy, with
``max_num_seqs`` 8 and a 64-token step budget so prefills are chunked and mixed into decode batches.
Every engine's tokens must equal the transformers backend's on the same GPU, once with CUDA graphs and
compilation on (vLLM's defaults) and once with ``--enforce-eager``. Prints one line per engine and λ;
exits 1 on any mismatch, 0 with a "skipped" line where there is no CUDA device or no vLLM.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

LAMBDAS = (0.0, 0.5, 1.0)
MODES = {"cuda graphs + compile": {}, "enforce-eager": {"enforce_eager": True}}


def prompts() -> list[str]:
    """24 prompts of 5 to 39 words (the test tokenizer's vocabulary), so prefills differ in length."""
    return [" ".join(["the answer is"] + [f"{(i * 7 + j) % 50} +" for j in range(i + 1)] + ["="]) for i in range(0, 24)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", help="engine and transformers dtype (default float32)")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("vllm_gpu_check: no CUDA device: skipped")
        return 0
    try:
        import vllm  # noqa: F401
    except ImportError:
        print("vllm_gpu_check: vLLM is not installed: skipped (pip install 'thinkctl[vllm]')")
        return 0

    from tests.conftest_vllm import save_random_model, write_inra_checkpoint
    from thinkctl.inra import make_inra_backend
    from thinkctl.rollout.hf import HFBackend
    from thinkctl.rollout.vllm import VLLMBackend
    from thinkctl.sampling import SamplingConfig

    greedy = SamplingConfig(max_new_tokens=32)
    texts = prompts()
    lams = [LAMBDAS[i % len(LAMBDAS)] for i in range(len(texts))]
    failures = 0
    with tempfile.TemporaryDirectory(prefix="thinkctl-vllm-gpu-") as tmp:
        root = Path(tmp)
        base, aligned = save_random_model(root / "base", seed=0), save_random_model(root / "aligned", seed=1)
        inra = write_inra_checkpoint(base, root / "inra", perturb=0.2)
        engines = {"fused pair": (str(base), str(aligned)), "InRa": (str(inra), None)}
        expected = {
            "fused pair": HFBackend.from_paths(str(base), str(aligned), dtype=args.dtype, device="cuda"),
            "InRa": make_inra_backend(inra, dtype=args.dtype, device="cuda"),
        }
        expected = {name: [c.token_ids for c in hf.generate(texts, lams, greedy)] for name, hf in expected.items()}
        torch.cuda.empty_cache()
        for mode, mode_args in MODES.items():
            for name, (model, second) in engines.items():
                backend = VLLMBackend(model, second, dtype=args.dtype, max_model_len=256, max_num_seqs=8,
                                      max_num_batched_tokens=64, gpu_memory_utilization=0.3, progress=False, **mode_args)
                try:
                    got = [c.token_ids for c in backend.generate(texts, lams, greedy)]
                finally:
                    backend.close()
                for lam in LAMBDAS:
                    rows = [i for i, x in enumerate(lams) if x == lam]
                    wrong = [i for i in rows if got[i] != expected[name][i]]
                    failures += len(wrong)
                    status = "ok" if not wrong else f"MISMATCH in prompts {wrong}"
                    print(f"{name:10s} {mode:22s} λ={lam:<4g} {len(rows) - len(wrong)}/{len(rows)} equal to transformers: {status}")
    if failures:
        print(f"vllm_gpu_check: {failures} continuations differ from the transformers backend", file=sys.stderr)
        return 1
    print("vllm_gpu_check: every vLLM continuation equals the transformers backend's")
    return 0


if __name__ == "__main__":  # vLLM spawns engine processes: the guard keeps them from re-running this
    sys.exit(main())
