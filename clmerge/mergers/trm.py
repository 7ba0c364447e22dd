"""``trm``: Trajectory Regularized Merging, as reconstructed from its abstract.

Paper: X. Wang, C. Deng, "Revitalizing the Beginning: Avoiding Storage Dependency for
Model Merging in Continual Learning", arXiv 2605.08311. Only the abstract is public:
the merge is an optimisation inside an "augmented trajectory subspace" with three
objectives (task alignment, prediction consistency, gradient responsiveness), and it
needs no stored old models, task vectors, Fisher statistics or data. Everything below
is our reconstruction (chapter 3 of the book explains it); every choice is an option so that the
paper's exact form can be dropped in when it is published.

After task t, with theta_hat_{t-1} the merged model, theta_0 the pretrained one and
theta_t^(1..K) the K points of task t's trajectory (K-1 recorded by
:class:`clmerge.plugins.trajectory.TrajectoryPlugin`, the K-th is theta*_t)::

    d_k = theta_t^(k) - theta_hat_{t-1}                       trajectory directions
    a   = theta_hat_{t-1} - theta_0                            accumulated vector
    r_j ~ Gaussian, |r_j[m]| = |d_K[m]| per weight m           random directions
    theta(c) = theta_hat_{t-1} + sum_k c_k d_k + c_a a + sum_j c_j r_j
    c* = argmin_c  l_TA L_TA + l_PC L_PC + l_GR L_GR          (Adam, ``steps`` steps)
    theta_hat_t = theta(c*)

- L_TA: cross-entropy of theta(c) on current-task minibatches through head t;
- L_PC: tau^2 KL(softmax(z_old(theta_hat_{t-1}) / tau) || softmax(z_old(theta(c)) / tau)),
  z_old the concatenated logits of heads 0..t-1 on current-task inputs (LwF-style, no
  old data);
- L_GR: max(0, g0 - |dL(theta(c))/dtheta|) on a held-out current-task minibatch, g0
  the mean gradient norm (w.r.t. the mergeable weights) over the first training steps
  of task t, recorded for free by :class:`clmerge.plugins.diagnostics.DiagnosticsPlugin`;
  differentiated through the inner gradient (create_graph). L is the cross-entropy
  through a *fresh* head (``gr_head=fresh``, default): the next task starts with a new
  head, and g0 was measured with one, so the hinge asks the merged backbone to be as
  responsive as the start of task t was. Deviation from the literal reading, which
  takes L as the current task's loss (``gr_head=current``): with the trained head a
  gradient as large as g0 can only come from a higher current-task loss, so the hinge
  then works directly against L_TA (seed 0 of ``quick``: L_TA rose from 0.002 to 0.9
  during the merge, and class-incremental accuracy fell to chance).

Coefficients start at 0 except ``init_last`` (0.5) on d_K. Data: the last
``batches + 1`` training minibatches of task t (recorded by the trajectory plugin;
``batches`` for L_TA/L_PC, the last one held out for L_GR). With LoRA every direction
is a dense per-target delta, so the optimisation touches only the LoRA target weights.
Nothing persists across tasks: ``state_bytes()`` is 0.

Choices of ours where the abstract is silent (each an option): the directions
(``trajectory``, ``accumulated``, ``random_directions``), per-module vs global
coefficients (``coefficients``), the initial point, the loss weights (0 switches a term
off), tau, the reference g0, the head and the hinge form, the optimiser budget. The
default budget is small (10 Adam steps at lr 0.1, L_GR on 16 held-out samples every
second step) because the merge should cost about a quarter of one task's training;
the paper's budget is unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from clmerge.mergers.base import MergeContext, Merger, check_choice, parameter_names
from clmerge.tensormath import tensordict as td
from clmerge.tensormath.trajectory_subspace import (CoefficientSubspace, gradient_hinge,
                                                    prediction_consistency, random_direction)


@dataclass
class TRMOptions:
    snapshots: int = field(default=4, metadata={
        "help": "K: points of the task's trajectory used as directions (the last is theta*_t)"})
    trajectory: bool = field(default=True, metadata={
        "help": "use the K-1 intermediate trajectory directions (false: only d_K)"})
    accumulated: bool = field(default=True, metadata={
        "help": "add the accumulated vector theta_hat_{t-1} - theta_0 as a direction"})
    random_directions: int = field(default=0, metadata={
        "help": "Gaussian directions added, each with |d_K|'s norm on every weight"})
    coefficients: str = field(default="per_module", metadata={
        "help": "per_module (one coefficient per direction and weight) or global"})
    init_last: float = field(default=0.5, metadata={
        "help": "initial coefficient on d_K (every other direction starts at 0)"})
    ta: float = field(default=1.0, metadata={"help": "weight of task alignment L_TA (0: off)"})
    pc: float = field(default=1.0, metadata={
        "help": "weight of prediction consistency L_PC (0: off)"})
    gr: float = field(default=1.0, metadata={
        "help": "weight of the gradient-responsiveness hinge L_GR (0: off)"})
    tau: float = field(default=2.0, metadata={"help": "distillation temperature of L_PC"})
    g0_scale: float = field(default=1.0, metadata={
        "help": "hinge reference = g0_scale x mean gradient norm of task t's first steps"})
    gr_head: str = field(default="fresh", metadata={
        "help": "head of L_GR's loss: fresh (a newly initialised head, as the next task "
                "starts) or current (the trained head t: the literal reading)"})
    gr_every: int = field(default=2, metadata={"help": "evaluate L_GR every this many steps"})
    gr_samples: int = field(default=16, metadata={
        "help": "samples of the held-out minibatch used by L_GR (0: all)"})
    steps: int = field(default=10, metadata={"help": "Adam steps on the coefficients"})
    lr: float = field(default=0.1, metadata={"help": "Adam learning rate of the coefficients"})
    batches: int = field(default=4, metadata={
        "help": "current-task minibatches the objectives cycle over (+1 held out for L_GR)"})
    seed: int = field(default=0, metadata={"help": "seed of the random directions"})

    def __post_init__(self):
        check_choice(self.coefficients, "coefficients", ("per_module", "global"))
        check_choice(self.gr_head, "gr_head", ("fresh", "current"))
        for name in ("snapshots", "batches", "gr_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        for name in ("random_directions", "steps", "ta", "pc", "gr", "lr", "g0_scale",
                     "gr_samples"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(self, name)}")
        if self.tau <= 0:
            raise ValueError(f"tau must be > 0; got {self.tau}")


class TrajectoryRegularizedMerger(Merger):
    Options = TRMOptions

    # -- the subspace ------------------------------------------------------------------
    def directions(self, ctx: MergeContext) -> tuple[list[td.TensorDict], list[str], list[float]]:
        """The directions, their family names and initial coefficients."""
        o = self.options
        d_last = td.sub(ctx.finetuned, ctx.merged)
        dirs, names, init = [], [], []
        if o.trajectory:
            for k, snap in enumerate(ctx.extras.get("trajectory", [])):
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
        gen = torch.Generator().manual_seed(o.seed * 1000 + ctx.t)
        for j in range(o.random_directions):
            dirs.append(random_direction(d_last, gen))
            names.append(f"r{j + 1}")
            init.append(0.0)
        return dirs, names, init

    # -- the objectives ------------------------------------------------------------------
    def merge(self, ctx: MergeContext) -> td.TensorDict:
        o = self.options
        dirs, names, init = self.directions(ctx)
        space = CoefficientSubspace(ctx.merged, dirs, per_module=o.coefficients == "per_module")
        c = space.initial(init).requires_grad_(True)
        batches = ctx.extras.get("batches") or []
        if o.steps > 0 and len(batches) < 2:
            raise ValueError("trm needs at least two recorded minibatches of the current task "
                             "(the trajectory plugin keeps them)")
        fit, held_out = batches[:-1][-o.batches:], batches[-1] if batches else None
        model = ctx.model
        names_in_backbone = parameter_names(model.backbone, ctx.weights)
        old = list(range(ctx.t))

        def features(theta, x):
            params = {names_in_backbone[k]: v for k, v in theta.items()}
            return torch.func.functional_call(model.backbone, params, (x,))

        def head_logits(feats, heads):
            return torch.cat([model.heads[h](feats) for h in heads], dim=1)

        def local_labels(y):
            cls = torch.tensor(model.classes_per_exp[ctx.t], device=y.device)
            return (y[:, None] == cls[None, :]).float().argmax(1)

        gr_head = self.responsiveness_head(ctx) if o.gr > 0 and held_out is not None else None
        if gr_head is not None:
            xh, yh = held_out
            if o.gr_samples:
                xh, yh = xh[:o.gr_samples], yh[:o.gr_samples]
        was_training = model.training
        model.eval()
        g0 = float(ctx.extras.get("g0", 0.0)) * o.g0_scale
        first = last = None
        try:
            with torch.no_grad():
                teacher = ([head_logits(features(ctx.merged, x), old) for x, _ in fit]
                           if old and o.pc > 0 else None)
            opt = torch.optim.Adam([c], lr=o.lr)
            for step in range(o.steps):
                x, y = fit[step % len(fit)]
                theta = space.combine(c)
                terms = {}
                if o.ta > 0 or teacher is not None:
                    feats = features(theta, x)
                    terms["ta"] = F.cross_entropy(head_logits(feats, [ctx.t]), local_labels(y))
                    if teacher is not None:
                        terms["pc"] = prediction_consistency(
                            head_logits(feats, old), teacher[step % len(fit)], o.tau)
                if gr_head is not None and step % o.gr_every == 0:
                    loss_h = F.cross_entropy(gr_head(features(theta, xh)), local_labels(yh))
                    terms["gr"], terms["grad_norm"] = gradient_hinge(
                        loss_h, list(theta.values()), g0)
                values = {k: float(v.detach()) for k, v in terms.items()}
                first = first or values
                last = {**(last or {}), **values}
                total = sum(getattr(o, k) * terms[k] for k in ("ta", "pc", "gr") if k in terms)
                if not torch.is_tensor(total):
                    break  # every term is off: nothing to optimise
                opt.zero_grad()
                total.backward()
                opt.step()
        finally:
            model.train(was_training)
        c = c.detach()
        merged = {k: v.detach() for k, v in space.combine(c).items()}
        per_dir = c.mean(1) if c.dim() == 2 else c
        self.record(coefficient=float(per_dir[names.index("dK")]),
                    coefficients={n: float(v) for n, v in zip(names, per_dir)},
                    g0=g0, objectives_start=first or {}, objectives_end=last or {})
        return merged


    def responsiveness_head(self, ctx: MergeContext):
        """The head L_GR's loss goes through: the trained head t, or a fresh one drawn
        like every new head (``nn.Linear`` init, seeded by task), fixed during the merge."""
        model = ctx.model
        if self.options.gr_head == "current":
            return model.heads[ctx.t]
        current = model.heads[ctx.t]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.options.seed * 1000 + ctx.t + 1)
            head = torch.nn.Linear(current.in_features, current.out_features)
        head = head.to(current.weight.device)
        head.requires_grad_(False)
        return head

