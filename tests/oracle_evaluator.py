"""An evaluator that answers from the prompt itself, for testing how the retrieval tools build
prompts and score answers without a model's mistakes in the way."""

from __future__ import annotations

import numpy as np


class OracleEvaluator:
    """Speaks `reply(prompt text)` greedily, token by token, after each prefill; records every
    prompt. Tokenizes with a real evaluator (`runtime`), so prompts are the ones a model sees."""

    def __init__(self, runtime):
        self.rt = runtime
        self.n_ctx, self.n_vocab = runtime.n_ctx, runtime.n_vocab
        self.tokenize, self.detokenize = runtime.tokenize, runtime.detokenize
        self.answer, self.n_past, self.prompts = [], 0, []

    def reply(self, text: str) -> str:
        raise NotImplementedError

    def reset(self):
        self.n_past = 0

    def is_eog(self, t):
        return False

    def _next(self):
        logits = np.zeros(self.n_vocab, dtype=np.float32)
        if self.answer:
            logits[self.answer.pop(0)] = 1.0
        return logits

    def prefill(self, tokens):
        self.prompts.append(list(tokens))
        self.answer = self.tokenize(self.reply(self.detokenize(tokens)), add_bos=False)
        self.n_past = len(tokens)
        return self._next()

    def eval(self, tokens, logits_all=False):
        self.n_past += len(tokens)
        return self._next()
