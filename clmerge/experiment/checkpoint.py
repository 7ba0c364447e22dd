"""Checkpoints after each experience, so a killed run resumes where it stopped.

A checkpoint is two files in ``<results>/_checkpoints/<run name>/``:

- ``exp<t>.safetensors``: every tensor: the model's state dict (backbone with the LoRA
  factors, heads), the random generators' states, and the tensors held by the stateful
  objects of the run (the merger, the merge driver, the method's plugins, Avalanche's
  clock);
- ``state.json``: which experience finished, the accuracy rows so far, the config hash,
  and the rest of those objects' state as JSON, with each tensor replaced by its key in
  the safetensors file.

The tensors file is written first, under a temporary name, fsynced, then renamed (and
the folder fsynced: :func:`clmerge.experiment.atomic.atomic_write`); ``state.json`` is
written the same way last, so it always names a complete tensors file. Older tensors
files, and temporary files a killed run left, are removed after the new ``state.json``
is in place.

``state.json`` carries the sha256 of its own content (``checksum``, as result files do);
on loading, that checksum, every accuracy (in [0, 1]), the length of every accuracy row
(row t holds t + 1 entries), the experience (below the stream's length) and every
floating tensor of the model (finite) are checked. A checkpoint that fails any check is
*set aside*: one warning line, its folder is deleted, and the run starts over (a later
rerun does not meet it again). A ``state.json`` or tensors file that is not a regular
file (a FIFO, a device, a folder) is never opened for reading:
:class:`~clmerge.experiment.results.NotRegularFileError`, the command's exit status 2.

Loading never runs code named by the files: an object is rebuilt only when its class is
defined in one of ``STATE_MODULES`` (the same rule the writer uses), the tensors file
must be an ``exp<t>.safetensors`` of the same folder, and every tensor of the model must
match the run's model in name, shape and dtype. Everything is decoded and checked before
anything is restored, so a checkpoint that fails in any way (missing, truncated, not
JSON, a tensors file safetensors cannot read, a class outside the allowlist, a mismatch)
is ignored with one warning line and the run starts over.

What is saved of an object is its instance attributes that are *state*: numbers,
strings, tensors (not parameters: those are restored through the model), generators,
containers of them, and plain state objects of ``clmerge.tensormath`` or Avalanche's
regularisation helpers. Anything else (the model's parameters, the LoRA adapter, hooks,
callables) is left as the fresh run constructed it. A module held as state (LwF's
teacher) is saved as its state dict and restored into a copy of the run's model.
"""

from __future__ import annotations

import collections
import copy
import hashlib
import importlib
import json
import math
import os
import random
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from clmerge.experiment.atomic import (NotRegularFileError, atomic_write, check_regular,
                                       read_regular_bytes)
from clmerge.experiment.results import RANGE_TOLERANCE

_SKIP = object()
STATE_MODULES = ("clmerge.tensormath", "avalanche.training.regularization",
                 "avalanche.training.utils")


