"""Mutation testing of the merge code: are the fast tests able to tell a broken merger?

Usage (from the repository root, on one core)::

    nice -n 10 python tools/mutation.py [--out tools/mutation_report.md] [--only PATH ...]
                                        [--timeout 120] [--list] [--survivors]

A full run writes the report and, next to it, every mutant's verdict
(``mutation_report.json``, with a digest of each mutated file); ``--survivors`` judges
again only the mutants that survived it (after tests were added), keeping the other
verdicts, and is refused when a mutated file changed since.

Files mutated: those matching ``TARGET_GLOBS`` (the mergers, the tensor maths and the
merge driver, wherever they lie under ``clmerge/``). Two kinds of mutants:

- standard mutants: the merged weights replaced by the fine-tuned ones, by the previous
  merged ones, by the pretrained ones; a coefficient forced to 0 or to 1; a sign flipped;
  a state update skipped. Most are generated from the syntax tree by code pattern (see
  the comment above ``SPECIFIC``), the rest (``SPECIFIC``) are written by hand as a code
  pattern and its replacement; a pattern that no longer matches is listed under "Not
  applied" in the report, never silently dropped;
- operator mutants, one per site, generated from the syntax tree: ``+`` <-> ``-``,
  ``*`` <-> ``/``, ``**`` -> ``*``, ``//`` -> ``/``, ``&`` <-> ``|``, augmented
  assignments likewise; a comparison negated (``<`` -> ``>=``, ``==`` -> ``!=``, ``is``
  -> ``is not``, ``in`` -> ``not in``, ...); ``and`` <-> ``or``; a unary minus or a
  ``not`` removed; a numeric constant c -> c + 1. Skipped, as structural rather than
  arithmetic (a change there fails on a shape, not on a value): anything inside a
  ``raise`` statement, an f-string, a type annotation or a subscript, and the constant
  arguments of shape calls (``sum(0)``, ``reshape(-1)``, ``dim=1``, ...).

Every mutant is applied to a private copy of the tree (never to the working tree) and
judged by a fast subset of the tests chosen by the mutated file's name (``TESTS``), run with
``-x`` under a per-mutant timeout: a failing test, an error or a timeout kills it. The
runs are forked from one process that has already imported the heavy third-party
modules (torch, numpy, avalanche, peft), so a mutant costs its tests' time only; the
child imports ``clmerge`` from the copy. Mutants known to be equivalent (no input can
tell them from the original) are listed in ``EQUIVALENT`` with the reason and reported
apart; the score is killed / (mutants - equivalent ones).
"""

from __future__ import annotations

import argparse
import ast
import compileall
import gc
import hashlib
import io
import json
import os
import re
import py_compile
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# the files mutated, found by pattern so that a file moved inside the package is still
# found: (what, glob under the repository root)
TARGET_GLOBS = (("mergers", "clmerge/**/mergers/*.py"), ("tensormath", "clmerge/**/tensormath/*.py"),
                ("merge driver", "clmerge/**/plugins/merge.py"))


def find_targets() -> tuple[list[str], list[str]]:
    """The target files, and one sentence for each pattern that matched none."""
    found, missing = set(), []
    for what, pattern in TARGET_GLOBS:
        hits = [q for q in ROOT.glob(pattern) if q.name != "__init__.py"]
        if not hits:
            missing.append(f"no file matches {pattern} ({what})")
        found.update(q.relative_to(ROOT).as_posix() for q in hits)
    return sorted(found), missing


TARGETS, MISSING_TARGETS = find_targets()

SEAMS = "tests/test_merger_seams.py"
PLUGIN = "tests/test_merge_plugin_seam.py"
RULES = "tests/test_merge_rules.py"
PM_MATH = "tests/test_pm_math.py"
FISHER = "tests/test_fisher_estimators.py"
TRM_STEPS = "tests/test_trm_steps.py"
TRM_UNIT = tuple(f"tests/test_trm.py::{name}" for name in (
    "test_combine_is_the_weighted_sum_of_directions", "test_initial_point_and_shape_checks",
    "test_random_direction_has_the_reference_norm_on_every_weight",
    "test_prediction_consistency_is_the_tempered_kl",
    "test_gradient_responsiveness_gradient_matches_finite_differences",
    "test_gradient_norm_equals_the_norm_of_separate_gradients",
    "test_rescaled_directions_have_the_reference_norm_and_keep_the_span",
    "test_rescale_none_is_the_identity",
    "test_the_held_out_minibatch_has_the_training_batch_size",
    "test_g0_is_the_chosen_statistic_of_the_first_steps",
    "test_inverted_inputs_move_towards_their_targets_within_the_input_range",
    "test_the_fresh_responsiveness_head_is_a_new_head_of_the_same_kind"))

# the fast tests that judge a mutant of each file (by file name, wherever it lies),
# cheapest and most likely to fail first; a test file or test that does not exist is
# left out (and said), a file not named here gets DEFAULT_TESTS
TESTS: dict[str, tuple] = {
    "base.py": (SEAMS, PLUGIN),
    "fisher_context.py": (SEAMS, FISHER),
    "trm.py": (SEAMS, TRM_STEPS, TRM_UNIT),
    "merge.py": (PLUGIN, SEAMS),
    "merge_rules.py": (SEAMS, RULES),
    "tensordict.py": (SEAMS, RULES, PM_MATH),
    "pm_coefficient.py": (SEAMS, PM_MATH),
    "fisher.py": (FISHER, SEAMS, PM_MATH),
    "trajectory_subspace.py": (SEAMS, TRM_STEPS, TRM_UNIT),
}
DEFAULT_TESTS = (SEAMS, PLUGIN, RULES)

