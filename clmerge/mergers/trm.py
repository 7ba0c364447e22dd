"""``trm``: Trajectory Regularized Merging, as reconstructed from its abstract.

Paper: X. Wang, C. Deng, "Revitalizing the Beginning: Avoiding Storage Dependency for
Model Merging in Continual Learning", arXiv 2605.08311. Only the abstract is public:
the merge is an optimisation inside an "augmented trajectory subspace" with three
objectives (task alignment, prediction consistency, gradient responsiveness), and it
needs no stored old models, task vectors, Fisher statistics or data. Everything below
is our reconstruction; every choice is an option so that the paper's exact form can be
dropped in when it is published. No TRM equation, weight or optimiser setting is
published: every constant here is ours.

After task t, with theta_hat_{t-1} the merged model, theta_0 the pretrained one and
theta_t^(1..K) the K points of task t's trajectory (K-1 recorded by
:class:`clmerge.plugins.trajectory.TrajectoryPlugin`, the K-th is theta*_t)::

    d_k = theta_t^(k) - theta_hat_{t-1}                       trajectory directions
    a   = theta_hat_{t-1} - theta_0                            accumulated vector
    r_j ~ Gaussian, |r_j[m]| = |d_K[m]| per weight m           random directions
    D   = rescale(d_1..d_K, a, r)     (``normalise``: every direction gets |d_K[m]| on
                                       every weight m; ``orthonormal``: Gram-Schmidt per
                                       weight, d_K first; ``none``: as is)
    theta(c) = theta_hat_{t-1} + sum_j c_j D_j,    |c_j| <= ``bound``
    c* = argmin_c  l_TA L_TA + l_PC L_PC + l_GR L_GR           (projected Adam)
    theta_hat_t = theta(c*)

- L_TA: cross-entropy of theta(c) on current-task minibatches through head t;
- L_PC: tau^2 KL(softmax(z_old(theta_hat_{t-1}) / tau) || softmax(z_old(theta(c)) / tau)),
  z_old the concatenated logits of heads 0..t-1 (LwF-style, no old data) on inputs
  chosen by ``pc_inputs``:

  * ``current``: the current task's inputs (the literal reading). They are inputs the
    task has already fitted, and the old heads' outputs on them say little about the
    old classes: L_PC can be driven to near zero there while the old tasks'
    task-incremental accuracy falls.
  * ``inverted``: inputs synthesised from the old heads. Each current input
    is moved by ``invert_steps`` signed-gradient steps on the input towards a class of
    an old task drawn at random, under the fixed theta_hat_{t-1} and its old heads
    (model inversion, as in data-free distillation). The teacher is confident on them,
    so matching it there constrains the merged model where the old heads decide,
    which is what the term is meant to protect; they are built at the merge from the
    current inputs and dropped with them, so no-storage holds.
  * ``augmented`` (default): pairwise mixtures of current inputs plus Gaussian noise;
    cheaper, off the current task's manifold but not aimed at the old classes. Chosen
    by the calibration rule (:mod:`clmerge.report.trm_calibration`) on
    ``split_glyphs_calibration``, one seed, against ``inverted`` and ``current`` (the
    book's calibration table gives the three accuracies); a one-seed difference, taken
    because the rule says so, not because it is established.

- L_GR: max(0, g0 - |dL(theta(c))/dtheta|) on a held-out current-task minibatch of the
  training batch size, g0 the median (``g0_stat``) gradient norm (w.r.t. the mergeable
  weights) over the first training steps of task t, measured at the same batch size
  and recorded for free by :class:`clmerge.plugins.diagnostics.DiagnosticsPlugin`;
  differentiated through the inner gradient (create_graph). The median, because the
  first-step norms span orders of magnitude, so a mean is set by one step. L is the
  cross-entropy through a *fresh* head (``gr_head=fresh``, default, drawn from the
  run's seed): the next task starts with a new head, and g0
  was measured with one, so the hinge asks the merged backbone to be as responsive as
  the start of task t was. Deviation from the literal reading (``gr_head=current``):
  with the trained head a gradient as large as g0 can only come from a higher
  current-task loss, so the hinge then works directly against L_TA (it raises the
  current-task loss during the merge).

The optimiser. Coefficients start at 0 except ``init_last`` (0.5) on d_K (unchanged by
the rescaling, so the start is theta_hat_{t-1} + 0.5 d_K whatever ``normalise``). Each
Adam step (lr ``lr``) uses one fitting minibatch (cycled) for L_TA and L_PC, L_GR every
``gr_every`` steps, then projects c onto [-bound, bound]. Every ``eval_every`` steps
(and at the start and the end) the whole objective is evaluated on a fixed set: all
fitting minibatches, all consistency inputs and the held-out minibatch. Its values form
the merge's recorded curve (``objective_curve``), and the merge returns the best
evaluated iterate (``keep_best``), so it never ends worse on its own objective than
where it started. Deviations from the reconstruction's "Adam, lr 1e-2, a few hundred
steps": the rescaling, the bound and the best-iterate rule are ours; without them Adam
moves each per-module coefficient by about lr per step whatever its gradient, the
nearly collinear directions add up, and the merge random-walks away from its start.
The budget is ours too: 200 steps at lr 1e-2 (L_GR every 4th step, the objective every
10th) cost several times the task's own training (a result records both per task:
``merge_seconds``, ``train_seconds``; ``perf/trm_terms.py`` times each term), so the
default is 50 steps at lr 2e-2: with the bound at 1, lr x steps = 1 still lets a
coefficient cross the whole box. ``steps`` and ``lr`` restore the longer budget.

Data: the last ``batches + 1`` training minibatches of task t, recorded by the
trajectory plugin; the last one of full batch size is held out for L_GR. With LoRA
every direction is a dense per-target delta, so the optimisation touches only the LoRA
target weights; under full fine-tuning (the protocol of MagMax, arXiv 2407.06322, whose
benchmarks TRM reports on) every backbone weight. Random draws (random directions, the
fresh head, the synthesised inputs) come from the run's seed and ``seed``. Nothing
persists across tasks: ``state_bytes()`` is 0.

Choices of ours where the abstract is silent (each an option): the directions
(``trajectory``, ``accumulated``, ``random_directions``) and their rescaling,
per-module vs global coefficients (``coefficients``), the initial point and the bound,
the loss weights (0 switches a term off), tau, the consistency inputs, the reference
g0, the head and the hinge form, the optimiser budget. The constants no source gives
are chosen on a calibration stream, never on the streams results are reported on
(:mod:`clmerge.report.trm_calibration`).
"""

