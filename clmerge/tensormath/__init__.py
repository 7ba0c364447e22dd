"""Pure tensor math: dict-of-tensor arithmetic, merge rules, Fisher and P&M closed forms.

Nothing in this package imports Avalanche or peft; every function takes and returns
plain ``torch.Tensor`` objects or ``dict[str, torch.Tensor]`` ("tensor dicts") keyed by
parameter name, so it can be unit-tested without either library.
"""
