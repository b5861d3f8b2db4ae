"""Hugging Face safetensors causal LM -> F16 (or F32) GGUF, for llama.cpp and its quantizer.

llama.cpp quantizes from a full-precision GGUF, and its own converter
(``convert_hf_to_gguf.py``) is not installable here: llama-cpp-python's wheel leaves it out
and only PyPI is reachable. So SutazAI writes the GGUF itself with the ``gguf`` package,
from a **template**: a GGUF of the same architecture and shape, in practice the model's
GGUF ancestor in the repository (``gemma3-270m-hf`` came from the GGUF ``gemma3-270m``; a
fine-tune of it has that chain too). Why a template rather than writing metadata from
``config.json`` and ``tokenizer.json``:

- **The tokenizer.** llama.cpp needs its own vocabulary tables (tokens, scores, types,
  special ids, pre-tokenizer name). Rebuilding them from ``tokenizer.json`` is most of
  ``convert_hf_to_gguf.py``, per tokenizer family; the ancestor already holds the exact
  tables llama.cpp used for the model, so copying them cannot drift.
- **Hyper-parameters.** Rope bases, sliding windows, norm epsilons, head sizes: copied as
  llama.cpp itself wrote or read them. Only ``general.file_type`` changes. The shapes are
  checked against ``config.json`` and every tensor's shape against the template, so a
  template of another size is refused instead of producing a broken file.

The tensors are the inverse of what transformers' GGUF loader (and so
:mod:`sutazai.optimize.gguf_to_hf`) does when it reads a GGUF:

- **Names** through ``gguf.get_tensor_name_map`` (the table both sides use), e.g.
  ``model.layers.0.self_attn.q_proj.weight`` -> ``blk.0.attn_q.weight``. Exactly the
  template's tensors are written, in its order; ``lm_head`` is dropped when the template
  has no ``output.weight`` (tied embeddings, as in Gemma).
- **Gemma norms.** GGUF holds Gemma's RMSNorm weights as ``1 + w`` (llama.cpp multiplies by
  the stored value); transformers subtracts the 1 on load, so it is added back here, to
  every ``*norm.weight`` exactly as the loader takes it away.
- **Llama q/k.** llama.cpp's converter permutes the rows of ``q_proj``/``k_proj`` per head
  (rotary pairs interleaved); transformers reverses it on load, so it is applied here.
  This is only checked as the exact inverse of transformers' reverse permutation (no Llama
  GGUF is obtainable to compare logits with).
- **Types.** Matrices in F16 (or F32), vectors (norms) in F32, as llama.cpp's converter
  does: llama.cpp keeps 1-D tensors in F32 even when it quantizes.

Correctness is measured, not assumed: tests/optimize/test_quantize.py converts the Gemma GGUF to HF
and back and checks llama.cpp's perplexity of the result against the original's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from sutazai.errors import ConversionError

OUT_TYPES = ("f16", "f32")
# transformers' model_type -> llama.cpp's architecture name (general.architecture)
ARCHITECTURES = {"gemma3_text": "gemma3", "gemma3": "gemma3", "llama": "llama"}
_SKIPPED_KEYS = ("general.architecture", "general.file_type")


def gguf_architecture(path: Path) -> str:
    """``general.architecture`` of a GGUF file (reads the header only)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    field = reader.fields.get("general.architecture")
    return str(field.contents()) if field is not None else ""


def convert_hf_to_gguf(model_dir: Path, template: Path, target: Path,
                       out_type: str = "f16") -> Path:
    """Write the HF causal LM in ``model_dir`` as a GGUF file ``target`` with the metadata of
    ``template`` (a GGUF of the same architecture and shape) and return ``target``.

    ``out_type`` is ``f16`` (what llama.cpp quantizes from) or ``f32``. The file appears
    only when complete (written beside it, then renamed). Raises ``ConversionError`` for an
    unsupported architecture, a template that does not match the model, or a missing
    tensor.
    """
    if out_type not in OUT_TYPES:
        raise ConversionError(f"GGUF type {out_type!r} is not one of {', '.join(OUT_TYPES)}")
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"{model_dir} has no config.json; it is not a Hugging Face model")
    config = json.loads(config_path.read_text())
    config = config.get("text_config", config) if config.get("model_type") == "gemma3" else config
    arch = ARCHITECTURES.get(str(config.get("model_type")))
    if arch is None:
        raise ConversionError(
            f"{model_dir.name} is a {config.get('model_type')!r} model; SutazAI writes GGUF for "
            f"{', '.join(sorted(set(ARCHITECTURES.values())))} only")
    partial = target.with_name(target.name + ".partial")
    try:
        _write(model_dir, config, arch, template, partial, out_type)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def _check_template(reader: Any, config: dict[str, Any], arch: str, template: Path) -> None:
    found = reader.fields.get("general.architecture")
    found_arch = str(found.contents()) if found is not None else "?"
    if found_arch != arch:
        raise ConversionError(f"template {template.name} is a {found_arch} GGUF, the model is "
                              f"{arch}; use the model's own GGUF ancestor as template")
    for key, hf_key in (("block_count", "num_hidden_layers"),
                        ("embedding_length", "hidden_size")):
        field = reader.fields.get(f"{arch}.{key}")
        if field is not None and int(field.contents()) != int(config[hf_key]):
            raise ConversionError(
                f"template {template.name} has {key} {field.contents()} but the model has "
                f"{hf_key} {config[hf_key]}: the template must be the same model's GGUF")