class _Encoder:
    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}

    def tensor(self, t: torch.Tensor, prefix: str) -> str:
        key = f"{prefix}#{len(self.tensors)}"
        self.tensors[key] = t.detach().cpu().contiguous().clone()
        return key

    def encode(self, v: Any, prefix: str):
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, torch.nn.Parameter):
            return _SKIP
        if isinstance(v, torch.Tensor):
            return {"__tensor__": self.tensor(v, prefix), "device": str(v.device)}
        if isinstance(v, torch.Generator):
            return {"__generator__": self.tensor(v.get_state(), prefix), "device": str(v.device)}
        if isinstance(v, torch.Size):
            return {"__size__": list(v)}
        if isinstance(v, torch.device):
            return {"__device__": str(v)}
        if isinstance(v, torch.nn.Module):
            sd = {k: self.tensor(t, f"{prefix}.{k}") for k, t in v.state_dict().items()}
            return {"__module__": sd, "training": v.training}
        if isinstance(v, (list, tuple, set, collections.deque)):
            items = [self.encode(x, f"{prefix}[{i}]") for i, x in enumerate(v)]
            if any(x is _SKIP for x in items):
                return _SKIP
            kind = {list: "list", tuple: "tuple", set: "set", frozenset: "set"}.get(type(v), "deque")
            out = {"__seq__": kind, "items": items}
            if isinstance(v, collections.deque):
                out["maxlen"] = v.maxlen
            return out
        if isinstance(v, dict):
            items = [[self.encode(k, prefix), self.encode(x, f"{prefix}.{k}")] for k, x in v.items()]
            if any(k is _SKIP or x is _SKIP for k, x in items):
                return _SKIP
            factory = getattr(v, "default_factory", None)
            return {"__dict__": items,
                    "default": {dict: "dict", list: "list"}.get(factory) if factory else None}
        cls = type(v)
        if cls.__module__.startswith(STATE_MODULES) and hasattr(v, "__dict__"):
            attrs = self.attributes(v, prefix)
            return {"__object__": f"{cls.__module__}:{cls.__qualname__}", "attrs": attrs}
        return _SKIP

    def attributes(self, obj, prefix: str) -> dict:
        out = {}
        for name, value in vars(obj).items():
            enc = self.encode(value, f"{prefix}.{name}")
            if enc is not _SKIP:
                out[name] = enc
        return out