from __future__ import annotations

import contextlib
import copy
import statistics
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from clmerge.mergers.base import MergeContext, Merger, check_choice, parameter_names
from clmerge.tensormath import tensordict as td
from clmerge.tensormath.trajectory_subspace import (CoefficientSubspace, gradient_hinge,
                                                    gradient_norm, invert_inputs, mix_inputs,
                                                    prediction_consistency, random_direction,
                                                    rescale_directions)

TERMS = ("ta", "pc", "gr")


@dataclass
class TRMOptions:
    snapshots: int = field(default=4, metadata={
        "help": "K: points of the task's trajectory used as directions (the last is theta*_t)",
        "max": 64, "why": "each snapshot holds a copy of the mergeable weights"})
    trajectory: bool = field(default=True, metadata={
        "help": "use the K-1 intermediate trajectory directions (false: only d_K)"})
    accumulated: bool = field(default=True, metadata={
        "help": "add the accumulated vector theta_hat_{t-1} - theta_0 as a direction"})
    random_directions: int = field(default=0, metadata={
        "help": "Gaussian directions added, each with |d_K|'s norm on every weight",
        "max": 64, "why": "each direction holds a copy of the mergeable weights"})
    normalise: str = field(default="norm", metadata={
        "help": "rescale every direction to |d_K| on every weight (norm), also make them "
                "orthogonal per weight first (orthonormal), or leave them (none)"})
    coefficients: str = field(default="per_module", metadata={
        "help": "per_module (one coefficient per direction and weight) or global"})
    init_last: float = field(default=0.5, metadata={
        "help": "initial coefficient on d_K (every other direction starts at 0)"})
    bound: float = field(default=1.0, metadata={
        "help": "every coefficient is kept in [-bound, bound] (0: unbounded)"})
    ta: float = field(default=1.0, metadata={"help": "weight of task alignment L_TA (0: off)"})
    pc: float = field(default=1.0, metadata={
        "help": "weight of prediction consistency L_PC (0: off)"})
    gr: float = field(default=1.0, metadata={
        "help": "weight of the gradient-responsiveness hinge L_GR (0: off)"})
    tau: float = field(default=2.0, metadata={"help": "distillation temperature of L_PC"})
    pc_inputs: str = field(default="augmented", metadata={
        "help": "inputs of L_PC: current (the task's own), augmented (mixtures + noise) or "
                "inverted (current inputs moved towards old classes under the old model)"})
    invert_steps: int = field(default=5, metadata={
        "help": "signed-gradient steps that synthesise each inverted input",
        "max": 1000, "why": "each step is a forward and backward pass of the old model on "
                            "every inverted batch"})
    invert_step: float = field(default=0.05, metadata={
        "help": "size of one inversion step, in standard deviations of the inputs"})
    g0_scale: float = field(default=1.0, metadata={
        "help": "hinge reference = g0_scale x g0_stat of task t's first-steps gradient norms"})
    g0_stat: str = field(default="median", metadata={
        "help": "statistic of the first-steps gradient norms used as g0: median or mean"})
    gr_head: str = field(default="fresh", metadata={
        "help": "head of L_GR's loss: fresh (a newly initialised head, as the next task "
                "starts) or current (the trained head t: the literal reading)"})
    gr_every: int = field(default=5, metadata={"help": "evaluate L_GR every this many steps",
                                               "max": 100_000, "why": "the most steps"})
    gr_samples: int = field(default=0, metadata={
        "help": "samples of the held-out minibatch used by L_GR (0: all, the training "
                "batch size g0 was measured at)",
        "max": 1_000_000, "why": "the largest training batch"})
    steps: int = field(default=50, metadata={
        "help": "Adam steps on the coefficients",
        "max": 100_000, "why": "each step is a forward and backward pass on the task's "
                               "batches (the default, 50, takes seconds)"})
    lr: float = field(default=0.02, metadata={"help": "Adam learning rate of the coefficients"})
    eval_every: int = field(default=10, metadata={
        "help": "evaluate the whole objective on the fixed set every this many steps",
        "max": 100_000, "why": "the most steps"})
    keep_best: bool = field(default=True, metadata={
        "help": "return the evaluated iterate with the lowest objective (false: the last)"})
    batches: int = field(default=4, metadata={
        "help": "current-task minibatches the objectives cycle over (+1 held out for L_GR)",
        "max": 1000, "why": "the batches are held in memory for the whole merge"})
    seed: int = field(default=0, metadata={
        "help": "offset of the merge's random draws (added to the run's seed)"})

    def __post_init__(self):
        check_choice(self.coefficients, "coefficients", ("per_module", "global"))
        check_choice(self.gr_head, "gr_head", ("fresh", "current"))
        check_choice(self.normalise, "normalise", ("norm", "orthonormal", "none"))
        check_choice(self.pc_inputs, "pc_inputs", ("current", "augmented", "inverted"))
        check_choice(self.g0_stat, "g0_stat", ("median", "mean"))
        for name in ("snapshots", "batches", "gr_every", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        for name in ("random_directions", "steps", "ta", "pc", "gr", "lr", "g0_scale",
                     "gr_samples", "bound", "invert_steps", "invert_step"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(self, name)}")
        if self.tau <= 0:
            raise ValueError(f"tau must be > 0; got {self.tau}")


def _generator(ctx: MergeContext, offset: int, purpose: int) -> torch.Generator:
    """A generator for one kind of random draw of merge t, from the run's seed and the
    option offset."""
    run_seed = int(ctx.task.seed)
    return torch.Generator().manual_seed(
        ((run_seed * 1_000_003 + offset) * 1009 + ctx.t) * 8 + purpose)


class TrajectoryRegularizedMerger(Merger):
    Options = TRMOptions

    # -- the subspace ------------------------------------------------------------------
    def directions(self, ctx: MergeContext) -> tuple[list[td.TensorDict], list[str], list[float]]:
        """The directions as recorded (before rescaling), their names and initial
        coefficients."""
        o = self.options
        d_last = td.sub(ctx.finetuned, ctx.merged)
        dirs, names, init = [], [], []
        if o.trajectory:
            for k, snap in enumerate(ctx.task.trajectory):
                dirs.append(td.sub(td.add(ctx.start, snap), ctx.merged))
                names.append(f"d{k + 1}")
                init.append(0.0)
        dirs.append(d_last)
        names.append("dK")
        init.append(o.init_last)
        if o.accumulated and ctx.t > 0:
            dirs.append(td.sub(ctx.merged, ctx.theta0))
            names.append("acc")
            init.append(0.0)
        gen = _generator(ctx, o.seed, 0)
        for j in range(o.random_directions):
            dirs.append(random_direction(d_last, gen))
            names.append(f"r{j + 1}")
            init.append(0.0)
        return dirs, names, init

    @staticmethod
    def split_batches(batches: list, n_fit: int) -> tuple[list, tuple | None]:
        """(fitting minibatches, held-out minibatch): the held-out one is the last of the
        largest size (the training batch size; an epoch's last minibatch may be smaller),
        the fitting ones the last ``n_fit`` of the others."""
        if not batches:
            return [], None
        size = max(len(b[1]) for b in batches)
        h = max(i for i, b in enumerate(batches) if len(b[1]) == size)
        rest = batches[:h] + batches[h + 1:]
        return rest[-n_fit:], batches[h]

    def g0(self, ctx: MergeContext) -> float:
        o = self.options
        series = list(ctx.task.g0_series)
        if not series:
            return 0.0
        value = statistics.median(series) if o.g0_stat == "median" else statistics.fmean(series)
        return float(value) * o.g0_scale

    # -- the merge ---------------------------------------------------------------------
    def merge(self, ctx: MergeContext) -> td.TensorDict:
        """theta_hat_t = theta(c*): the problem is set up (:meth:`problem`), c optimised
        (:meth:`optimise`) in eval mode, with attention in its plain (math) kernel (L_GR
        differentiates a gradient, and the fused CPU kernels have no second derivative)
        and no weight of the model requiring a gradient (only c is optimised), then the
        returned point and its record are written (:meth:`finish`). The model's mode and
        flags are restored afterwards."""
        model = ctx.model
        was_training = model.training
        flags = [(p, p.requires_grad) for p in model.parameters()]
        with sdpa_kernel([SDPBackend.MATH]), contextlib.ExitStack() as stack:
            stack.callback(model.train, was_training)
            stack.callback(_restore_flags, flags)
            model.eval()
            for p, _ in flags:
                p.requires_grad_(False)
            problem = self.problem(ctx)
            result = self.optimise(problem)
        return self.finish(problem, result)

    def problem(self, ctx: MergeContext) -> "MergeProblem":
        """The fixed data of merge t: the rescaled directions and their subspace, the
        initial coefficients, the fitting and held-out minibatches, the L_GR head, g0,
        and the L_PC inputs with the teacher's logits on them (under the model's current
        mode: the merge calls it in eval mode)."""
        o = self.options
        raw, names, init = self.directions(ctx)
        dirs = rescale_directions(raw, names.index("dK"), o.normalise)
        space = CoefficientSubspace(ctx.merged, dirs, per_module=o.coefficients == "per_module")
        batches = list(ctx.task.recent_batches)
        if o.steps > 0 and len(batches) < 2:
            raise ValueError("trm needs at least two recorded minibatches of the current task "
                             "(the trajectory plugin keeps them)")
        fit, held_out = self.split_batches(batches, o.batches)
        gr_head = (self.responsiveness_head(ctx) if o.gr > 0 and held_out is not None
                   else None)
        if gr_head is not None and o.gr_samples:
            held_out = (held_out[0][:o.gr_samples], held_out[1][:o.gr_samples])
        p = MergeProblem(model=ctx.model, names=parameter_names(ctx.model.backbone, ctx.weights),
                         t=ctx.t, space=space, c0=space.initial(init), directions=names,
                         fit=fit, held_out=held_out if gr_head is not None else None,
                         gr_head=gr_head, g0=self.g0(ctx))
        p.pc_x, p.teacher = self.consistency_inputs(ctx, fit, p.features, p.head_logits, p.old)
        return p

    def terms_on_minibatch(self, p: "MergeProblem", c: torch.Tensor, step: int) -> dict:
        """The objective's terms at c on fitting minibatch ``step mod |fit|`` (L_TA, and
        L_PC on that minibatch's consistency inputs) and, every ``gr_every`` steps, the
        hinge L_GR on the held-out minibatch with its graph kept (a training step)."""
        o = self.options
        theta = p.space.combine(c)
        i = step % len(p.fit)
        terms = {}
        if o.ta > 0:
            x, y = p.fit[i]
            terms["ta"] = F.cross_entropy(p.head_logits(p.features(theta, x), [p.t]),
                                          p.local_labels(y))
        if p.teacher:
            terms["pc"] = prediction_consistency(
                p.head_logits(p.features(theta, p.pc_x[i]), p.old), p.teacher[i], o.tau)
        if p.gr_head is not None and step % o.gr_every == 0:
            terms["gr"], terms["grad_norm"] = gradient_hinge(
                p.responsiveness_loss(theta), list(theta.values()), p.g0)
        return terms

    def terms_on_fixed_set(self, p: "MergeProblem", c: torch.Tensor) -> dict:
        """The objective's terms at c on the whole fixed set: L_TA on all fitting
        minibatches at once, L_PC on all consistency inputs, L_GR on the held-out
        minibatch (the gradient norm is taken, no second derivative), as plain values:
        L_TA and L_PC are evaluated without a graph."""
        o = self.options
        theta = p.space.combine(c.detach().clone().requires_grad_(True))  # L_GR: d/dtheta
        terms = {}
        with torch.no_grad():
            if o.ta > 0 and p.fit:
                x = torch.cat([b[0] for b in p.fit])
                y = torch.cat([b[1] for b in p.fit])
                terms["ta"] = F.cross_entropy(p.head_logits(p.features(theta, x), [p.t]),
                                              p.local_labels(y))
            if p.teacher:
                terms["pc"] = prediction_consistency(
                    p.head_logits(p.features(theta, torch.cat(p.pc_x)), p.old),
                    torch.cat(p.teacher), o.tau)
        if p.gr_head is not None:
            norm = gradient_norm(p.responsiveness_loss(theta), list(theta.values()),
                                 create_graph=False)
            terms["grad_norm"] = norm
            terms["gr"] = torch.relu(norm.new_tensor(p.g0) - norm)
        return terms

    def total(self, terms: dict) -> torch.Tensor | None:
        """l_TA L_TA + l_PC L_PC + l_GR L_GR over the terms present with a positive
        weight (None if there is none)."""
        o = self.options
        parts = [getattr(o, k) * terms[k] for k in TERMS if k in terms and getattr(o, k) > 0]
        return sum(parts) if parts else None

    def has_objective(self, p: "MergeProblem") -> bool:
        """Whether a training step has any term to descend: L_TA (weight > 0), L_PC (old
        tasks, weight > 0) or L_GR (a held-out minibatch, weight > 0), on fitting data."""
        o = self.options
        return bool(p.fit) and (o.ta > 0 or bool(p.teacher) or p.gr_head is not None)

    def evaluate(self, p: "MergeProblem", c: torch.Tensor, step: int, curve: dict) -> dict:
        """The terms and the total at c on the fixed set, as floats, appended to the
        objective curve at ``step``."""
        terms = self.terms_on_fixed_set(p, c)
        values = {k: float(v.detach()) for k, v in terms.items()}
        tot = self.total(terms)
        values["total"] = float(tot.detach()) if tot is not None else 0.0
        curve["step"].append(step)
        for k, v in values.items():
            curve.setdefault(k, []).append(v)
        return values

    def optimise(self, p: "MergeProblem") -> "Optimum":
        """Projected Adam on c from c0: each step descends the terms on one minibatch
        and clamps c to [-bound, bound]; the fixed-set objective is evaluated at the
        start, every ``eval_every`` steps and at the end, and the best evaluated iterate
        is kept (``keep_best``; else the last evaluated one)."""
        o = self.options
        out = Optimum(c=p.c0)
        if not p.fit:
            return out
        out.start = out.end = self.evaluate(p, p.c0, 0, out.curve)
        if o.steps == 0 or not self.has_objective(p):
            return out
        c = p.c0.clone().requires_grad_(True)
        opt = torch.optim.Adam([c], lr=o.lr)
        for step in range(o.steps):
            loss = self.total(self.terms_on_minibatch(p, c, step))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if o.bound > 0:
                with torch.no_grad():
                    c.clamp_(-o.bound, o.bound)
            if (step + 1) % o.eval_every == 0 or step + 1 == o.steps:
                values = self.evaluate(p, c, step + 1, out.curve)
                if not o.keep_best or values["total"] < out.end["total"]:
                    out.end, out.c, out.step = values, c.detach().clone(), step + 1
        return out

    def finish(self, p: "MergeProblem", result: "Optimum") -> td.TensorDict:
        """theta(c*) (detached), with the merge's record: the coefficient on d_K, every
        direction's (mean over weights), g0, the objective at the start and at the
        returned point, its step, and the evaluated curve."""
        c = result.c.detach()
        merged = {k: v.detach() for k, v in p.space.combine(c).items()}
        per_dir = c.mean(1) if c.dim() == 2 else c
        self.record(coefficient=float(per_dir[p.directions.index("dK")]),
                    coefficients={n: float(v) for n, v in zip(p.directions, per_dir)},
                    g0=p.g0, objectives_start=result.start, objectives_end=result.end,
                    best_step=result.step,
                    objective_curve=result.curve if len(result.curve["step"]) else {})
        return merged

    # -- the pieces ----------------------------------------------------------------------
    def consistency_inputs(self, ctx, fit, features, head_logits, old):
        """(inputs of L_PC per fitting minibatch, the teacher's old-head logits on them),
        or ([], None) when the term is off or there are no old tasks."""
        o = self.options
        if not old or o.pc <= 0 or not fit:
            return [], None

        def teacher_logits(x):
            return head_logits(features(ctx.merged, x), old)

        if o.pc_inputs == "current":
            xs = [x for x, _ in fit]
        elif o.pc_inputs == "augmented":
            gen = _generator(ctx, o.seed, 2)
            xs = [mix_inputs(x, gen) for x, _ in fit]
        else:
            gen = _generator(ctx, o.seed, 3)
            n_old = sum(len(ctx.model.classes_per_exp[h]) for h in old)
            xs = []
            for x, _ in fit:
                targets = torch.randint(0, n_old, (len(x),), generator=gen).to(x.device)
                xs.append(invert_inputs(x, teacher_logits, targets, o.invert_steps,
                                        o.invert_step))
        with torch.no_grad():
            teacher = [teacher_logits(x) for x in xs]
        return xs, teacher

    def responsiveness_head(self, ctx: MergeContext):
        """The head L_GR's loss goes through: the trained head t, or a fresh one of the
        same kind (linear or cosine) drawn like every new head (from the run's seed),
        fixed during the merge."""
        model = ctx.model
        if self.options.gr_head == "current":
            return model.heads[ctx.t]
        current = model.heads[ctx.t]
        # drawn on the CPU (its generator is the one forked and seeded here), then moved
        head = copy.deepcopy(current).cpu()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_generator(ctx, self.options.seed, 1).initial_seed())
            head.reset_parameters()
        head = head.to(current.weight.device)
        head.requires_grad_(False)
        return head


