"""The benchmark's sections, one module each (see ``minidcn/bench/__init__.py``)."""
