"""A minimal SentencePiece-style vocabulary for random-weight GGUF files.

llama.cpp refuses a model without a tokenizer; benchmarks and tests feed token ids directly, so
any well-formed vocabulary does: the three specials, the 256 byte tokens, then filler pieces.

    add_minimal_vocab(writer, n_vocab)   # writer: gguf.GGUFWriter, before write_kv_data_to_file
"""

from __future__ import annotations

# gguf token types (llama.cpp's llama_token_type)
_NORMAL, _UNKNOWN, _CONTROL, _BYTE = 1, 2, 3, 6
N_FIXED = 3 + 256  # specials + byte tokens: the smallest vocabulary this writes


def minimal_vocab(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and types of an n_vocab-token vocabulary (n_vocab >= N_FIXED)."""
    if n_vocab < N_FIXED:
        raise ValueError(f"n_vocab must be >= {N_FIXED} (specials + byte tokens), got {n_vocab}")
    tokens, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [_UNKNOWN, _CONTROL, _CONTROL]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        scores.append(0.0)
        types.append(_BYTE)
    i = 0
    while len(tokens) < n_vocab:
        tokens.append(f"\u2581tok{i}")
        scores.append(-float(i))
        types.append(_NORMAL)
        i += 1
    return tokens, scores, types


def add_minimal_vocab(writer, n_vocab: int) -> None:
    """Adds the tokenizer metadata (model "llama", unk 0, bos 1, eos 2) to a gguf.GGUFWriter."""
    tokens, scores, types = minimal_vocab(n_vocab)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