# Standard mutants are of two sources.
#
# Generated from the syntax tree (``_StandardSites``), so that they follow the code as it
# moves:
# - in every ``merge(self, ctx)`` method of a merger, each returned value replaced by
#   ``ctx.finetuned`` (theta*_t), ``ctx.merged`` (theta_hat_{t-1}) and ``ctx.theta0``
#   (theta_0), unless it already is that value (or its clone);
# - a coefficient forced to 0 and to 1: in a merger, each read of a float field of its
#   Options (``o.lam``, ``self.options.alpha``, ...) outside ``self.record(...)``; in the
#   tensor maths, each float parameter of a function, set at the top of its body;
# - a sign flipped: the arguments of ``sub(a, b)`` swapped (not inside ``norm(...)``,
#   where it is the same program), ``add(a, b)`` made
#   ``sub(a, b)``, the coefficient of ``axpy(y, a, x)`` and ``scale(x, c)`` negated;
# - a state update skipped: in a class, outside ``__init__``, each assignment to
#   ``self.<name>`` (``=``, ``+=``, ...) and each ``self.<name>.update/append/extend(...)``
#   replaced by ``pass``.
#
# Written by hand (``SPECIFIC``): (file name, code pattern, replacement, what it is). The
# pattern is matched with any run of white space standing for any other; it must occur
# exactly once in the file of that name; one that does not is reported as not applied.
SPECIFIC = [
    ("coma.py", "coma(ctx.merged, ctx.finetuned, self.options.alpha)",
     "coma(ctx.finetuned, ctx.merged, self.options.alpha)", "roles swapped (1 - alpha)"),
    ("magmax.py", "magmax(ctx.theta0, self.task_vectors, lam=o.lam)",
     "magmax(ctx.theta0, [tau], lam=o.lam)", "keep_all: earlier task vectors ignored"),
    ("dare.py", "self.generator(ctx.t, device)", "self.generator(0, device)",
     "one mask for every task"),
    ("cofima.py", "self.fisher_prev = fisher_t", "self.fisher_prev = self.fisher_prev or fisher_t",
     "state update skipped (first Fisher kept)"),
    ("cofima.py", "cofima(ctx.merged, ctx.finetuned, self.fisher_prev, fisher_t,",
     "cofima(ctx.merged, ctx.finetuned, fisher_t, self.fisher_prev,", "Fishers swapped"),
    ("pm.py", "self.state.update(fisher_t, ctx.finetuned)",
     "self.state.update(fisher_t, ctx.merged)", "state updated with theta_hat_{t-1}"),
    ("trm.py", "c.clamp_(-o.bound, o.bound)", "pass", "coefficient bound skipped"),
    ("trm.py", "out.end, out.c, out.step = values, c.detach().clone(), step + 1",
     "out.end, out.step = values, step + 1", "best iterate not kept"),
    ("trm.py", "d_last = td.sub(ctx.finetuned, ctx.merged)",
     "d_last = td.sub(ctx.merged, ctx.finetuned)", "sign of d_K flipped"),
    ("merge.py", "self._write(merged)", "pass", "merged weights not written back"),
    ("merge.py", "self._write(merged)", "self._write(finetuned)", "theta*_t written back"),
    ("merge.py", "self._write(merged)", "self._write(self.merged)",
     "theta_hat_{t-1} written back"),
    ("merge.py", "self._write(merged)", "self._write(self.theta0)", "theta_0 written back"),
    ("merge.py", "self.merged = td.clone(merged)", "self.merged = merged",
     "theta_hat kept by reference"),
    ("merge.py", "self.lora.write_base(finetuned)", "pass",
     "LoRA adapter not folded in nor reset"),
    ("merge.py", "self.finetuned_prev = finetuned if", "self.finetuned_prev = self.merged if",
     "finetuned protocol writes theta_hat"),
]

# (file name, a piece of the mutated line, the mutants of that line meant, why no input
# can tell them from the original); matched by content, not by line number
_CHUNKING = ("the per-sample gradient budget only sets the vmap chunk size, and the "
             "Fisher does not depend on the chunking (each sample's gradient is its own)")
EQUIVALENT = [
    ("fisher_context.py", "PER_SAMPLE_BUDGET = 2 * 2**30", ("* -> /", "2 -> 3", "** -> *", "30 -> 31"),
     _CHUNKING),
    ("fisher.py", "HOOK_BLOCK_ELEMENTS = {", ("** -> *", "2 -> 3", "22 -> 23", "26 -> 27"),
     "the block size only sets how many per-sample gradients the hooks engine forms at "
     "once; the Fisher is a sum over samples whatever the blocks (up to the order of "
     "float additions)"),
    ("pm.py", "fisher_t = td.scale(fisher_t, 1.0 / trace)", ("1.0 -> 2.0",),
     "every F_t scaled by 2 / tr(F_t) instead of 1 / tr(F_t): a common factor of all "
     "Fishers, which a_t (a ratio of sums linear in the Fishers) does not see; the "
     "running sums feed nothing else"),
    ("pm_coefficient.py", "diff = sub(merged, _f64(theta_i))", ("sign flipped: sub(b, a)",),
     "the objective's quadratic form diff^T F diff is even in diff"),
    ("merge_rules.py", "if p_f == 0.0:", ("0.0 -> 1.0",),
     "a shortcut: p = 0 then takes the general path, whose mask keeps every entry and "
     "rescales by 1 / (1 - 0) (the same values); p = 1 is refused before"),
    ("fisher.py", "retain_graph=i + 1 < len(labels)", ("+ -> -",),
     "the graph is then kept after its last use too: memory, not values"),
]


