"""Ship a Python function to the executor nodes as a plugin package.

A function decorated in a notebook has no module a node could import. It travels the way
an uploaded plugin does (``schedulemaster/packages.py``): a zip named ``<module>.zip`` that the
master stores and each node fetches at Start. Inside is a package whose ``run`` is the
function, rebuilt with cloudpickle (the serializer Prefect itself uses for flows), so
closures, notebook globals and helper functions defined in other cells come along by value.

What cannot come along (an open socket, a database connection, a lock) is found here, at
decoration, by pickling and unpickling the function once, and named in the error with the
variable that holds it. The node checks the Python version before unpickling: bytecode
does not travel between minor versions.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import io
import json
import re
import sys
import sysconfig
import zipfile
from pathlib import Path
from typing import Any, Callable

from schedulemaster import packages
from schedulemaster.sdk import TaskBase

PICKLE_FILE = "function.pkl"
META_FILE = "shipped.json"
CLASS_NAME = "run"  # the task's ClassName: the package's module-level ``run``
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member times: the archive varies only with its content


class UnshippableError(TypeError):
    """The function cannot be sent to the nodes; the message says what to change."""


def module_name(title: str, code_fingerprint: str) -> str:
    """The package (AssemblyName) a task's function is shipped in, e.g.
    ``smfn_sync_orders_1a2b3c4d_5e6f7a8b9c``: readable, importable, and new for every change
    of code. So storing new code never changes what a running task loads, the Edit that
    points the task at it switches code and fields together, and two tasks with one title
    (the legacy API allows that) cannot replace each other's code."""
    slug = re.sub(r"[^A-Za-z0-9_]+", "_", title).strip("_").lower()[:40] or "task"
    digest = hashlib.sha1(title.encode("utf-8")).hexdigest()[:8]
    return f"smfn_{slug}_{digest}_{code_fingerprint[:10]}"


