"""Quantisation of Gemma 3 270M: size, speed and quality of every form, in one run.

Rows: the GGUF as shipped (Q4_K_M), the F16 GGUF SutazAI writes from its HF copy, Q8_0 and
Q4_K_M re-quantised from that F16 (llama.cpp in-process), and torch on the HF copy in
float32, bfloat16 and dynamic int8. Every row is measured by the same code the
``optimize_model`` decision uses (quality on benchmarks/data; greedy decode of 32 tokens
after a fixed prompt), and deltas are against the shipped Q4_K_M.

    .venv/bin/python benchmarks/quantization.py [--threads N]

On a shared 2-core machine use ``--threads 1``: with other jobs running, llama.cpp's
threads spin-wait on each other and 2 threads can be 5-10x slower than 1.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import gemma_gguf  # noqa: E402 (after the path)

DATA = ROOT / "benchmarks" / "data"


def torch_row(model: Any, tokenizer: Any) -> dict[str, float]:
    from sutazai.optimize.int8 import measure_torch

    return measure_torch(model, tokenizer, DATA)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from sutazai.optimize.gguf_to_hf import convert_gguf_to_hf
    from sutazai.optimize.hf_to_gguf import convert_hf_to_gguf
    from sutazai.optimize.int8 import load_float32, quantize_int8_dynamic
    from sutazai.optimize.quantize import measure_gguf, quantize_gguf

    torch.set_num_threads(args.threads)
    rows: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        original = gemma_gguf(work)
        started = time.perf_counter()
        convert_gguf_to_hf(original, work / "hf")
        seconds["GGUF -> HF"] = time.perf_counter() - started
        started = time.perf_counter()
        f16 = convert_hf_to_gguf(work / "hf", original, work / "f16.gguf")
        seconds["HF -> F16 GGUF"] = time.perf_counter() - started
        files = {"GGUF Q4_K_M (shipped)": original, "GGUF F16 (SutazAI)": f16}
        for method in ("gguf:q8_0", "gguf:q4_k_m"):
            started = time.perf_counter()
            files[f"GGUF {method[5:].upper()} (from F16)"] = quantize_gguf(
                f16, work / f"{method[5:]}.gguf", method, args.threads)
            seconds[f"quantize {method}"] = time.perf_counter() - started
        for label, path in files.items():
            rows[label] = measure_gguf(path, DATA, args.threads)
        model, tokenizer = load_float32(work / "hf")
        rows["torch float32"] = torch_row(model, tokenizer)
        quantized = quantize_int8_dynamic(model)
        rows["torch int8-dynamic"] = torch_row(quantized, tokenizer)
        del quantized
        rows["torch bfloat16"] = torch_row(model.to(torch.bfloat16), tokenizer)

    base = rows["GGUF Q4_K_M (shipped)"]
    header = (f"{'variant':<26}{'size MB':>9}{'tok/s':>8}{'ppl':>9}{'d ppl':>8}{'MC acc':>8}"
              f"{'d MC':>7}{'size x':>8}{'speed x':>9}")
    print(f"Gemma 3 270M, {args.threads} thread(s); deltas and ratios vs the shipped Q4_K_M")
    print(header)
    print("-" * len(header))
    for label, r in rows.items():
        print(f"{label:<26}{r['size_bytes'] / 1e6:>9.1f}{r['tokens_per_s']:>8.1f}"
              f"{r['perplexity']:>9.3f}{r['perplexity'] / base['perplexity'] - 1:>+8.1%}"
              f"{r['mc_accuracy']:>8.2f}{r['mc_accuracy'] - base['mc_accuracy']:>+7.2f}"
              f"{r['size_bytes'] / base['size_bytes']:>8.2f}"
              f"{r['tokens_per_s'] / base['tokens_per_s']:>9.2f}")
    print()
    for step, value in seconds.items():
        print(f"{step}: {value:.1f} s")
    print("torch sizes are the serialised state_dict (tied embedding once); GGUF sizes the file.")


if __name__ == "__main__":
    main()
