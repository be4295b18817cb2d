"""Tokenizer and text encoder of the toy world.

The tokenizer is a word-level `tokenizers` model over the world's vocabulary, wrapped in
`PreTrainedTokenizerFast` so that `AutoTokenizer.from_pretrained` (what WanPipeline uses) loads it
from disk offline. The text encoder is a tiny `UMT5EncoderModel` with frozen random weights (docs/design.md 5):
the DiT learns to read its embeddings, so nothing needs training here.
"""

from __future__ import annotations

import torch

from .world import vocabulary

SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]
TEXT_DIM = 64


def build_tokenizer():
    """A word-level fast tokenizer: lower-cases, splits on whitespace/punctuation, appends ``</s>``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIAL_TOKENS + vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=512)


def build_text_encoder(seed: int = 0, d_model: int = TEXT_DIM):
    """A 2-layer UMT5 encoder with random weights rounded to fp16-representable values, so that the
    shipped fp16 checkpoint gives exactly the embeddings the DiT was trained on."""
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    cfg = UMT5Config(vocab_size=len(SPECIAL_TOKENS) + len(vocabulary()), d_model=d_model, d_kv=16,
                     d_ff=128, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                     relative_attention_max_distance=32, pad_token_id=0, eos_token_id=1,
                     decoder_start_token_id=0, dropout_rate=0.0)
    model = UMT5EncoderModel(cfg).eval()
    round_to_fp16_(model)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@torch.no_grad()
def round_to_fp16_(module: torch.nn.Module) -> torch.nn.Module:
    """Round every floating parameter and buffer to the nearest fp16 value (kept in its dtype)."""
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            t.copy_(t.to(torch.float16).to(t.dtype))
    return module
