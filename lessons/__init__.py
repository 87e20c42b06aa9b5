"""The step-through lessons, shipped inside the package as ``minidcn.lessons``.

Each ``NN_name.py`` is a script in jupytext percent format: run it with ``minidcn lesson N``
or ``python lessons/NN_name.py``, or open it as a notebook with jupytext.
"""