def equivalent_reason(m) -> str | None:
    line = source_line(m)
    for name, piece, what, why in EQUIVALENT:
        if Path(m.path).name == name and piece in line and m.what in what:
            return why
    return None


STRUCTURAL_CALLS = {
    "sum", "mean", "reshape", "view", "stack", "cat", "flatten", "transpose", "unsqueeze",
    "squeeze", "gather", "argmax", "argmin", "repeat", "permute", "flip", "kthvalue", "norm",
    "expand", "size", "chunk", "split", "narrow", "select", "all", "any", "max", "min",
    "softmax", "log_softmax", "logsumexp", "argsort", "bmm", "unfold", "index_select",
    "masked_fill", "zeros", "ones", "arange", "full", "full_like", "empty", "new_zeros",
}
STRUCTURAL_KW = {"dim", "dims", "keepdim", "device", "dtype", "chunk_size"}

BINOP_SWAP = {ast.Add: "-", ast.Sub: "+", ast.Mult: "/", ast.Div: "*", ast.Pow: "*",
              ast.FloorDiv: "/", ast.BitAnd: "|", ast.BitOr: "&", ast.Mod: "//"}
BINOP_TEXT = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**",
              ast.FloorDiv: "//", ast.BitAnd: "&", ast.BitOr: "|", ast.Mod: "%"}
CMP_NEG = {ast.Lt: (">=", "<"), ast.LtE: (">", "<="), ast.Gt: ("<=", ">"), ast.GtE: ("<", ">="),
           ast.Eq: ("!=", "=="), ast.NotEq: ("==", "!="), ast.Is: ("is not", "is"),
           ast.IsNot: ("is", "is not"), ast.In: ("not in", "in"), ast.NotIn: ("in", "not in")}


@dataclass
class Mutant:
    path: str
    line: int
    start: int           # byte offsets into the file
    end: int
    replacement: bytes
    what: str
    kind: str            # standard / operator

    @property
    def ident(self) -> str:
        return f"{self.path}:{self.line}:{self.what}"