class _Decoder:
    def __init__(self, tensors: dict[str, torch.Tensor], model: torch.nn.Module | None):
        self.tensors = tensors
        self.model = model

    def decode(self, v):
        if not isinstance(v, dict):
            return v
        if "__tensor__" in v:
            return self.tensors[v["__tensor__"]].to(v["device"])
        if "__generator__" in v:
            g = torch.Generator(device=v["device"])
            g.set_state(self.tensors[v["__generator__"]])
            return g
        if "__size__" in v:
            return torch.Size(v["__size__"])
        if "__device__" in v:
            return torch.device(v["__device__"])
        if "__module__" in v:
            if self.model is None:
                raise ValueError("a module in the checkpoint needs the run's model to restore")
            m = copy.deepcopy(self.model)
            m.load_state_dict({k: self.tensors[key] for k, key in v["__module__"].items()})
            m.train(v["training"])
            return m
        if "__seq__" in v:
            items = [self.decode(x) for x in v["items"]]
            kind = v["__seq__"]
            if kind == "deque":
                return collections.deque(items, maxlen=v["maxlen"])
            return {"list": list, "tuple": tuple, "set": set}[kind](items)
        if "__dict__" in v:
            pairs = [(self.decode(k), self.decode(x)) for k, x in v["__dict__"]]
            if v.get("default"):
                out = collections.defaultdict({"dict": dict, "list": list}[v["default"]])
                out.update(pairs)
                return out
            return dict(pairs)
        if "__object__" in v:
            cls = state_class(v["__object__"])
            obj = cls.__new__(cls)
            for k, x in v["attrs"].items():
                setattr(obj, _attribute_name(k), self.decode(x))
            return obj
        raise ValueError(f"unreadable checkpoint entry with keys {sorted(v)[:3]}")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as it is."""


_QUALNAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


def state_class(spec: str) -> type:
    """The class named ``module:qualname`` in a checkpoint, if it is allowed: a class
    defined in one of ``STATE_MODULES`` (what :class:`_Encoder` writes). Anything else,
    e.g. ``subprocess:Popen``, raises :class:`CheckpointError` without being imported."""
    module, _, name = str(spec).partition(":")
    allowed = any(module == m or module.startswith(m + ".") for m in STATE_MODULES)
    if not (allowed and _QUALNAME.match(module) and _QUALNAME.match(name)):
        raise CheckpointError(f"it names class {str(spec)[:60]!r}, which is not a state "
                              f"class of {', '.join(STATE_MODULES)}")
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part, None)
    if not isinstance(obj, type) or obj.__module__ != module or obj.__qualname__ != name:
        raise CheckpointError(f"{str(spec)[:60]!r} is not a class defined in {module}")
    return obj


def _attribute_name(name) -> str:
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("__"):
        raise CheckpointError(f"attribute name {str(name)[:40]!r} is not allowed")
    return name


def rng_state(generators: dict[str, torch.Generator]) -> dict:
    """The state of python's, numpy's and torch's global generators and ``generators``."""
    py = random.getstate()
    state = {"python": [py[0], list(py[1]), py[2]], "torch": torch.get_rng_state()}
    np_state = np.random.get_state()
    state["numpy"] = [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                      int(np_state[2]), int(np_state[3]), float(np_state[4])]
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    state["generators"] = generators
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(folder: str | os.PathLike, experience: int, config_hash: str,
         model: torch.nn.Module, objects: dict[str, Any], extra: dict) -> Path:
    """Write the checkpoint of a finished ``experience`` (see the module docstring)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    enc = _Encoder()
    meta = {"experience": experience, "config_hash": config_hash,
            "model": {k: enc.tensor(v, f"model.{k}") for k, v in model.state_dict().items()},
            "objects": {name: enc.attributes(obj, name) for name, obj in objects.items()},
            "extra": enc.encode(extra, "extra")}
    tensors_name = f"exp{experience}.safetensors"
    atomic_write(folder / tensors_name, lambda tmp: save_file(enc.tensors, tmp),
                 size=sum(t.numel() * t.element_size() for t in enc.tensors.values()))
    meta["tensors"] = tensors_name
    meta["checksum"] = state_checksum(meta)
    text = json.dumps(meta)
    try:
        atomic_write(folder / "state.json", lambda tmp: Path(tmp).write_text(text),
                     size=len(text.encode()))
    except BaseException:   # the last good checkpoint stays whole, the new tensors go
        old = _named_tensors(folder)
        if old != tensors_name:
            (folder / tensors_name).unlink(missing_ok=True)
        raise
    for old in [*folder.glob("exp*.safetensors"), *folder.glob(".*.tmp")]:
        if old.name != tensors_name:
            old.unlink(missing_ok=True)
    return folder / "state.json"


def state_checksum(meta: dict) -> str:
    """The sha256 a state.json carries of its own content (every key but ``checksum``)."""
    body = {k: v for k, v in meta.items() if k != "checksum"}
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _named_tensors(folder: Path) -> str | None:
    """The tensors file the current ``state.json`` of ``folder`` names (None: none)."""
    try:
        return json.loads((folder / "state.json").read_text()).get("tensors")
    except (OSError, ValueError, AttributeError):
        return None


def load(folder: str | os.PathLike, config_hash: str, model: torch.nn.Module,
         objects: dict[str, Any], n_experiences: int | None = None
         ) -> tuple[int, dict] | None:
    """Restore the last checkpoint in ``folder`` into ``model`` and ``objects`` (same
    names as when saved); return (finished experience, extra) or None when there is no
    usable checkpoint (none, another config, or failing any check of the module
    docstring: the checkpoint is then set aside and the run starts over, after one
    warning line on stderr). ``n_experiences``: the stream's length, which the
    checkpoint's experience must be below."""
    folder = Path(folder)
    state = folder / "state.json"
    if not state.exists():
        return None
    check_regular(state, "a checkpoint's state.json")
    try:
        decoded = _read(folder, config_hash, model, objects, n_experiences)
    except NotRegularFileError:
        raise
    except Exception as e:  # noqa: BLE001 - any unusable checkpoint means: start over
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        shutil.rmtree(folder, ignore_errors=True)
        print(f"clmerge: warning: ignoring the checkpoint in {folder} ({reason}); it is "
              f"set aside (deleted) and the run starts over", file=sys.stderr, flush=True)
        return None
    if decoded is None:
        return None
    experience, model_state, attrs, extra = decoded
    model.load_state_dict(model_state)
    for name, values in attrs.items():
        obj = objects[name]
        for k, value in values.items():
            current = getattr(obj, k, None)
            # containers are refilled in place: other objects may hold the same one
            if type(current) is type(value) and isinstance(value, (dict, list)):
                current.clear()
                current.update(value) if isinstance(value, dict) else current.extend(value)
            else:
                setattr(obj, k, value)
    return experience, extra


