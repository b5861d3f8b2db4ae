"""GGUF causal LM -> Hugging Face folder (config, generation config, safetensors, tokenizer).

vLLM cannot read GGUF, so a GGUF model reaches it as the same weights in Hugging Face
safetensors. The conversion is transformers' own GGUF loader followed by
``save_pretrained``; the non-obvious parts, and why they are there:

- **Offline.** Every ``from_pretrained`` gets ``local_files_only=True``: the GGUF is a local
  file and nothing may reach a hub, whatever ``HF_HUB_OFFLINE`` says.
- **Dependencies.** transformers needs the ``gguf`` package to read the file and refuses
  ``gguf_file=`` unless ``accelerate`` is installed, although it does not use it here.
- **Config first.** ``AutoConfig`` reads only the file's metadata; it is where an
  architecture transformers cannot map fails (``ValueError``), and it tells whether the
  model is a causal LM before the weights are unpacked. Passing this config on to the model
  load saves parsing the metadata again.
- **``GgufConfig(dequantize=True)``: the one step that matters.** Since transformers 5.x a
  GGUF loads through a "gguf" quantizer. Left to its default, the loaded model keeps that
  quantizer and ``config.quantization_config``: ``save_pretrained`` then refuses ("quantized
  with gguf and is not serializable"), and a ``quantization_config`` in ``config.json`` would
  send vLLM looking for GGUF weights. Older recipes (and PLATFORM-FACTS) copy the state_dict
  into a fresh model to get rid of it; with ``dequantize=True`` transformers drops the
  quantizer and the config entry itself once the weights are in, so the loaded model saves as
  a plain one. It also keeps the architectures on transformers' newer GGUF path (5.24:
  qwen35, qwen35moe, lfm2) from keeping their weights packed in GGUF blocks, which safetensors
  cannot hold. Gemma 3 takes the older path, which always unpacks, into a text-only
  ``Gemma3ForCausalLM`` (``model_type`` ``gemma3_text``): the GGUF holds the text backbone
  only, and transformers maps it so.
- **Gemma norms.** GGUF stores Gemma's RMSNorm weights as ``1 + w``; transformers' loader
  subtracts the 1 again, so nothing is done here, but do not "fix" it twice.
- **Tied embeddings.** Gemma's ``lm_head`` is the embedding matrix; ``save_pretrained``
  writes it once, as ``model.embed_tokens.weight``, and ``config.json`` says
  ``tie_word_embeddings``.
- **Determinism.** The same GGUF and library versions give byte-identical files:
  safetensors writes tensors in sorted order with fixed metadata (``{"format": "pt"}``), the
  JSON files come out in a fixed key order, and neither the GGUF's path nor its file name is
  recorded (``_name_or_path`` is dropped on save; checked: two runs from different paths give
  the same bytes). ``transformers_version`` is recorded, so another transformers version
  may give a different ``config.json``.

Not carried over, because the GGUF does not hold it: the original ``generation_config.json``
sampling defaults (the written one has only the special token ids) and any chat template the
file lacks (the Gemma 3 270M base model has none). ``tokenizer_config.json`` records
``is_local``/``local_files_only``: transformers writes them for any tokenizer loaded from a
local folder; they are harmless to vLLM and transformers. transformers' loader shows a tqdm
bar on stderr while it unpacks the tensors; the library adds no output of its own.
"""

from __future__ import annotations

from pathlib import Path

from sutazai.errors import ConversionError

DTYPES = ("bfloat16", "float16", "float32")


def convert_gguf_to_hf(gguf: Path, target: Path, dtype: str = "bfloat16") -> list[Path]:
    """Write a Hugging Face model folder (config.json, generation_config.json,
    model.safetensors, tokenizer files) for the causal LM in ``gguf`` into ``target``.

    ``target`` must not exist or be empty, so a conversion never mixes with older files; if
    this call created it and fails, it is removed again. ``dtype`` is the float type the
    quantized weights are unpacked to (bfloat16 is what the models were trained in and
    what vLLM on CPU serves). Returns the written files, sorted. Raises ``ConversionError``
    for a missing file, a non-empty target, an unknown dtype, or an architecture
    transformers cannot load from GGUF or that is not a causal LM.
    """
    if dtype not in DTYPES:
        raise ConversionError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if not gguf.is_file():
        raise ConversionError(f"GGUF file {gguf} does not exist")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConversionError(f"{target} already exists and is not an empty folder; "
                              "remove it or choose another target")
    created = not target.exists()
    try:
        _convert(gguf, target, dtype)
    except BaseException:
        if created and target.exists():
            import shutil

            shutil.rmtree(target)
        raise
    return sorted(p for p in target.rglob("*") if p.is_file())


def _convert(gguf: Path, target: Path, dtype: str) -> None:
    """The conversion itself; the module docstring says why each step is there."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GgufConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    folder, name = str(gguf.parent), gguf.name
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name, local_files_only=True)
    except ValueError as exc:  # "GGUF model with architecture X is not supported yet."
        raise ConversionError(f"cannot convert {gguf.name} to Hugging Face format with "
                              f"transformers {transformers.__version__}: {exc}") from exc
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ConversionError(f"{gguf.name} holds a {config.model_type!r} model, which is not a "
                              "causal language model; only causal LMs are converted")

    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, config=config, dtype=getattr(torch, dtype), local_files_only=True,
        quantization_config=GgufConfig(dequantize=True),
    )
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)

    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