# ------------------------------------------------------------------ generating mutants
class _Sites(ast.NodeVisitor):
    """Operator sites of one module, skipping raise statements, f-strings, annotations,
    subscripts and the constant arguments of shape calls."""

    def __init__(self, src: bytes):
        self.src = src
        self.lines = [0]
        for line in src.splitlines(keepends=True):
            self.lines.append(self.lines[-1] + len(line))
        self.found: list[tuple[int, int, int, bytes, str]] = []

    def off(self, lineno, col):
        return self.lines[lineno - 1] + col

    def span(self, node):
        return self.off(node.lineno, node.col_offset), self.off(node.end_lineno, node.end_col_offset)

    def add(self, line, start, end, new: str, what: str):
        self.found.append((line, start, end, new.encode(), what))

    # skipped subtrees
    def visit_Raise(self, node):
        pass

    def visit_If(self, node):
        if all(isinstance(stmt, ast.Raise) for stmt in node.body) and not node.orelse:
            return                        # an argument check: validation, not arithmetic
        self.generic_visit(node)

    def visit_ClassDef(self, node):
        if node.name.endswith("Options"):
            return                        # configuration data: tables in the seam tests
        self.generic_visit(node)

    def visit_JoinedStr(self, node):
        pass

    def visit_Subscript(self, node):
        self.visit(node.value)          # the indexed object, not the index

    def visit_AnnAssign(self, node):
        if node.value is not None:
            self.visit(node.value)

    def visit_arguments(self, node):
        for d in [*node.defaults, *node.kw_defaults]:
            if d is not None:
                self.visit(d)

    def visit_FunctionDef(self, node):
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]              # docstring
        self.visit(node.args)
        for d in node.decorator_list:
            self.visit(d)
        for stmt in body:
            self.visit(stmt)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Call(self, node):
        name = node.func.attr if isinstance(node.func, ast.Attribute) else (
            node.func.id if isinstance(node.func, ast.Name) else "")
        self.visit(node.func)
        for a in node.args:
            if name in STRUCTURAL_CALLS and isinstance(a, (ast.Constant, ast.UnaryOp)):
                continue
            self.visit(a)
        for kw in node.keywords:
            if kw.arg in STRUCTURAL_KW:
                continue
            self.visit(kw.value)

    # mutated sites
    def _operator_between(self, left, right, text):
        a = self.off(left.end_lineno, left.end_col_offset)
        b = self.off(right.lineno, right.col_offset)
        seg = self.src[a:b]
        i = seg.find(text.encode())
        return None if i < 0 else (a + i, a + i + len(text))

    def visit_BinOp(self, node):
        op = type(node.op)
        if op in BINOP_SWAP:
            pos = self._operator_between(node.left, node.right, BINOP_TEXT[op])
            if pos:
                self.add(node.lineno, *pos, BINOP_SWAP[op], f"{BINOP_TEXT[op]} -> {BINOP_SWAP[op]}")
        self.generic_visit(node)

    def visit_AugAssign(self, node):
        op = type(node.op)
        if op in BINOP_SWAP:
            text = BINOP_TEXT[op] + "="
            pos = self._operator_between(node.target, node.value, text)
            if pos:
                self.add(node.lineno, *pos, BINOP_SWAP[op] + "=", f"{text} -> {BINOP_SWAP[op]}=")
        self.visit(node.value)

    def visit_Compare(self, node):
        left = node.left
        for op, right in zip(node.ops, node.comparators):
            new, text = CMP_NEG[type(op)]
            a = self.off(left.end_lineno, left.end_col_offset)
            b = self.off(right.lineno, right.col_offset)
            seg = self.src[a:b].decode()
            stripped = " ".join(seg.replace("(", " ").replace(")", " ").split())
            if stripped == text:
                i = seg.find(text.split()[0])
                j = seg.rfind(text.split()[-1]) + len(text.split()[-1])
                self.add(node.lineno, a + len(seg[:i].encode()), a + len(seg[:j].encode()), new,
                         f"{text} -> {new}")
            left = right
        self.generic_visit(node)

    def visit_BoolOp(self, node):
        text, new = ("and", "or") if isinstance(node.op, ast.And) else ("or", "and")
        for left, right in zip(node.values, node.values[1:]):
            pos = self._operator_between(left, right, text)
            if pos:
                self.add(node.lineno, *pos, new, f"{text} -> {new}")
        self.generic_visit(node)

    def visit_UnaryOp(self, node):
        if isinstance(node.op, (ast.USub, ast.Not)):
            start, _ = self.span(node)
            width = 1 if isinstance(node.op, ast.USub) else 3
            if not (isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant)):
                self.add(node.lineno, start, start + width, "",
                         "unary - removed" if width == 1 else "not removed")
            else:                         # a negative literal: its value changes
                s, e = self.span(node)
                v = -node.operand.value
                self.add(node.lineno, s, e, repr(v + 1), f"{v!r} -> {v + 1!r}")
                return
        self.generic_visit(node)

    def visit_Constant(self, node):
        v = node.value
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return
        s, e = self.span(node)
        new = v + 1
        self.add(node.lineno, s, e, repr(new), f"{self.src[s:e].decode()} -> {new!r}")


def _module_body_sites(tree):
    """Top-level statements minus the module docstring and __all__."""
    body = tree.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    out = []
    for stmt in body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(stmt, ast.Assign) and any(getattr(t, "id", "") == "__all__"
                                                for t in stmt.targets):
            continue
        out.append(stmt)
    return out


def operator_mutants(path: str) -> list[Mutant]:
    src = (ROOT / path).read_bytes()
    tree = ast.parse(src)
    sites = _Sites(src)
    for stmt in _module_body_sites(tree):
        sites.visit(stmt)
    seen, out = set(), []
    for line, start, end, new, what in sites.found:
        if (start, end, new) in seen:
            continue
        seen.add((start, end, new))
        out.append(Mutant(path, line, start, end, new, what, "operator"))
    return out


def _call_name(node: ast.Call) -> str:
    return node.func.attr if isinstance(node.func, ast.Attribute) else (
        node.func.id if isinstance(node.func, ast.Name) else "")