def permute_qk(weights: np.ndarray[Any, Any], n_head: int, n_head_kv: int | None = None
               ) -> np.ndarray[Any, Any]:
    """llama.cpp's q/k row permutation (the inverse of transformers' reverse permutation)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _hf_to_gguf_names(names: list[str], arch: str, blocks: int) -> dict[str, str]:
    """GGUF tensor name -> HF tensor name, through gguf's own mapping table."""
    import gguf

    enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    table = gguf.get_tensor_name_map(enum, blocks)
    mapping: dict[str, str] = {}
    for hf_name in names:
        stem, _, suffix = hf_name.rpartition(".")
        mapped = table.get_name(stem)
        if mapped is None:
            raise ConversionError(f"no GGUF name for tensor {hf_name!r} of a {arch} model; "
                                  "the model has layers llama.cpp's architecture does not")
        mapping[f"{mapped}.{suffix}"] = hf_name
    return mapping


def _transform(gguf_name: str, weights: np.ndarray[Any, Any], arch: str,
               config: dict[str, Any]) -> np.ndarray[Any, Any]:
    if arch == "gemma3" and gguf_name.endswith("norm.weight"):
        return weights + 1.0
    if arch == "llama" and (".attn_q." in gguf_name or ".attn_k." in gguf_name):
        heads = int(config["num_attention_heads"])
        kv = int(config.get("num_key_value_heads") or heads)
        return permute_qk(weights, heads, heads if ".attn_q." in gguf_name else kv)
    return weights


def _write(model_dir: Path, config: dict[str, Any], arch: str, template: Path, out: Path,
           out_type: str) -> None:
    import gguf
    import torch
    from safetensors import safe_open

    reader = gguf.GGUFReader(str(template))
    _check_template(reader, config, arch, template)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ConversionError(f"{model_dir} has no .safetensors weights")
    where: dict[str, Path] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            where.update(dict.fromkeys(handle.keys(), file))
    mapping = _hf_to_gguf_names(sorted(where), arch, int(config["num_hidden_layers"]))
    wanted = [t.name for t in reader.tensors]
    missing = [name for name in wanted if name not in mapping]
    if missing:
        raise ConversionError(f"the model lacks tensors the template has: {missing[:5]}")
    extra = sorted(set(mapping) - set(wanted) - {"output.weight"})
    if extra:
        raise ConversionError(f"the model has tensors the template lacks: {extra[:5]}")

    writer = gguf.GGUFWriter(str(out), arch)  # writes general.architecture itself
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in _SKIPPED_KEYS:
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if out_type == "f16"
                         else gguf.LlamaFileType.ALL_F32)

    def load(gguf_name: str) -> np.ndarray[Any, Any]:
        hf_name = mapping[gguf_name]
        with safe_open(str(where[hf_name]), framework="pt") as handle:
            tensor = handle.get_tensor(hf_name).to(torch.float32).numpy()
        weights = _transform(gguf_name, tensor, arch, config)
        if weights.ndim == 1 or out_type == "f32":
            return weights.astype(np.float32)
        return weights.astype(np.float16)

    shapes = {t.name: tuple(int(d) for d in reversed(t.shape.tolist())) for t in reader.tensors}
    for name in wanted:  # the header first: shapes and types, no data held in memory
        hf_name = mapping[name]
        with safe_open(str(where[hf_name]), framework="pt") as handle:
            shape = tuple(int(d) for d in handle.get_slice(hf_name).get_shape())
        if shape != shapes[name]:
            raise ConversionError(f"tensor {name} is {shape} in the model but {shapes[name]} "
                                  "in the template: the template must be the same model's GGUF")
        dtype = np.dtype(np.float32 if len(shape) == 1 or out_type == "f32" else np.float16)
        writer.add_tensor_info(name, shape, dtype, int(np.prod(shape)) * dtype.itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for name in wanted:
        writer.write_tensor_data(load(name))
    writer.close()
