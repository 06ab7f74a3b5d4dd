"""HF Llama/Mistral checkpoint -> F16/BF16/F32 GGUF, written with gguf-py's GGUFWriter.

gguf-py supplies the writer, the tensor-name map and SpecialVocab; what is left here is
the glue llama.cpp's converter does for these two architectures: hyperparameters, the
Q/K rotary permutation (HF stores rotary halves, llama.cpp interleaved pairs), tied
embeddings, and the vocabulary (SentencePiece with scores, or BPE with merges and the
pre-tokenizer name llama.cpp selects its split regex by).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from ... import shapes
from ...basemodel import SUPPORTED_ARCHITECTURES
from ...errors import EngineError
from ...progress import bar

log = logging.getLogger(__name__)

OUTTYPES = {
    "F32": (gguf.LlamaFileType.ALL_F32, gguf.GGMLQuantizationType.F32),
    "F16": (gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
    "BF16": (gguf.LlamaFileType.MOSTLY_BF16, gguf.GGMLQuantizationType.BF16),
}


@dataclass(frozen=True)
class ModelMeta:
    """General metadata written into the GGUF header."""

    name: str
    base_model: str | None = None
    quantized_by: str | None = None
    license: str | None = None


def check_architecture(config: dict, where: Path) -> None:
    arch = (config.get("architectures") or ["?"])[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise EngineError(
            f"{where}: architecture {arch} is not supported by the GGUF converter "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )


def permute_rotary(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder each head's rows from HF's [first half | second half] to llama.cpp's interleaved pairs."""
    rows = weights.shape[0]
    return weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def convert(model_dir: Path, out_file: Path, outtype: str, meta: ModelMeta) -> None:
    """Write `out_file`; raises EngineError on an architecture or tokenizer this converter does not know."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    check_architecture(config, model_dir / "config.json")
    if outtype not in OUTTYPES:
        raise EngineError(f"GGUF conversion type {outtype!r} unknown; use one of {', '.join(OUTTYPES)}")
    file_type, tensor_type = OUTTYPES[outtype]

    writer = gguf.GGUFWriter(out_file, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA], use_temp_file=True)
    write_hparams(writer, config, file_type)
    write_general(writer, meta)
    write_vocab(writer, model_dir, config["vocab_size"])
    _write_tensors(writer, model_dir, config, tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()


def write_hparams(writer: gguf.GGUFWriter, config: dict, file_type: gguf.LlamaFileType) -> None:
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = shapes.head_dim(config)
    rope = config.get("rope_parameters") or {}
    if (rope.get("rope_type") or "default") != "default" or config.get("rope_scaling"):
        raise EngineError(
            f"rope scaling {rope.get('rope_type') or config.get('rope_scaling')} is not supported by the GGUF converter"
        )
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(hidden)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(rope.get("rope_theta", config.get("rope_theta", 10000.0)))
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    if config.get("sliding_window"):
        writer.add_sliding_window(config["sliding_window"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def write_general(writer: gguf.GGUFWriter, meta: ModelMeta) -> None:
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(meta.name)
    if meta.quantized_by:
        writer.add_quantized_by(meta.quantized_by)
    if meta.license:
        writer.add_license(meta.license)
    if meta.base_model:
        writer.add_base_model_count(1)
        writer.add_base_model_name(0, meta.base_model.rsplit("/", 1)[-1])
        if "/" in meta.base_model:
            writer.add_base_model_organization(0, meta.base_model.split("/")[0])
            writer.add_base_model_repo_url(0, f"https://huggingface.co/{meta.base_model}")


def write_vocab(writer: gguf.GGUFWriter, model_dir: Path, vocab_size: int) -> None:
    tokens: list[bytes] | list[str]  # sentencepiece pieces are bytes, BPE tokens text
    if (model_dir / "tokenizer.model").is_file():
        tokens, scores, types = _sentencepiece_vocab(model_dir, vocab_size)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        special = gguf.SpecialVocab(model_dir, n_vocab=len(tokens))
    elif (model_dir / "tokenizer.json").is_file():
        tokens, types, pre = _bpe_vocab(model_dir, vocab_size)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=len(tokens))
    else:
        raise EngineError(f"{model_dir}: no tokenizer.model or tokenizer.json to convert")
    special.add_special_token.update(_adds_bos_eos(model_dir))
    special.add_to_gguf(writer)


def _adds_bos_eos(model_dir: Path) -> dict[str, bool]:
    """Whether the HF tokenizer really adds BOS/EOS, observed rather than read from flags it may lack."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return {
        "bos": tokenizer.bos_token_id is not None and ids[:1] == [tokenizer.bos_token_id],
        "eos": tokenizer.eos_token_id is not None and ids[-1:] == [tokenizer.eos_token_id],
    }