def takes_context(fn: Callable[..., Any]) -> bool:
    """True for ``def f(context)``, False for ``def f()``; anything else is refused."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        raise UnshippableError(f"{fn!r} has no inspectable signature; decorate a plain function") from None
    params = list(sig.parameters.values())
    required = [p for p in params if p.default is p.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(required) > 1 or any(p.kind == p.KEYWORD_ONLY for p in required):
        raise UnshippableError(f"{_name(fn)}{sig} must take one argument (the TaskContext) or none")
    return bool(positional) or any(p.kind == p.VAR_POSITIONAL for p in params)


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def _installed(module: Any) -> bool:
    """A module the nodes can import by name too (the standard library, site-packages, this
    project); anything else (``__main__``, a file beside the notebook) must go by value."""
    name = getattr(module, "__name__", "")
    if name == "__main__":
        return False
    if name.split(".")[0] in sys.stdlib_module_names or name.split(".")[0] == "schedulemaster":
        return True
    path = getattr(module, "__file__", None)
    if not path:
        return True  # builtins, namespace packages
    return str(Path(path).resolve()).startswith(_install_roots())


@functools.lru_cache(maxsize=1)
def _install_roots() -> tuple[str, ...]:
    """Where installed code lives (site-packages, the standard library), resolved once."""
    return tuple(str(Path(sysconfig.get_paths()[k]).resolve())
                 for k in ("purelib", "platlib", "stdlib", "platstdlib"))


def _culprits(fn: Callable[..., Any]) -> list[str]:
    """The free variables and globals of ``fn`` that do not pickle, as 'name (type)'."""
    import cloudpickle

    try:
        cv = inspect.getclosurevars(fn)
    except (TypeError, ValueError):
        return []
    out = []
    for name, value in {**cv.nonlocals, **cv.globals}.items():
        try:
            cloudpickle.dumps(value)
        except Exception as exc:
            out.append(f"`{name}` ({type(value).__module__}.{type(value).__qualname__}: {type(exc).__name__}: {exc})")
    return out


def _local_modules_named_in(data: bytes, skip: set[str]) -> list[Any]:
    """Modules the pickle refers to by name that the nodes could not import (files beside
    the notebook): cloudpickle must carry those by value too."""
    out = []
    for name, module in list(sys.modules.items()):
        if name in skip or name == "__main__" or module is None or name.encode() not in data:
            continue  # the cheap test first: most of sys.modules is never named in the pickle
        if getattr(module, "__file__", None) and not _installed(module):
            out.append(module)
    return out


def dumps(fn: Callable[..., Any]) -> bytes:
    """``fn`` pickled by value (with the local modules it uses), or UnshippableError naming
    what cannot travel."""
    import cloudpickle

    if not callable(fn):
        raise UnshippableError(f"{fn!r} is not a function")
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise UnshippableError(f"{_name(fn)} is a generator; a task function returns its result")
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    by_value = [module] if module is not None and module.__name__ != "__main__" and not _installed(module) else []
    try:
        for m in by_value:
            cloudpickle.register_pickle_by_value(m)
        for _ in range(5):  # each module carried by value may name further local modules
            try:
                data = cloudpickle.dumps(fn)
            except Exception as exc:
                culprits = _culprits(fn)
                what = ("it uses " + ", ".join(culprits)) if culprits else f"{type(exc).__name__}: {exc}"
                raise UnshippableError(
                    f"{_name(fn)} cannot be shipped to the nodes: {what}. Create such objects inside the "
                    "function (or in a TaskBase's initialize) instead of capturing them from the notebook.") from None
            more = _local_modules_named_in(data, {m.__name__ for m in by_value})
            if not more:
                break
            for m in more:
                cloudpickle.register_pickle_by_value(m)
            by_value += more
    finally:
        for m in by_value:
            cloudpickle.unregister_pickle_by_value(m)
    try:
        cloudpickle.loads(data)
    except Exception as exc:
        raise UnshippableError(f"{_name(fn)} pickles but cannot be rebuilt ({type(exc).__name__}: {exc}); "
                               "a node could not load it either") from None
    return data


def _cell(cell: Any) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # a closure variable not assigned yet
        return "<empty cell>"


def fingerprint(fn: Any) -> str:
    """What the function is, stable where its pickle is not: the same cell run again, or run
    after a kernel restart, gives the same fingerprint (a pickle carries the cell's temporary
    file name and a random id per notebook class). It covers the bytecode and constants,
    defaults, closure values and the globals the code names, recursively through functions
    and classes defined in the notebook; things from installed modules count by name."""
    import hashlib as _hashlib
    import pickle
    import types

    seen: dict[int, int] = {}

    def code(c: types.CodeType) -> Any:
        return ("code", c.co_code, tuple(describe(k) for k in c.co_consts), c.co_names, c.co_varnames,
                c.co_freevars, c.co_argcount, c.co_kwonlyargcount, c.co_flags)

    def names_in(c: types.CodeType) -> set[str]:
        out = set(c.co_names)
        for k in c.co_consts:
            if isinstance(k, types.CodeType):
                out |= names_in(k)
        return out

    def describe(obj: Any) -> Any:
        if isinstance(obj, types.CodeType):
            return code(obj)
        if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
            return obj
        if isinstance(obj, types.ModuleType):
            return ("module", obj.__name__)
        key = id(obj)
        if key in seen:
            return ("seen", seen[key])
        seen[key] = len(seen)
        module = sys.modules.get(getattr(obj, "__module__", "") or "")
        local = module is None or not _installed(module)
        if isinstance(obj, (types.FunctionType, types.MethodType)) and local:
            f = obj.__func__ if isinstance(obj, types.MethodType) else obj
            cells = tuple(describe(_cell(c)) for c in (f.__closure__ or ()))
            glob = tuple(sorted((n, describe(f.__globals__[n])) for n in names_in(f.__code__)
                                if n in f.__globals__))
            return ("function", f.__qualname__, code(f.__code__), describe(f.__defaults__),
                    describe(f.__kwdefaults__), cells, glob)
        if isinstance(obj, type) and local:
            return ("class", obj.__qualname__, tuple(describe(b) for b in obj.__bases__),
                    tuple(sorted((k, describe(v)) for k, v in vars(obj).items()
                                 if k not in ("__dict__", "__weakref__", "__module__", "__doc__"))))
        if callable(obj) and hasattr(obj, "__wrapped__") and not isinstance(obj, type):
            return ("wrapped", describe(obj.__wrapped__))  # another task's handle: its function
        if isinstance(obj, (staticmethod, classmethod)):
            return (type(obj).__name__, describe(obj.__func__))
        if isinstance(obj, property):
            return ("property", describe(obj.fget), describe(obj.fset), describe(obj.fdel))
        if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, type)):
            return ("ref", getattr(obj, "__module__", None), getattr(obj, "__qualname__", repr(obj)))
        if isinstance(obj, (tuple, list, set, frozenset)):
            items = [describe(v) for v in obj]
            return (type(obj).__name__, tuple(sorted(items, key=repr) if isinstance(obj, (set, frozenset)) else items))
        if isinstance(obj, dict):
            return ("dict", tuple((repr(k), describe(v)) for k, v in obj.items()))
        try:
            return ("data", _hashlib.sha256(pickle.dumps(obj, protocol=4)).hexdigest())
        except Exception:  # an instance of a notebook class, say: its pickle (stable or not)
            import cloudpickle

            try:
                return ("pickle", _hashlib.sha256(cloudpickle.dumps(obj)).hexdigest())
            except Exception:
                return ("unpicklable", type(obj).__qualname__)

    described = (sys.version_info[:2], describe(fn))
    return _hashlib.sha256(repr(described).encode("utf-8", "surrogatepass")).hexdigest()


_INIT = '''# A function shipped by schedulemaster (cloudpickle {cp}, Python {py}); what it is: shipped.json.
from pathlib import Path

from schedulemaster.notebook.shipping import load_function

run = load_function(Path(__file__).parent)
'''


def package(fn: Callable[..., Any], title: str) -> tuple[str, bytes]:
    """(file name, zip bytes) of the plugin package that runs ``fn`` as the task ``title``."""
    import cloudpickle

    if inspect.isclass(fn) and not issubclass(fn, TaskBase):
        raise UnshippableError(f"{_name(fn)} is a class but not a TaskBase subclass")
    context = True if inspect.isclass(fn) else takes_context(fn)
    data = dumps(fn)
    name = module_name(title, fingerprint(fn))
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        source = None
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    meta = {"title": title, "qualname": _name(fn), "module": getattr(fn, "__module__", None),
            "python": py, "cloudpickle": cloudpickle.__version__, "takes_context": context,
            "source": source}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for member, content in (
                (f"{name}/__init__.py", _INIT.format(cp=cloudpickle.__version__, py=py)),
                (f"{name}/{META_FILE}", json.dumps(meta, ensure_ascii=False, indent=1)),
                (f"{name}/{PICKLE_FILE}", data)):
            info = zipfile.ZipInfo(member, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, content)

    if buf.tell() > packages.MAX_PACKAGE_BYTES:
        raise UnshippableError(f"{_name(fn)} pickles to {buf.tell():,} bytes, more than the "
                               f"{packages.MAX_PACKAGE_BYTES:,} a plugin package may have: load big data inside the "
                               "function (from a file or a database) instead of capturing it")
    return f"{name}.zip", buf.getvalue()


def load_function(directory: Path) -> Callable[[Any], Any]:
    """On a node: the shipped function as ``run(context)``, or the shipped TaskBase class
    (the plugin host calls the one, instantiates the other)."""
    import cloudpickle

    meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if meta.get("python") != here:
        raise RuntimeError(f"{meta.get('qualname')} was shipped from Python {meta.get('python')}; this node "
                           f"runs Python {here}. Decorate it from a Python {here} kernel.")
    fn = cloudpickle.loads((directory / PICKLE_FILE).read_bytes())
    if meta.get("takes_context", True):
        return fn

    def run(_context: Any) -> Any:
        return fn()

    run.__qualname__ = run.__name__ = getattr(fn, "__name__", "run")
    return run