class _StandardSites:
    """The generated standard mutants of one module (see the comment above ``SPECIFIC``)."""

    STATE_CALLS = {"update", "append", "extend"}
    SIGN_CALLS = {"axpy": 1, "scale": 1}        # call name -> the argument negated

    def __init__(self, path: str, src: bytes, tree: ast.Module):
        self.path, self.src, self.tree = path, src, tree
        self.sites = _Sites(src)                 # for its offsets
        self.found: list[tuple[int, int, int, bytes, str]] = []
        self.merger = "/mergers/" in f"/{path}"
        self.maths = "/tensormath/" in f"/{path}"

    def text(self, node) -> str:
        s, e = self.sites.span(node)
        return self.src[s:e].decode()

    def add(self, node, new: str, what: str, span=None):
        s, e = span or self.sites.span(node)
        self.found.append((node.lineno, s, e, new.encode(), what))

    def run(self):
        floats = self.float_option_fields()
        # arguments of a norm: |a - b| = |b - a|, a sign flip there is the same program
        self.in_norm = {id(a) for node in ast.walk(self.tree) if isinstance(node, ast.Call)
                        and _call_name(node) in ("norm", "abs") for a in node.args}
        for node in ast.walk(self.tree):
            if isinstance(node, ast.ClassDef) and not node.name.endswith("Options"):
                for fn in node.body:
                    if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        if self.merger and fn.name == "merge" and len(fn.args.args) >= 2:
                            self.returns(fn, fn.args.args[1].arg)
                        if fn.name != "__init__":
                            self.state_updates(fn)
                        if self.merger:
                            self.option_reads(fn, floats)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and self.maths:
                self.float_parameters(node)
            if isinstance(node, ast.Call):
                self.signs(node)
        return self.found

    def float_option_fields(self) -> set[str]:
        out = set()
        for node in ast.walk(self.tree):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Options"):
                for stmt in node.body:
                    if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                            and ast.unparse(stmt.annotation) == "float"):
                        out.add(stmt.target.id)
        return out

    @staticmethod
    def own_nodes(fn):
        """The nodes of a function's body, nested functions and classes left out."""
        stack = list(fn.body)
        while stack:
            node = stack.pop()
            yield node
            for child in ast.iter_child_nodes(node):
                if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                                          ast.Lambda)):
                    stack.append(child)

    def returns(self, fn, ctx: str):
        for node in self.own_nodes(fn):
            if isinstance(node, ast.Return) and node.value is not None:
                have = ast.unparse(node.value).replace(" ", "")
                for attr, name in (("finetuned", "theta*_t"), ("merged", "theta_hat_{t-1}"),
                                   ("theta0", "theta_0")):
                    want = f"{ctx}.{attr}"
                    if have in (want, f"clone({want})", f"td.clone({want})"):
                        continue
                    self.add(node.value, want, f"returns {name}")

    def state_updates(self, fn):
        def on_self(t):
            return (isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
                    and t.value.id == "self")

        for node in self.own_nodes(fn):
            hit = None
            if isinstance(node, ast.Assign) and any(
                    on_self(t) or (isinstance(t, ast.Tuple) and any(map(on_self, t.elts)))
                    for t in node.targets):
                hit = "assignment"
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)) and on_self(node.target):
                hit = "assignment"
            elif (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
                  and isinstance(node.value.func, ast.Attribute)
                  and node.value.func.attr in self.STATE_CALLS
                  and on_self(node.value.func.value)):
                hit = f".{node.value.func.attr}()"
            if hit:
                target = self.text(node).split("=")[0].split("(")[0].strip(" +-*/")
                self.add(node, "pass", f"state update skipped ({target})")

    def option_reads(self, fn, floats: set[str]):
        skip = set()
        for node in self.own_nodes(fn):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "record"):
                skip.update(id(n) for n in ast.walk(node))
            if isinstance(node, ast.If) and all(isinstance(b, ast.Raise) for b in node.body):
                skip.update(id(n) for n in ast.walk(node))
        for node in self.own_nodes(fn):
            if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load)
                    and node.attr in floats and id(node) not in skip
                    and ast.unparse(node.value) in ("o", "options", "self.options")):
                for v in ("0.0", "1.0"):
                    self.add(node, v, f"coefficient {node.attr} forced to {v[0]}")

    def float_parameters(self, fn):
        body = fn.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]
        if not body:
            return
        first = body[0]
        at = self.sites.off(first.lineno, first.col_offset)
        indent = " " * first.col_offset
        args = [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]
        for arg in args:
            ann = ast.unparse(arg.annotation) if arg.annotation is not None else ""
            if ann.split(" | ")[0] != "float":
                continue
            used = any(isinstance(n, ast.Name) and n.id == arg.arg for b in body
                       for n in ast.walk(b))
            if not used:
                continue
            for v in ("0.0", "1.0"):
                self.add(first, f"{arg.arg} = {v}\n{indent}",
                         f"coefficient {arg.arg} of {fn.name} forced to {v[0]}", span=(at, at))

    def signs(self, node: ast.Call):
        name = node.func.attr if isinstance(node.func, ast.Attribute) else (
            node.func.id if isinstance(node.func, ast.Name) else "")
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            return
        if name == "sub" and len(node.args) == 2 and id(node) not in self.in_norm:
            a, b = node.args
            s, _ = self.sites.span(a)
            _, e = self.sites.span(b)
            self.add(node, f"{self.text(b)}, {self.text(a)}", "sign flipped: sub(b, a)",
                     span=(s, e))
        elif name == "add" and len(node.args) == 2:
            self.add(node.func, self.text(node.func)[:-3] + "sub", "sign flipped: add -> sub")
        elif name in self.SIGN_CALLS and len(node.args) > self.SIGN_CALLS[name]:
            arg = node.args[self.SIGN_CALLS[name]]
            self.add(arg, f"-({self.text(arg)})", f"sign flipped: {name} coefficient negated")


def _loose(pattern: str) -> "re.Pattern":
    """``pattern`` with any run of white space matching any other (or none next to a
    bracket or comma)."""
    parts = [re.escape(w) for w in pattern.split()]
    return re.compile(r"\s+".join(parts).replace(r"\(\s+", r"\(\s*").replace(r",\s+", r",\s*"))


def specific_mutants(path: str, src: bytes, unapplied: list[str]) -> list[Mutant]:
    out = []
    text = src.decode()
    for name, old, new, what in SPECIFIC:
        if Path(path).name != name:
            continue
        hits = list(_loose(old).finditer(text))
        if len(hits) != 1:
            unapplied.append(f"`{path}`: {what}: pattern `{old}` found {len(hits)} times")
            continue
        h = hits[0]
        s, e = len(text[:h.start()].encode()), len(text[:h.end()].encode())
        line = text[:h.start()].count("\n") + 1
        out.append(Mutant(path, line, s, e, new.encode(), what, "standard"))
    return out