_TENSORS_NAME = re.compile(r"exp[0-9]{1,6}\.safetensors\Z")


def _read(folder: Path, config_hash: str, model: torch.nn.Module, objects: dict,
          n_experiences: int | None = None):
    """Everything of a checkpoint, decoded and checked, nothing applied yet; None for a
    checkpoint of another config."""
    meta = json.loads(read_regular_bytes(folder / "state.json",
                                         "a checkpoint's state.json").decode("utf-8"))
    if not isinstance(meta, dict):
        raise CheckpointError("state.json does not hold a mapping")
    if meta.get("config_hash") != config_hash:
        return None
    if meta.get("checksum") != state_checksum(meta):
        raise CheckpointError("the checksum of its state.json does not match (an edited, "
                              "truncated or older checkpoint)")
    experience = meta.get("experience")
    if isinstance(experience, bool) or not isinstance(experience, int) or experience < 0:
        raise CheckpointError(f"bad experience {str(experience)[:20]}")
    if n_experiences is not None and experience >= n_experiences:
        raise CheckpointError(f"it names experience {experience} of a stream of "
                              f"{n_experiences} experiences")
    name = meta.get("tensors")
    if not isinstance(name, str) or not _TENSORS_NAME.match(name):
        raise CheckpointError(f"bad tensors file name {str(name)[:40]!r}")
    check_regular(folder / name, "a checkpoint's tensors file")
    tensors = load_file(str(folder / name))
    own = model.state_dict()
    saved = meta.get("model")
    if not isinstance(saved, dict) or set(saved) != set(own):
        raise CheckpointError("its model tensors are not the run's model's")
    model_state = {}
    for k, key in saved.items():
        t = tensors[key]
        if t.shape != own[k].shape or t.dtype != own[k].dtype:
            raise CheckpointError(f"tensor {k} has shape {tuple(t.shape)}, the model's "
                                  f"{tuple(own[k].shape)}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"tensor {k} holds non-finite values")
        model_state[k] = t
    dec = _Decoder(tensors, model)
    saved_objects = meta.get("objects")
    if not isinstance(saved_objects, dict) or not set(saved_objects) <= set(objects):
        raise CheckpointError("its objects are not the run's")
    attrs = {n: {_attribute_name(k): dec.decode(v) for k, v in a.items()}
             for n, a in saved_objects.items()}
    extra = dec.decode(meta["extra"])
    if not isinstance(extra, dict) or not {"R", "R_til", "rng"} <= set(extra):
        raise CheckpointError("its accuracy rows or random states are missing")
    rng = extra["rng"]
    if not (isinstance(rng, dict) and isinstance(rng.get("torch"), torch.Tensor)
            and isinstance(rng.get("python"), list) and isinstance(rng.get("numpy"), list)
            and isinstance(rng.get("generators"), dict)
            and all(isinstance(g, torch.Generator) for g in rng["generators"].values())):
        raise CheckpointError("its random states are not readable")
    if len(extra["R"]) != experience + 1 or len(extra["R_til"]) != experience + 1:
        raise CheckpointError("its accuracy rows do not match its experience")
    for key in ("R", "R_til"):
        for i, row in enumerate(extra[key]):
            if not isinstance(row, list) or len(row) != i + 1:
                raise CheckpointError(f"its row {key}[{i}] does not hold {i + 1} accuracies")
            for j, v in enumerate(row):
                if (isinstance(v, bool) or not isinstance(v, (int, float))
                        or not math.isfinite(v)
                        or not -RANGE_TOLERANCE <= v <= 1 + RANGE_TOLERANCE):
                    raise CheckpointError(f"its accuracy {key}[{i}][{j}] = {str(v)[:20]} is "
                                          f"not in [0, 1]")
    return experience, model_state, attrs, extra
