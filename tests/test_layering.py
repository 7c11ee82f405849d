"""The files of src/runtime form a one-way chain of layers (README, "Layout").

A file may include a runtime header only of its own layer or a lower one, and may call a runtime
function only if a file of its own layer or a lower one defines it and a header it includes itself
declares it (so the include lines show every dependency). Every file must be placed in a layer.
`python tests/test_layering.py` prints the include graph for the README.
"""

from __future__ import annotations

import pathlib
import re

RUNTIME = pathlib.Path(__file__).resolve().parents[1] / "src" / "runtime"

# Lowest first. A layer's header declares what the files of that layer define.
LAYERS: list[tuple[str, list[str]]] = [
    ("errors", ["rt_errors.h", "rt_errors.c"]),
    ("memory", ["rt_memory.h", "memory.c"]),
    ("CUDA streams", ["rt_cuda.h"]),  # defined in src/cuda (streams.cu, or cuda_disabled.c)
    ("loader", ["rt_file.h", "gguf_loader.c", "gguf_meta.c"]),
    ("hyperparameters", ["rt_hparams.h", "hparams.c"]),
    ("placement", ["rt_place.h", "placement.c"]),
    ("memory plan", ["rt_plan.h", "mem_plan.c"]),
    ("weights", ["rt_model.h", "weights.c", "model.c"]),
    ("KV cache", ["rt_kv.h", "kv_cache.c"]),
    ("batch plan", ["rt_batch.h", "batch_plan.c"]),
    ("attention placeholder", ["rt_placeholder.h", "placeholder.c"]),
    ("graph", ["rt_graph.h", "graph.c"]),
    ("executor", ["rt_exec.h", "attn_outside.c"]),
    ("host embedding", ["rt_embed.h", "embed_host.c"]),
    ("context", ["context.c"]),
]
DEFINED_OUTSIDE = {"rt_cuda.h"}  # its functions are the CUDA part's

RANK = {name: i for i, (_, files) in enumerate(LAYERS) for name in files}
LAYER_NAME = {name: layer for layer, files in LAYERS for name in files}

_COMMENT_OR_STRING = re.compile(r'/\*.*?\*/|//[^\n]*|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'', re.S)
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
# A function definition at the start of a line (not static): return type, name, (params) {
_DEFINITION = re.compile(r"^(?!static\b)(?:[A-Za-z_][\w]*[\s*]+)+\**([A-Za-z_]\w*)\s*\(([^;{}]*)\)\s*\{", re.M)
_STATIC_INLINE = re.compile(r"^static\s+inline\s+(?:[A-Za-z_][\w]*[\s*]+)+\**([A-Za-z_]\w*)\s*\(", re.M)
_DECLARATION = re.compile(r"^(?:[A-Za-z_][\w]*[\s*]+)+\**(rt_\w+)\s*\(([^;{}]*)\)\s*;", re.M)
_CALL = re.compile(r"\b([A-Za-z_]\w*)\s*\(")


def _code(text: str) -> str:
    """The text without comments and string literals (newlines kept where they were)."""
    return _COMMENT_OR_STRING.sub(lambda m: "\n" * m.group(0).count("\n") if m.group(0)[0] == "/" else '""', text)


def read_runtime() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(RUNTIME.iterdir()) if p.suffix in (".c", ".h")}


def includes(files: dict[str, str]) -> dict[str, list[str]]:
    """Each file's runtime includes (quoted includes of other runtime files), in order."""
    return {
        name: [h for h in _INCLUDE.findall(_code_keep_includes(text)) if h in files] for name, text in files.items()
    }


def _code_keep_includes(text: str) -> str:
    # includes are quoted: strip only comments
    return re.sub(r"/\*.*?\*/|//[^\n]*", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)


