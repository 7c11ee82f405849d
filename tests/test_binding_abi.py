"""The cffi declarations (ggml_rerope/_binding.py) against the C headers they copy: a C program
generated from the cdef's own type list is compiled with src/ggml_rerope.h and
src/ggml_rerope_runtime.h. It fails to compile when a struct has a field on one side only
(positional initializer of exactly the cdef's fields, -Werror=missing-field-initializers) or an
enum an enumerator on one side only (a switch over the cdef's enumerators, -Werror=switch-enum,
and undeclared names); run, it prints every size, offset and enumerator value, which must equal
cffi's."""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest

from ggml_rerope import _binding

ffi = _binding.ffi
SRC = pathlib.Path(__file__).resolve().parents[1] / "src"


def our_types(kind):
    names = [n for n in ffi.list_types()[0] if n.startswith("ggml_rerope_") and ffi.typeof(n).kind == kind]
    if kind == "struct":  # opaque handles (ggml_rerope_model, ...) have no fields to compare
        names = [n for n in names if ffi.typeof(n).fields is not None]
    return sorted(names)


def zero_initializer(ctype):
    return "{0}" if ctype.kind in ("array", "struct", "union") else "0"


def c_program():
    lines = ['#include "ggml_rerope.h"', '#include "ggml_rerope_runtime.h"', "#include <stddef.h>",
             "#include <stdio.h>"]
    for i, name in enumerate(our_types("enum")):  # a parameter, not a constant: -Wswitch-enum checks it
        cases = " ".join(f"case {e}:" for e in ffi.typeof(name).relements)
        lines.append(f"void every_enumerator{i}({name} e) {{ switch (e) {{ {cases} break; }} }}")
    lines.append("int main(void) {")
    for i, name in enumerate(our_types("struct")):
        fields = ffi.typeof(name).fields
        init = ", ".join(zero_initializer(f.type) for _, f in fields)
        lines.append(f"    {name} probe{i} = {{{init}}}; (void) probe{i};")
        lines.append(f'    printf("size {name} %zu\\n", sizeof({name}));')
        for fname, _ in fields:
            lines.append(f'    printf("field {name}.{fname} %zu %zu\\n", offsetof({name}, {fname}), '
                         f"sizeof((({name} *) 0)->{fname}));")
    for name in our_types("enum"):
        for e in ffi.typeof(name).relements:
            lines.append(f'    printf("enum {e} %lld\\n", (long long) {e});')
    lines += ["    return 0;", "}"]
    return "\n".join(lines) + "\n"


def cffi_layout():
    expect = set()
    for name in our_types("struct"):
        expect.add(f"size {name} {ffi.sizeof(name)}")
        for fname, f in ffi.typeof(name).fields:
            expect.add(f"field {name}.{fname} {f.offset} {ffi.sizeof(f.type)}")
    for name in our_types("enum"):
        expect.update(f"enum {e} {v}" for e, v in ffi.typeof(name).relements.items())
    return expect


def test_cdef_declares_the_public_types():
    structs, enums = set(our_types("struct")), set(our_types("enum"))
    assert {"ggml_rerope_params", "ggml_rerope_attn_call", "ggml_rerope_context_params"} <= structs
    assert {"ggml_rerope_status", "ggml_rerope_rope_mode", "ggml_rerope_far_mode", "ggml_rerope_kv_type",
            "ggml_rerope_simd"} <= enums


def test_cdef_matches_the_headers(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler to check the declarations with")
    src = tmp_path / "abi.c"
    src.write_text(c_program())
    exe = tmp_path / "abi"
    build = subprocess.run([cc, "-std=c11", "-Wall", "-Wextra", "-Werror=missing-field-initializers",
                            "-Werror=switch-enum", "-Werror", "-Wno-missing-prototypes", f"-I{SRC}", str(src), "-o",
                            str(exe)], capture_output=True, text=True)
    assert build.returncode == 0, "cdef and headers disagree:\n" + build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, check=True)
    got = set(run.stdout.splitlines())
    expect = cffi_layout()
    assert got == expect, f"C only: {sorted(got - expect)}\ncffi only: {sorted(expect - got)}"
