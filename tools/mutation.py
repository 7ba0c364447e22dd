"""Mutation testing of the merge code: are the fast tests able to tell a broken merger?

Usage (from the repository root, on one core)::

    nice -n 10 python tools/mutation.py [--out tools/mutation_report.md] [--only PATH ...]
                                        [--timeout 120] [--list]

Files mutated: ``clmerge/mergers/*.py``, ``clmerge/tensormath/*.py`` and
``clmerge/plugins/merge.py``. Two kinds of mutants:

- standard mutants (``STANDARD`` below), written by hand per merger: the merged weights
  replaced by the fine-tuned ones, by the previous merged ones, by the pretrained ones;
  a coefficient forced to 0 or to 1; a sign flipped; a state update skipped;
- operator mutants, one per site, generated from the syntax tree: ``+`` <-> ``-``,
  ``*`` <-> ``/``, ``**`` -> ``*``, ``//`` -> ``/``, ``&`` <-> ``|``, augmented
  assignments likewise; a comparison negated (``<`` -> ``>=``, ``==`` -> ``!=``, ``is``
  -> ``is not``, ``in`` -> ``not in``, ...); ``and`` <-> ``or``; a unary minus or a
  ``not`` removed; a numeric constant c -> c + 1. Skipped, as structural rather than
  arithmetic (a change there fails on a shape, not on a value): anything inside a
  ``raise`` statement, an f-string, a type annotation or a subscript, and the constant
  arguments of shape calls (``sum(0)``, ``reshape(-1)``, ``dim=1``, ...).

Every mutant is applied to a private copy of the tree (never to the working tree) and
judged by a fast subset of the tests chosen by the mutated file (``TESTS``), run with
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
import io
import os
import py_compile
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TARGETS = sorted([*ROOT.glob("clmerge/mergers/*.py"), *ROOT.glob("clmerge/tensormath/*.py"),
                  ROOT / "clmerge/plugins/merge.py"])
TARGETS = [p.relative_to(ROOT).as_posix() for p in TARGETS if p.name != "__init__.py"]

SEAMS = "tests/test_merger_seams.py"
PLUGIN = "tests/test_merge_plugin_seam.py"
RULES = "tests/test_merge_rules.py"
PM_MATH = "tests/test_pm_math.py"
FISHER = "tests/test_fisher_estimators.py"
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

# the fast tests that judge a mutant of each file, cheapest and most likely to fail first
TESTS: dict[str, tuple] = {
    "clmerge/mergers/base.py": (SEAMS, PLUGIN),
    "clmerge/mergers/fisher_context.py": (SEAMS, FISHER),
    "clmerge/mergers/trm.py": (SEAMS, TRM_UNIT),
    "clmerge/plugins/merge.py": (PLUGIN,),
    "clmerge/tensormath/merge_rules.py": (SEAMS, RULES),
    "clmerge/tensormath/tensordict.py": (SEAMS, RULES, PM_MATH),
    "clmerge/tensormath/pm_coefficient.py": (SEAMS, PM_MATH),
    "clmerge/tensormath/fisher.py": (SEAMS, PM_MATH, FISHER),
    "clmerge/tensormath/trajectory_subspace.py": (SEAMS, TRM_UNIT),
}
DEFAULT_TESTS = (SEAMS, PLUGIN)

# (file, exact source text, replacement, what it is); the text must occur exactly once
STANDARD = [
    # average
    ("clmerge/mergers/average.py", "return running_average(ctx.merged, ctx.finetuned, self.count)",
     "return ctx.finetuned", "returns theta*_t"),
    ("clmerge/mergers/average.py", "return running_average(ctx.merged, ctx.finetuned, self.count)",
     "return ctx.merged", "returns theta_hat_{t-1}"),
    ("clmerge/mergers/average.py", "return running_average(ctx.merged, ctx.finetuned, self.count)",
     "return ctx.theta0", "returns theta_0"),
    ("clmerge/mergers/average.py", "        self.count += 1\n", "        self.count = 1\n",
     "state update skipped (count stays 1)"),
    # sequential
    ("clmerge/mergers/sequential.py", "return ctx.finetuned", "return ctx.merged",
     "returns theta_hat_{t-1}"),
    ("clmerge/mergers/sequential.py", "return ctx.finetuned", "return ctx.theta0",
     "returns theta_0"),
    # task arithmetic
    ("clmerge/mergers/task_arithmetic.py", "return self.sum.merged(ctx.theta0, lam)",
     "return ctx.finetuned", "returns theta*_t"),
    ("clmerge/mergers/task_arithmetic.py", "return self.sum.merged(ctx.theta0, lam)",
     "return ctx.merged", "returns theta_hat_{t-1}"),
    ("clmerge/mergers/task_arithmetic.py", "return self.sum.merged(ctx.theta0, lam)",
     "return ctx.theta0", "returns theta_0"),
    ("clmerge/mergers/task_arithmetic.py", "return self.sum.merged(ctx.theta0, lam)",
     "return self.sum.merged(ctx.theta0, 0.0)", "coefficient forced to 0"),
    ("clmerge/mergers/task_arithmetic.py", "return self.sum.merged(ctx.theta0, lam)",
     "return self.sum.merged(ctx.theta0, 1.0)", "coefficient forced to 1"),
    ("clmerge/mergers/task_arithmetic.py", "self.sum.update(sub(ctx.finetuned, ctx.theta0))",
     "self.sum.update(sub(ctx.theta0, ctx.finetuned))", "sign of tau flipped"),
    ("clmerge/mergers/task_arithmetic.py", "self.sum.update(sub(ctx.finetuned, ctx.theta0))",
     "self.sum.value = None; self.sum.update(sub(ctx.finetuned, ctx.theta0))",
     "state update skipped (sum restarted)"),
    # TIES
    ("clmerge/mergers/ties.py", "return ties_merge(ctx.theta0, self.task_vectors, k=o.k, lam=o.lam,",
     "return ctx.finetuned\n        return ties_merge(ctx.theta0, self.task_vectors, k=o.k, lam=o.lam,",
     "returns theta*_t"),
    ("clmerge/mergers/ties.py", "return ties_merge(ctx.theta0, self.task_vectors, k=o.k, lam=o.lam,",
     "return ctx.merged\n        return ties_merge(ctx.theta0, self.task_vectors, k=o.k, lam=o.lam,",
     "returns theta_hat_{t-1}"),
    ("clmerge/mergers/ties.py", "return ties_merge(ctx.theta0, self.task_vectors, k=o.k, lam=o.lam,",
     "return ctx.theta0\n        return ties_merge(ctx.theta0, self.task_vectors, k=o.k, lam=o.lam,",
     "returns theta_0"),
    ("clmerge/mergers/ties.py", "k=o.k, lam=o.lam,", "k=o.k, lam=0.0,", "coefficient forced to 0"),
    ("clmerge/mergers/ties.py", "k=o.k, lam=o.lam,", "k=o.k, lam=1.0,", "coefficient forced to 1"),
    ("clmerge/mergers/ties.py", "self.task_vectors.append(sub(ctx.finetuned, ctx.theta0))",
     "self.task_vectors.append(sub(ctx.theta0, ctx.finetuned))", "sign of tau flipped"),
    ("clmerge/mergers/ties.py", "self.task_vectors.append(sub(ctx.finetuned, ctx.theta0))",
     "self.task_vectors = [sub(ctx.finetuned, ctx.theta0)]",
     "state update skipped (only the last task vector kept)"),
    # MagMax
    ("clmerge/mergers/magmax.py", "return self.acc.merged(ctx.theta0, lam=o.lam)",
     "return ctx.finetuned", "returns theta*_t"),
    ("clmerge/mergers/magmax.py", "return self.acc.merged(ctx.theta0, lam=o.lam)",
     "return ctx.merged", "returns theta_hat_{t-1}"),
    ("clmerge/mergers/magmax.py", "return self.acc.merged(ctx.theta0, lam=o.lam)",
     "return ctx.theta0", "returns theta_0"),
    ("clmerge/mergers/magmax.py", "return self.acc.merged(ctx.theta0, lam=o.lam)",
     "return self.acc.merged(ctx.theta0, lam=0.0)", "coefficient forced to 0"),
    ("clmerge/mergers/magmax.py", "return self.acc.merged(ctx.theta0, lam=o.lam)",
     "return self.acc.merged(ctx.theta0, lam=1.0)", "coefficient forced to 1"),
    ("clmerge/mergers/magmax.py", "tau = sub(ctx.finetuned, ctx.theta0)",
     "tau = sub(ctx.theta0, ctx.finetuned)", "sign of tau flipped"),
    ("clmerge/mergers/magmax.py", "        self.acc.update(tau)\n",
     "        self.acc.value = None\n        self.acc.update(tau)\n",
     "state update skipped (running max restarted)"),
    ("clmerge/mergers/magmax.py", "return magmax(ctx.theta0, self.task_vectors, lam=o.lam)",
     "return magmax(ctx.theta0, [tau], lam=o.lam)", "keep_all: earlier task vectors ignored"),
    # CoMA
    ("clmerge/mergers/coma.py", "return coma(ctx.merged, ctx.finetuned, self.options.alpha)",
     "return ctx.finetuned", "returns theta*_t"),
    ("clmerge/mergers/coma.py", "return coma(ctx.merged, ctx.finetuned, self.options.alpha)",
     "return ctx.merged", "returns theta_hat_{t-1}"),
    ("clmerge/mergers/coma.py", "return coma(ctx.merged, ctx.finetuned, self.options.alpha)",
     "return ctx.theta0", "returns theta_0"),
    ("clmerge/mergers/coma.py", "return coma(ctx.merged, ctx.finetuned, self.options.alpha)",
     "return coma(ctx.merged, ctx.finetuned, 0.0)", "coefficient forced to 0"),
    ("clmerge/mergers/coma.py", "return coma(ctx.merged, ctx.finetuned, self.options.alpha)",
     "return coma(ctx.merged, ctx.finetuned, 1.0)", "coefficient forced to 1"),
    ("clmerge/mergers/coma.py", "return coma(ctx.merged, ctx.finetuned, self.options.alpha)",
     "return coma(ctx.finetuned, ctx.merged, self.options.alpha)", "roles swapped (1 - alpha)"),
    ("clmerge/mergers/coma.py", "return clone(ctx.finetuned)", "return clone(ctx.theta0)",
     "first task returns theta_0"),
    # DARE
    ("clmerge/mergers/dare.py", "return running_average(ctx.merged, add(ctx.merged, dropped), self.count)",
     "return ctx.finetuned", "returns theta*_t"),
    ("clmerge/mergers/dare.py", "return running_average(ctx.merged, add(ctx.merged, dropped), self.count)",
     "return ctx.merged", "returns theta_hat_{t-1}"),
    ("clmerge/mergers/dare.py", "return running_average(ctx.merged, add(ctx.merged, dropped), self.count)",
     "return ctx.theta0", "returns theta_0"),
    ("clmerge/mergers/dare.py", "dropped = dare(delta, self.options.p, self.generator(ctx.t, device))",
     "dropped = dare(delta, 0.0, self.generator(ctx.t, device))", "drop rate forced to 0"),
    ("clmerge/mergers/dare.py", "delta = sub(ctx.finetuned, ctx.merged)",
     "delta = sub(ctx.merged, ctx.finetuned)", "sign of Delta flipped"),
    ("clmerge/mergers/dare.py", "        self.count += 1\n", "        self.count = 1\n",
     "state update skipped (count stays 1)"),
    ("clmerge/mergers/dare.py", "self.generator(ctx.t, device)", "self.generator(0, device)",
     "one mask for every task"),
    # CoFiMA
    ("clmerge/mergers/cofima.py", "        self.fisher_prev = fisher_t\n        return merged",
     "        self.fisher_prev = fisher_t\n        return ctx.finetuned", "returns theta*_t"),
    ("clmerge/mergers/cofima.py", "        self.fisher_prev = fisher_t\n        return merged",
     "        self.fisher_prev = fisher_t\n        return ctx.merged", "returns theta_hat_{t-1}"),
    ("clmerge/mergers/cofima.py", "        self.fisher_prev = fisher_t\n        return merged",
     "        self.fisher_prev = fisher_t\n        return ctx.theta0", "returns theta_0"),
    ("clmerge/mergers/cofima.py", "alpha=o.alpha, fisher_floor", "alpha=0.0, fisher_floor",
     "coefficient forced to 0"),
    ("clmerge/mergers/cofima.py", "alpha=o.alpha, fisher_floor", "alpha=1.0, fisher_floor",
     "coefficient forced to 1"),
    ("clmerge/mergers/cofima.py", "        self.fisher_prev = fisher_t\n",
     "        self.fisher_prev = self.fisher_prev or fisher_t\n",
     "state update skipped (first Fisher kept)"),
    ("clmerge/mergers/cofima.py", "cofima(ctx.merged, ctx.finetuned, self.fisher_prev, fisher_t,",
     "cofima(ctx.merged, ctx.finetuned, fisher_t, self.fisher_prev,", "Fishers swapped"),
    # P&M
    ("clmerge/mergers/pm.py", "return td.axpy(ctx.merged, a, delta)", "return ctx.finetuned",
     "returns theta*_t"),
    ("clmerge/mergers/pm.py", "return td.axpy(ctx.merged, a, delta)", "return ctx.merged",
     "returns theta_hat_{t-1}"),
    ("clmerge/mergers/pm.py", "return td.axpy(ctx.merged, a, delta)", "return ctx.theta0",
     "returns theta_0"),
    ("clmerge/mergers/pm.py", "return td.axpy(ctx.merged, a, delta)",
     "return td.axpy(ctx.merged, 0.0, delta)", "coefficient forced to 0"),
    ("clmerge/mergers/pm.py", "return td.axpy(ctx.merged, a, delta)",
     "return td.axpy(ctx.merged, 1.0, delta)", "coefficient forced to 1"),
    ("clmerge/mergers/pm.py", "return td.axpy(ctx.merged, a, delta)",
     "return td.axpy(ctx.merged, a, td.scale(delta, -1.0))", "sign of the update flipped"),
    ("clmerge/mergers/pm.py", "delta = td.sub(ctx.finetuned, ctx.merged)",
     "delta = td.sub(ctx.merged, ctx.finetuned)", "sign of Delta flipped"),
    ("clmerge/mergers/pm.py", "        self.state.update(fisher_t, ctx.finetuned)\n", "",
     "state update skipped"),
    ("clmerge/mergers/pm.py", "        self.state.update(fisher_t, ctx.finetuned)\n",
     "        self.state.update(fisher_t, ctx.merged)\n", "state updated with theta_hat_{t-1}"),
    # TRM
    ("clmerge/mergers/trm.py", "        return merged\n\n    # -- the pieces",
     "        return ctx.finetuned\n\n    # -- the pieces", "returns theta*_t"),
    ("clmerge/mergers/trm.py", "        return merged\n\n    # -- the pieces",
     "        return ctx.merged\n\n    # -- the pieces", "returns theta_hat_{t-1}"),
    ("clmerge/mergers/trm.py", "        return merged\n\n    # -- the pieces",
     "        return ctx.theta0\n\n    # -- the pieces", "returns theta_0"),
    ("clmerge/mergers/trm.py", "        init.append(o.init_last)", "        init.append(0.0)",
     "initial coefficient forced to 0"),
    ("clmerge/mergers/trm.py", "        init.append(o.init_last)", "        init.append(1.0)",
     "initial coefficient forced to 1"),
    ("clmerge/mergers/trm.py", "d_last = td.sub(ctx.finetuned, ctx.merged)",
     "d_last = td.sub(ctx.merged, ctx.finetuned)", "sign of d_K flipped"),
    ("clmerge/mergers/trm.py", "                            c.clamp_(-o.bound, o.bound)",
     "                            pass", "coefficient bound skipped"),
    ("clmerge/mergers/trm.py", "                            best, c_best, best_step = values, c.detach().clone(), step + 1",
     "                            best, best_step = values, step + 1", "best iterate not kept"),
    # the merge driver
    ("clmerge/plugins/merge.py", "        self._write(merged)\n", "", "merged weights not written back"),
    ("clmerge/plugins/merge.py", "        self._write(merged)\n", "        self._write(finetuned)\n",
     "theta*_t written back"),
    ("clmerge/plugins/merge.py", "        self._write(merged)\n", "        self._write(self.merged)\n",
     "theta_hat_{t-1} written back"),
    ("clmerge/plugins/merge.py", "        self._write(merged)\n", "        self._write(self.theta0)\n",
     "theta_0 written back"),
    ("clmerge/plugins/merge.py", "        self.merged = td.clone(merged)\n", "",
     "state update skipped (theta_hat kept at theta_0)"),
    ("clmerge/plugins/merge.py", "        self.merged = td.clone(merged)\n",
     "        self.merged = merged\n", "theta_hat kept by reference"),
    ("clmerge/plugins/merge.py", "            self.lora.write_base(finetuned)\n", "            pass\n",
     "LoRA adapter not folded in nor reset"),
    ("clmerge/plugins/merge.py", "return td.add(td.clone(self.weights), self.lora.delta())",
     "return td.sub(td.clone(self.weights), self.lora.delta())", "sign of the LoRA delta flipped"),
    ("clmerge/plugins/merge.py", "return td.add(td.clone(self.weights), self.lora.delta())",
     "return td.clone(self.weights)", "LoRA delta left out of theta*_t"),
    ("clmerge/plugins/merge.py", "        self.start = td.clone(self.weights)\n", "",
     "start not recorded"),
    ("clmerge/plugins/merge.py", "self.finetuned_prev = finetuned if self.start_mode",
     "self.finetuned_prev = self.merged if self.start_mode", "finetuned protocol writes theta_hat"),
]

# mutant id -> why no input can tell it from the original
_CHUNKING = ("the per-sample gradient budget only sets the vmap chunk size, and the "
             "Fisher does not depend on the chunking (each sample's gradient is its own)")
EQUIVALENT: dict[str, str] = {
    "clmerge/mergers/fisher_context.py:36:* -> /": _CHUNKING,
    "clmerge/mergers/fisher_context.py:36:2 -> 3": _CHUNKING,
    "clmerge/mergers/fisher_context.py:36:** -> *": _CHUNKING,
    "clmerge/mergers/fisher_context.py:36:30 -> 31": _CHUNKING,
    "clmerge/mergers/pm.py:158:1.0 -> 2.0": (
        "every F_t scaled by 2 / tr(F_t) instead of 1 / tr(F_t): a common factor of all "
        "Fishers, which a_t (a ratio of sums linear in the Fishers) does not see; the "
        "running sums feed nothing else"),
}

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


def standard_mutants(path: str) -> list[Mutant]:
    src = (ROOT / path).read_bytes()
    out = []
    for p, old, new, what in STANDARD:
        if p != path:
            continue
        i = src.find(old.encode())
        if i < 0 or src.find(old.encode(), i + 1) >= 0:
            raise SystemExit(f"standard mutant {what!r} of {path}: the text must occur once: "
                             f"{old!r}")
        line = src[:i].count(b"\n") + 1
        out.append(Mutant(path, line, i, i + len(old.encode()), new.encode(), what, "standard"))
    return out


def all_mutants(paths) -> list[Mutant]:
    return [m for p in paths for m in [*standard_mutants(p), *operator_mutants(p)]]


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


def tests_for(path: str) -> tuple:
    tests = TESTS.get(path, DEFAULT_TESTS)
    flat: list = []
    for t in tests:
        flat.extend(t if isinstance(t, tuple) else (t,))
    return tuple(flat)


def source_line(m: Mutant) -> str:
    return (ROOT / m.path).read_text().splitlines()[m.line - 1].strip()


def report(results, out: Path, command: str, seconds: float, cpu: float) -> None:
    by_file: dict[str, list] = {}
    for m, verdict in results:
        by_file.setdefault(m.path, []).append((m, verdict))
    lines = ["# Mutation report", "",
             f"Command: `{command}`", "",
             f"Time: {seconds / 60:.1f} min wall, {cpu / 60:.1f} min CPU, one process at a "
             "time. A mutant is killed when its "
             "fast tests fail, error or time out; equivalent mutants (no input tells them "
             "from the original) are listed apart and left out of the score.", ""]
    total = killed = equivalent = 0
    std_total = std_killed = 0
    rows = []
    for path in sorted(by_file):
        rs = by_file[path]
        eq = [m for m, v in rs if v == "passed" and m.ident in EQUIVALENT]
        surv = [(m, v) for m, v in rs if v == "passed" and m.ident not in EQUIVALENT]
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
    lines += [f"**Score: {killed}/{total} = {score:.1f}%** over {len(rows)} files "
              f"({equivalent} equivalent mutants left out). Standard mutants: "
              f"{std_killed}/{std_total} killed.", "",
              "| file | mutants | killed | survived | equivalent | score | of which timeouts |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for path, n, k, s, e, sc, to, *_ in rows:
        lines.append(f"| `{path}` | {n} | {k} | {s} | {e} | {sc:.1f}% | {to} |")
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
                         f"{EQUIVALENT[m.ident]}")
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


def run_all(mutants, trees, baseline, timeout) -> list:
    """Every mutant on one of the trees (one run per tree at a time); [(mutant, verdict)]."""
    originals = {}
    free = list(range(len(trees)))
    running = {}                          # pid -> (mutant, tree index, deadline)
    results = {}
    queue = list(enumerate(mutants))
    try:
        _run_queue(queue, running, free, trees, originals, baseline, timeout, results)
    finally:                              # interrupted: no run outlives this process
        for pid in running:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    return [results[i] for i in sorted(results)]


def _run_queue(queue, running, free, trees, originals, baseline, timeout, results) -> None:
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
            if verdict == "passed":
                print(f"  SURVIVED {m.path}:{m.line} {m.what}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tools/mutation_report.md")
    ap.add_argument("--only", nargs="*", help="mutate only these files")
    ap.add_argument("--timeout", type=float, default=0,
                    help="seconds per mutant (0: 3 x the file's baseline + 20)")
    ap.add_argument("--list", action="store_true", help="list the mutants and stop")
    ap.add_argument("--jobs", type=int, default=1, help="mutants run at a time")
    args = ap.parse_args(argv)
    paths = args.only or TARGETS
    unknown = [p for p in paths if p not in TARGETS]
    if unknown:
        print(f"not a mutation target: {unknown[0]}", file=sys.stderr)
        return 2
    mutants = all_mutants(paths)
    if args.list:
        for m in mutants:
            print(f"{m.path}:{m.line} [{m.kind}] {m.what}")
        print(f"{len(mutants)} mutants")
        return 0
    command = "nice -n 10 python tools/mutation.py" + (
        f" --only {' '.join(args.only)}" if args.only else "") + (
        f" --jobs {args.jobs}" if args.jobs != 1 else "")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))   # clean up on kill
    preload()
    trees = [prepare_copy() for _ in range(args.jobs)]
    for tree in trees:
        (tree / "_logs").mkdir()
    t_start = time.perf_counter()
    results = []
    try:
        baseline = {}
        for path in paths:
            tests = tests_for(path)
            if tests not in baseline:
                verdict, secs = run_tests(trees[0], tests, 900, trees[0] / "_logs/baseline.log")
                if verdict != "passed":
                    print(f"the tests of {path} fail without a mutant; see "
                          f"{trees[0] / '_logs/baseline.log'}", file=sys.stderr)
                    return 1
                baseline[tests] = secs
            print(f"{path}: {sum(m.path == path for m in mutants)} mutants, tests "
                  f"{baseline[tests]:.1f} s", flush=True)
        results = run_all(mutants, trees, baseline, args.timeout)
    finally:
        secs = time.perf_counter() - t_start
        times = os.times()
        cpu = times.user + times.system + times.children_user + times.children_system
        if results:
            report(results, ROOT / args.out, command, secs, cpu)
        for tree in trees:
            shutil.rmtree(tree, ignore_errors=True)
    print(f"report: {args.out} ({secs / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)      # skip the interpreter's teardown of the preloaded extensions
