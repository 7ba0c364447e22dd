"""Mergers: how the fine-tuned model of experience t joins the running merged model.

Add one: write a file with a :class:`~clmerge.mergers.base.Merger` subclass and declare
the method that uses it with one ``register_method(MethodSpec(...))`` line in
``clmerge/strategies/methods.py`` (see ``chapters/add_a_merger.md``).
"""
