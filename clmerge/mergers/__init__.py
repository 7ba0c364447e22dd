"""Mergers: how the fine-tuned model of experience t joins the running merged model.

Add one: write a file with a :class:`~clmerge.mergers.base.Merger` subclass decorated
with ``@register_merger("name")`` and import it in ``clmerge/mergers/registry.py``.
"""