def _sentencepiece_vocab(model_dir: Path, vocab_size: int) -> tuple[list[bytes], list[float], list[gguf.TokenType]]:
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
    tokens = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    types = [gguf.TokenType.UNUSED] * vocab_size
    for i in range(min(sp.vocab_size(), vocab_size)):
        tokens[i], scores[i] = sp.IdToPiece(i).encode("utf-8"), sp.GetScore(i)
        types[i] = (
            gguf.TokenType.UNKNOWN
            if sp.IsUnknown(i)
            else gguf.TokenType.CONTROL
            if sp.IsControl(i)
            else gguf.TokenType.UNUSED
            if sp.IsUnused(i)
            else gguf.TokenType.BYTE
            if sp.IsByte(i)
            else gguf.TokenType.NORMAL
        )
    tok_config = model_dir / "tokenizer_config.json"
    added = json.loads(tok_config.read_text()).get("added_tokens_decoder", {}) if tok_config.is_file() else {}
    for key, data in added.items():
        i = int(key)
        if i < vocab_size and types[i] == gguf.TokenType.UNUSED:
            tokens[i], scores[i] = data["content"].encode("utf-8"), -1000.0
            types[i] = gguf.TokenType.CONTROL if data.get("special") else gguf.TokenType.USER_DEFINED
    return tokens, scores, types


def _bpe_vocab(model_dir: Path, vocab_size: int) -> tuple[list[str], list[gguf.TokenType], str]:
    spec = json.loads((model_dir / "tokenizer.json").read_text())
    if spec["model"]["type"] != "BPE":
        raise EngineError(f"{model_dir / 'tokenizer.json'}: tokenizer model {spec['model']['type']} is not supported")
    vocab: dict[str, int] = dict(spec["model"]["vocab"])
    added = {t["content"]: t for t in spec.get("added_tokens", [])}
    for content, token in added.items():
        vocab[content] = token["id"]
    by_id = {i: tok for tok, i in vocab.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif token in added:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if added[token].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    return tokens, types, bpe_pre_tokenizer(spec)


def bpe_pre_tokenizer(spec: dict) -> str:
    """llama.cpp's name for the split a byte-level BPE tokenizer applies before merging.

    Read from the tokenizer's own pre_tokenizer description, which is what decides the
    split, rather than guessed from a model name. Unknown shapes are refused, since a
    wrong regex silently changes token ids.
    """
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    byte_level_regex = all(s.get("use_regex", True) for s in steps if s.get("type") == "ByteLevel")
    if kinds == ["ByteLevel"] and byte_level_regex:
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and byte_level_regex:
        return "smollm"
    raise EngineError(
        f"tokenizer.json: pre-tokenizer {kinds} has no known llama.cpp equivalent; "
        "convert with llama.cpp's convert_hf_to_gguf.py instead"
    )


def _write_tensors(
    writer: gguf.GGUFWriter, model_dir: Path, config: dict, tensor_type: gguf.GGMLQuantizationType
) -> None:
    import torch
    from safetensors import safe_open

    n_layers, heads = config["num_hidden_layers"], config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise EngineError(f"{model_dir}: no *.safetensors weights to convert")
    keys: dict[Path, list[str]] = {}
    for f in files:
        with safe_open(f, "pt") as handle:
            keys[f] = list(handle.keys())
    have_lm_head = any("lm_head.weight" in k for k in keys.values())

    def one_shard_open():
        """(handle, key) with one shard open at a time: a mapped shard's pages count in the process's RSS until
        it is closed (all 8 shards of a 7B model held open: 11.1 GB of file pages; one at a time: 0.2 GB)."""
        for f in files:
            with safe_open(f, "pt") as handle:
                for key in keys[f]:
                    yield handle, key

    total = sum(len(k) for k in keys.values())
    for handle, key in bar(one_shard_open(), desc="convert to GGUF", unit="tensor", total=total):
        if key.endswith("rotary_emb.inv_freq"):
            continue
        if key == "lm_head.weight" and config.get("tie_word_embeddings"):
            continue  # llama.cpp reuses token_embd when output.weight is absent
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise EngineError(f"tensor {key} has no GGUF name for the llama architecture")
        data = handle.get_tensor(key).to(torch.float32).numpy()
        if key.endswith("q_proj.weight"):
            data = permute_rotary(data, heads)
        elif key.endswith("k_proj.weight"):
            data = permute_rotary(data, kv_heads)
        _add(writer, name, data, tensor_type)
    if not have_lm_head and not config.get("tie_word_embeddings"):
        raise EngineError(f"{model_dir}: no lm_head.weight and tie_word_embeddings is false")


def _add(writer: gguf.GGUFWriter, name: str, data: np.ndarray, tensor_type: gguf.GGMLQuantizationType) -> None:
    """Norms (1-D) stay F32 as llama.cpp keeps them; matrices take the requested type."""
    if data.ndim <= 1 or tensor_type == gguf.GGMLQuantizationType.F32:
        writer.add_tensor(name, data.astype(np.float32))
    elif tensor_type == gguf.GGMLQuantizationType.F16:
        writer.add_tensor(name, data.astype(np.float16))
    else:
        packed = gguf.quants.quantize(data, tensor_type)
        writer.add_tensor(name, packed, raw_dtype=tensor_type)