def standard_mutants(path: str, unapplied: list[str]) -> list[Mutant]:
    src = (ROOT / path).read_bytes()
    tree = ast.parse(src)
    out = [Mutant(path, line, s, e, new, what, "standard")
           for line, s, e, new, what in _StandardSites(path, src, tree).run()]
    return out + specific_mutants(path, src, unapplied)


def all_mutants(paths, unapplied: list[str] | None = None) -> list[Mutant]:
    """Every mutant of ``paths``, standard ones first; a mutant that leaves the module's
    syntax tree unchanged or equal to an earlier mutant's is dropped, one that does not
    parse is reported in ``unapplied``."""
    unapplied = [] if unapplied is None else unapplied
    out = []
    for p in paths:
        src = (ROOT / p).read_bytes()
        seen = {ast.dump(ast.parse(src))}
        for m in [*standard_mutants(p, unapplied), *operator_mutants(p)]:
            try:
                key = ast.dump(ast.parse(src[:m.start] + m.replacement + src[m.end:]))
            except SyntaxError:
                unapplied.append(f"`{p}:{m.line}`: {m.what}: the mutant does not parse")
                continue
            if key not in seen:
                seen.add(key)
                out.append(m)
    return out


# ------------------------------------------------------------------ running them
def prepare_copy() -> Path:
    tmp = Path(tempfile.mkdtemp(prefix="clmerge-mutation-"))
    shutil.copytree(ROOT / "clmerge", tmp / "clmerge",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copytree(ROOT / "tests", tmp / "tests",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml",):
        shutil.copy2(ROOT / name, tmp / name)
    for extra in ("data",):                # fixtures some tests read
        if (ROOT / extra).exists():
            os.symlink(ROOT / extra, tmp / extra)
    # bytecode checked against a hash of its source: a mutant of the same size written in
    # the same second as the original is still recompiled
    compileall.compile_dir(tmp / "clmerge", quiet=1,
                           invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
    return tmp


def preload() -> None:
    """Import, once, every module the tests need, then forget the project's own: forked
    runs inherit torch, avalanche, peft, ... and import ``clmerge`` afresh from the copy."""
    import pytest  # noqa: F401
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT))
    try:
        for name in ("clmerge.experiment.runner", "clmerge.plugins.merge",
                     "clmerge.backbones.lora", "clmerge.mergers.trm", "clmerge.mergers.pm",
                     "clmerge.mergers.cofima", "torch.testing", "torch.func",
                     "torch.nn.attention"):
            __import__(name)
    finally:
        sys.path.remove(str(ROOT))
        for name, mod in list(sys.modules.items()):
            f = getattr(mod, "__file__", None) or ""
            if name == "clmerge" or name.startswith("clmerge.") or f.startswith(str(ROOT)):
                del sys.modules[name]
    gc.collect()
    gc.freeze()        # what is loaded now is never scanned again, in any forked run


def start_tests(tree: Path, tests: tuple, log: Path) -> int:
    """Fork a run of ``tests`` on ``tree``; returns the child's pid (exit status 0: passed)."""
    args = ["-x", "-q", "-p", "no:cacheprovider", "-p", "no:unraisableexception",
            "-W", "ignore"]
    args += [str(a) for a in tests]
    pid = os.fork()
    if pid == 0:                          # the child: a fresh clmerge from the copy
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), write_through=True)
            sys.stderr = sys.stdout
            os.chdir(tree)
            sys.path.insert(0, str(tree))
            os.environ["PYTHONPATH"] = str(tree)
            os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"   # no entry-point scan
            import pytest

            code = int(pytest.main(args))
        except BaseException:             # noqa: BLE001 - any failure kills the mutant
            code = 3
        os._exit(code)
    return pid


def verdict_of(status: int) -> str:
    return "passed" if os.waitstatus_to_exitcode(status) == 0 else "failed"


def run_tests(tree: Path, tests: tuple, timeout: float, log: Path) -> tuple[str, float]:
    """'passed', 'failed' or 'timeout' for the tests on ``tree``, and the seconds taken."""
    t0 = time.perf_counter()
    pid = start_tests(tree, tests, log)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return verdict_of(status), time.perf_counter() - t0
        if time.perf_counter() > t0 + timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout", time.perf_counter() - t0
        time.sleep(0.05)


def apply(tree: Path, m: Mutant, original: bytes) -> None:
    target = tree / m.path
    target.write_bytes(original[:m.start] + m.replacement + original[m.end:])
    os.utime(target, None)


def tests_for(path: str, missing: set | None = None) -> tuple:
    """The tests that judge a mutant of ``path``, those whose file exists; the others go
    into ``missing``."""
    tests = TESTS.get(Path(path).name, DEFAULT_TESTS)
    flat: list = []
    for t in tests:
        for one in (t if isinstance(t, tuple) else (t,)):
            if (ROOT / one.split("::")[0]).exists():
                flat.append(one)
            elif missing is not None:
                missing.add(one.split("::")[0])
    return tuple(flat)


def source_line(m: Mutant) -> str:
    return (ROOT / m.path).read_text().splitlines()[m.line - 1].strip()


