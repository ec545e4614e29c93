"""Runnable examples of resilience (not part of the installed package).

Each ``examples/*.py`` is a standalone program (``python examples/hello_command.py``);
``examples/demo/`` is the ``make demo`` program (``python -m examples.demo``).
"""