def violations(files: dict[str, str]) -> list[str]:
    """Every break of the layering in these files (name -> text), as sentences; [] when none."""
    out: list[str] = []
    for name in files:
        if name not in RANK:
            out.append(f"{name} is in no layer: add it to LAYERS (and to the README's layout)")
    placed = {n: t for n, t in files.items() if n in RANK}
    inc = includes(placed)

    for name, hs in inc.items():
        for h in hs:
            if RANK[h] > RANK[name]:
                out.append(f"{name} ({LAYER_NAME[name]}) includes {h} of a higher layer ({LAYER_NAME[h]})")

    code = {n: _code(t) for n, t in placed.items()}
    declared_in: dict[str, str] = {}
    for name, c in code.items():
        if name.endswith(".h"):
            for fn, _ in _DECLARATION.findall(c):
                declared_in[fn] = name
            for fn in _STATIC_INLINE.findall(c):
                declared_in[fn] = name
    defined_in: dict[str, str] = {}
    for name, c in code.items():
        for fn, _ in _DEFINITION.findall(c):
            defined_in[fn] = name
        if name.endswith(".h"):
            for fn in _STATIC_INLINE.findall(c):
                defined_in[fn] = name

    for fn, h in declared_in.items():
        if h in DEFINED_OUTSIDE:
            continue
        if fn not in defined_in:
            out.append(f"{fn} is declared in {h} but defined in no runtime file")
        elif RANK[defined_in[fn]] != RANK[h]:
            out.append(
                f"{fn} is declared in {h} ({LAYER_NAME[h]}) but defined in {defined_in[fn]} "
                f"({LAYER_NAME[defined_in[fn]]})"
            )

    for name, c in code.items():
        own = {fn for fn, where in defined_in.items() if where == name}
        for fn in sorted(set(_CALL.findall(c)) - own):
            callee_file = defined_in.get(fn)
            header = declared_in.get(fn)
            if callee_file is None and header is None:
                continue  # not the runtime's: ggml, libc, the operator
            target = callee_file if callee_file is not None else header
            if RANK[target] > RANK[name]:
                out.append(f"{name} ({LAYER_NAME[name]}) calls {fn} of a higher layer ({LAYER_NAME[target]})")
            if header is not None and header != name and header not in inc[name]:
                out.append(f"{name} calls {fn} without including {header}, which declares it")
    return out


def test_runtime_files_follow_the_layers():
    assert violations(read_runtime()) == []


def test_the_context_struct_is_private_to_the_context():
    files = read_runtime()
    holders = [n for n, t in files.items() if re.search(r"\bstruct\s+ggml_rerope_context\s*\{", _code(t))]
    assert holders == ["context.c"]
    body = re.search(r"\bstruct\s+ggml_rerope_context\s*\{(.*?)\n\};", _code(files["context.c"]), re.S).group(1)
    # the executor's state is its own struct: one member of that type, none of its pieces
    assert len(re.findall(r"\brt_pieces\s+\w+\s*;", body)) == 1
    assert not re.search(r"\b(ggml_backend_event_t|n_kv_now|piece|piece_\w+|ev_\w+|stream|embd_\w+)\b", body)


def test_the_check_fails_on_a_back_include_and_a_back_call():
    files = read_runtime()
    assert violations(files) == []

    back_include = dict(files)
    back_include["graph.c"] = '#include "rt_exec.h"\n' + files["graph.c"]
    assert any("graph.c (graph) includes rt_exec.h" in v for v in violations(back_include))

    back_include_h = dict(files)
    back_include_h["rt_kv.h"] = files["rt_kv.h"].replace('#include "rt_model.h"', '#include "rt_graph.h"')
    assert any("rt_kv.h (KV cache) includes rt_graph.h" in v for v in violations(back_include_h))

    back_call = dict(files)
    back_call["attn_outside.c"] = (
        files["attn_outside.c"] + "\nstatic void f(void) { ggml_rerope_eval(0, 0, 0, 0, 0); }\n"
    )
    assert any("attn_outside.c (executor) calls ggml_rerope_eval" in v for v in violations(back_call))

    hidden_call = dict(files)  # a call whose declaration comes in only through another header
    hidden_call["context.c"] = files["context.c"].replace('#include "rt_kv.h"\n', "")
    assert any("context.c calls rt_kv_init without including rt_kv.h" in v for v in violations(hidden_call))

    unplaced = dict(files)
    unplaced["new_part.c"] = "int x;\n"
    assert any("new_part.c is in no layer" in v for v in violations(unplaced))


def layout_text() -> str:
    """The layers, lowest first, each with its files and the runtime headers of lower layers they include."""
    files = read_runtime()
    inc = includes({n: t for n, t in files.items() if n in RANK})
    rows = []
    for layer, names in LAYERS:
        below = sorted(
            {h for n in names if n in inc for h in inc[n] if LAYER_NAME[h] != layer}, key=lambda h: (-RANK[h], h)
        )
        rows.append((layer, ", ".join(names), ", ".join(below) or "-"))
    w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    return "\n".join(f"    {a:<{w0}}  {b:<{w1}}  -> {c}" for a, b, c in reversed(rows))


if __name__ == "__main__":
    print(layout_text())
