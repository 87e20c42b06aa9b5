"""One benchmark worker: times one implementation of one case, on the runner's command.

Run as a script (``python worker.py SECTION CASE LABEL OUTPUTS SMOKE``), never imported:
it loads this folder as a stand-alone package named ``_minidcn_bench``, so that importing
a section does not import minidcn (and with it numba and minidcn's thread settings) into
a torch worker.  The implementation's builder imports its own library.

Protocol, one JSON object per line on the worker's standard output (the library's own
prints go to standard error instead):

1. the worker builds the implementation, runs ``outputs()`` once (which also compiles
   numba's kernels), saves the arrays to OUTPUTS (an ``.npz``), runs one more forward and
   forward+backward to warm up, and answers ``{"ready": ..., "libraries": [...]}``, or
   ``{"error": ..., "missing": true/false}`` if the builder failed (missing: its library
   is not installed);
2. each line ``run N`` from the runner is answered with ``{"forward": [N times],
   "forward_backward": [N times]}`` in seconds;
3. ``quit`` (or the end of standard input) ends the worker.
"""

import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = "_minidcn_bench"
PEER_LIBRARIES = ("minidcn", "numba", "torch", "torchvision")


def _load_package():
    spec = importlib.util.spec_from_file_location(PACKAGE, HERE / "__init__.py",
                                                  submodule_search_locations=[str(HERE)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = package
    spec.loader.exec_module(package)


def _describe() -> str:
    """Versions and thread counts of the libraries this worker loaded."""
    parts = []
    if "minidcn" in sys.modules:
        import numba

        layer = ""
        try:
            layer = f", {numba.threading_layer()} layer"
        except ValueError:  # no parallel loop ran yet
            pass
        parts.append(f"numba {numba.__version__}, {numba.get_num_threads()} threads{layer}")
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        parts.append(f"torch {torch.__version__.split('+')[0]}, {torch.get_num_threads()} threads")
    if "torchvision" in sys.modules:
        parts.append(f"torchvision {sys.modules['torchvision'].__version__.split('+')[0]}")
    return "; ".join(parts)


def main(section: str, case_index: str, label: str, outputs_path: str, smoke: str) -> int:
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything the libraries print goes to standard error
    if str(HERE) in sys.path:  # this folder is a package here, not a place for top-level modules
        sys.path.remove(str(HERE))
    _load_package()
    from _minidcn_bench.timing import timed_calls  # noqa: E402

    case = importlib.import_module(f"{PACKAGE}.sections.{section}").cases(smoke == "1")[int(case_index)]
    try:
        timed = case.implementations[label]()
    except ImportError as error:
        reply.write(json.dumps({"error": f"{type(error).__name__}: {error}", "missing": True}) + "\n")
        return 0
    import numpy as np

    np.savez(outputs_path, **timed.outputs())
    timed.forward()
    timed.forward_backward()
    loaded = [name for name in PEER_LIBRARIES if name in sys.modules]
    reply.write(json.dumps({"ready": _describe(), "libraries": loaded}) + "\n")
    for line in sys.stdin:
        command = line.split()
        if command[:1] != ["run"]:
            break
        repeat = int(command[1])
        result = {"forward": timed_calls(timed.forward, repeat),
                  "forward_backward": timed_calls(timed.forward_backward, repeat)}
        reply.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:]))