def _restore_flags(flags) -> None:
    for p, flag in flags:
        p.requires_grad_(flag)


@dataclass
class MergeProblem:
    """The fixed data of one TRM merge and the model functions its terms use.

    ``features(theta, x)``: the backbone's features with the mergeable weights set to
    ``theta`` (``names``: their names in the backbone); ``head_logits(f, heads)``: the
    concatenated logits of ``heads``; ``local_labels(y)``: y as an index into task t's
    classes; ``responsiveness_loss(theta)``: L_GR's cross-entropy on the held-out
    minibatch through ``gr_head``. ``pc_x`` / ``teacher``: L_PC's inputs per fitting
    minibatch and the old heads' logits of theta_hat_{t-1} on them (``[]`` / None when
    L_PC is off or there is no old task)."""

    model: object
    names: dict
    t: int
    space: CoefficientSubspace
    c0: torch.Tensor
    directions: list
    fit: list
    held_out: tuple | None
    gr_head: object
    g0: float
    pc_x: list = field(default_factory=list)
    teacher: list | None = None

    @property
    def old(self) -> list[int]:
        return list(range(self.t))

    def features(self, theta: td.TensorDict, x: torch.Tensor) -> torch.Tensor:
        params = {self.names[k]: v for k, v in theta.items()}
        return torch.func.functional_call(self.model.backbone, params, (x,))

    def head_logits(self, feats: torch.Tensor, heads) -> torch.Tensor:
        return torch.cat([self.model.heads[h](feats) for h in heads], dim=1)

    def local_labels(self, y: torch.Tensor) -> torch.Tensor:
        classes = torch.tensor(self.model.classes_per_exp[self.t], device=y.device)
        return (y[:, None] == classes[None, :]).float().argmax(1)

    def responsiveness_loss(self, theta: td.TensorDict) -> torch.Tensor:
        x, y = self.held_out
        return F.cross_entropy(self.gr_head(self.features(theta, x)), self.local_labels(y))


@dataclass
class Optimum:
    """The optimisation's outcome: the returned coefficients ``c`` and the step they
    were reached at, the fixed-set objective at the start and there (``{}`` without
    fitting data), and the evaluated curve."""

    c: torch.Tensor
    step: int = 0
    start: dict = field(default_factory=dict)
    end: dict = field(default_factory=dict)
    curve: dict = field(default_factory=lambda: {"step": []})