def report(results, out: Path, command: str, seconds: float, cpu: float,
           unapplied: list[str], missing_tests: set, n_mutants: int) -> None:
    by_file: dict[str, list] = {}
    for m, verdict in results:
        by_file.setdefault(m.path, []).append((m, verdict))
    lines = ["# Mutation report", "",
             f"Command: `{command}`", "",
             f"Time of this invocation: {seconds / 60:.1f} min wall, {cpu / 60:.1f} min CPU, "
             "one process at a time. A mutant is killed when its "
             "fast tests fail, error or time out; equivalent mutants (no input tells them "
             "from the original) are listed apart and left out of the score.", ""]
    total = killed = equivalent = 0
    std_total = std_killed = 0
    rows = []
    for path in sorted(by_file):
        rs = by_file[path]
        eq = [m for m, v in rs if v == "passed" and equivalent_reason(m)]
        surv = [(m, v) for m, v in rs if v == "passed" and not equivalent_reason(m)]
        k = sum(v != "passed" for _, v in rs)
        n = len(rs) - len(eq)
        total += n
        killed += k
        equivalent += len(eq)
        std = [(m, v) for m, v in rs if m.kind == "standard"]
        std_total += len(std)
        std_killed += sum(v != "passed" for _, v in std)
        rows.append((path, len(rs), k, len(surv), len(eq), 100.0 * k / n if n else 100.0,
                     sum(v == "timeout" for _, v in rs), surv, eq, std))
    score = 100.0 * killed / total if total else 100.0
    if len(results) < n_mutants:
        lines += [f"**Incomplete: {len(results)} of {n_mutants} mutants judged** (the run "
                  "was interrupted; `--resume` judges the rest).", ""]
    lines += [f"**Score: {killed}/{total} = {score:.1f}%** over {len(rows)} files "
              f"({equivalent} equivalent mutants left out). Standard mutants: "
              f"{std_killed}/{std_total} killed.", "",
              "| file | mutants | killed | survived | equivalent | score | of which timeouts |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for path, n, k, s, e, sc, to, *_ in rows:
        lines.append(f"| `{path}` | {n} | {k} | {s} | {e} | {sc:.1f}% | {to} |")
    lines += ["", "Tests run for a mutant of each file (with `-x`):", ""]
    for path, *_ in rows:
        lines.append(f"- `{path}`: {', '.join(sorted({t.split('::')[0] for t in tests_for(path)}))}")
    lines += ["", "## Not applied", ""]
    nothing = True
    for note in [*MISSING_TARGETS, *unapplied,
                 *(f"test file `{t}` not found" for t in sorted(missing_tests))]:
        nothing = False
        lines.append(f"- {note}")
    if nothing:
        lines.append("None: every target pattern found a file, every hand-written mutant "
                     "its code, every named test file exists.")
    lines += ["", "## Survivors", ""]
    any_surv = False
    for path, *_, surv, eq, std in rows:
        for m, _ in surv:
            any_surv = True
            lines.append(f"- `{path}:{m.line}` ({m.kind}) {m.what}: `{source_line(m)}`")
    if not any_surv:
        lines.append("None.")
    lines += ["", "## Equivalent mutants", ""]
    any_eq = False
    for path, *_, surv, eq, std in rows:
        for m in eq:
            any_eq = True
            lines.append(f"- `{path}:{m.line}` {m.what} in `{source_line(m)}`: "
                         f"{equivalent_reason(m)}")
    if not any_eq:
        lines.append("None.")
    lines += ["", "## Standard mutants", "",
              "| file | line | mutant | verdict |", "|---|---:|---|---|"]
    for path, *_, std in rows:
        for m, v in std:
            lines.append(f"| `{path}` | {m.line} | {m.what} | "
                         f"{'killed' if v != 'passed' else 'SURVIVED'}"
                         f"{' (timeout)' if v == 'timeout' else ''} |")
    out.write_text("\n".join(lines) + "\n")


def run_all(mutants, trees, baseline, timeout, on_verdict=None) -> list:
    """Every mutant on one of the trees (one run per tree at a time); [(mutant, verdict)].
    ``on_verdict(mutant, verdict)`` is called as each one is judged."""
    originals = {}
    free = list(range(len(trees)))
    running = {}                          # pid -> (mutant, tree index, deadline)
    results = {}
    queue = list(enumerate(mutants))
    try:
        _run_queue(queue, running, free, trees, originals, baseline, timeout, results,
                   on_verdict)
    finally:                              # interrupted: no run outlives this process
        for pid in running:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    return [results[i] for i in sorted(results)]


def _run_queue(queue, running, free, trees, originals, baseline, timeout, results,
               on_verdict) -> None:
    while queue or running:
        while queue and free:
            i, m = queue.pop(0)
            w = free.pop(0)
            tree = trees[w]
            original = originals.setdefault(m.path, (tree / m.path).read_bytes())
            apply(tree, m, original)
            tests = tests_for(m.path)
            limit = timeout or 3 * baseline[tests] + 20
            pid = start_tests(tree, tests, tree / "_logs/mutant.log")
            running[pid] = (i, m, w, time.perf_counter() + limit)
        time.sleep(0.05)
        for pid, (i, m, w, deadline) in list(running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                verdict = verdict_of(status)
            elif time.perf_counter() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                verdict = "timeout"
            else:
                continue
            del running[pid]
            target = trees[w] / m.path
            target.write_bytes(originals[m.path])
            os.utime(target, None)
            free.append(w)
            results[i] = (m, verdict)
            if on_verdict is not None:
                on_verdict(m, verdict)
            if verdict == "passed":
                print(f"  SURVIVED {m.path}:{m.line} {m.what}", flush=True)


def _digest(path: str) -> str:
    return hashlib.sha256((ROOT / path).read_bytes()).hexdigest()


def _key(m: Mutant) -> str:
    """A mutant's identity across runs of the same files."""
    return f"{m.path}:{m.start}:{m.end}:{m.replacement.decode()}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tools/mutation_report.md")
    ap.add_argument("--only", nargs="*", help="mutate only these files")
    ap.add_argument("--timeout", type=float, default=0,
                    help="seconds per mutant (0: 3 x the file's baseline + 20)")
    ap.add_argument("--list", action="store_true", help="list the mutants and stop")
    ap.add_argument("--jobs", type=int, default=1, help="mutants run at a time")
    ap.add_argument("--resume", action="store_true",
                    help="judge only the mutants the saved verdicts lack (an interrupted "
                         "run), keeping the others; refused when a mutated file changed")
    ap.add_argument("--survivors", action="store_true",
                    help="judge again only the mutants that survived the last run (its "
                         "verdicts file), keeping its other verdicts: for tests added "
                         "since; refused when a mutated file changed since")
    args = ap.parse_args(argv)
    verdicts_file = ROOT / Path(args.out).with_suffix(".json")
    paths = args.only or TARGETS
    unknown = [p for p in paths if p not in TARGETS]
    if unknown:
        print(f"not a mutation target: {unknown[0]}", file=sys.stderr)
        return 2
    unapplied: list[str] = []
    missing_tests: set = set()
    mutants = all_mutants(paths, unapplied)
    for path in paths:
        tests_for(path, missing_tests)
    for note in [*MISSING_TARGETS, *unapplied,
                 *(f"test file {t} not found" for t in sorted(missing_tests))]:
        print(f"not applied: {note}", file=sys.stderr)
    previous: dict = {}
    if args.survivors or args.resume:
        if args.only or not verdicts_file.exists():
            print(f"--survivors and --resume need the verdicts of a full run "
                  f"({verdicts_file.name}) and no --only", file=sys.stderr)
            return 2
        saved = json.loads(verdicts_file.read_text())
        changed = [p for p in paths if saved["files"].get(p) != _digest(p)]
        if changed or set(saved["files"]) != set(paths):
            print(f"refused: {(changed or ['the target list'])[0]} changed since the verdicts "
                  "were saved; run them all", file=sys.stderr)
            return 2
        previous = dict(saved["verdicts"])
        if set(previous) - {_key(m) for m in mutants}:
            print("refused: the mutants differ from those of the saved verdicts",
                  file=sys.stderr)
            return 2
    if args.list:
        for m in mutants:
            print(f"{m.path}:{m.line} [{m.kind}] {m.what}")
        print(f"{len(mutants)} mutants")
        return 0
    command = "nice -n 10 python tools/mutation.py" + (
        " --survivors" if args.survivors else "") + (" --resume" if args.resume else "") + (
        f" --only {' '.join(args.only)}" if args.only else "") + (
        f" --jobs {args.jobs}" if args.jobs != 1 else "")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))   # clean up on kill
    preload()
    trees = [prepare_copy() for _ in range(args.jobs)]
    for tree in trees:
        (tree / "_logs").mkdir()
    t_start = time.perf_counter()
    judged: dict = dict(previous)
    try:
        if args.survivors:
            todo = [m for m in mutants if previous.get(_key(m)) in (None, "passed")]
        else:
            todo = [m for m in mutants if _key(m) not in previous]
        print(f"{len(todo)} of {len(mutants)} mutants to judge", flush=True)
        baseline = {}
        for path in sorted({m.path for m in todo}):
            tests = tests_for(path)
            if tests not in baseline:
                verdict, secs = run_tests(trees[0], tests, 900, trees[0] / "_logs/baseline.log")
                if verdict != "passed":
                    print(f"the tests of {path} fail without a mutant; see "
                          f"{trees[0] / '_logs/baseline.log'}", file=sys.stderr)
                    return 1
                baseline[tests] = secs
            print(f"{path}: {sum(m.path == path for m in todo)} mutants, tests "
                  f"{baseline[tests]:.1f} s", flush=True)
        judged = dict(previous)
        digests = {p: _digest(p) for p in paths}

        def save(m, verdict):
            judged[_key(m)] = verdict
            if not args.only:
                verdicts_file.write_text(json.dumps({"files": digests, "verdicts": judged},
                                                    indent=0, sort_keys=True) + "\n")

        run_all(todo, trees, baseline, args.timeout, save)
    finally:
        secs = time.perf_counter() - t_start
        times = os.times()
        cpu = times.user + times.system + times.children_user + times.children_system
        results = [(m, judged[_key(m)]) for m in mutants if _key(m) in judged]
        if results:
            report(results, ROOT / args.out, command, secs, cpu, unapplied, missing_tests,
                   len(mutants))
        for tree in trees:
            shutil.rmtree(tree, ignore_errors=True)
    print(f"report: {args.out} ({secs / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)      # skip the interpreter's teardown of the preloaded extensions
