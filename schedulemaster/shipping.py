"""Ship a Python function to the executor nodes as a plugin package.

A function decorated in a notebook has no module a node could import. It travels the way
an uploaded plugin does (``deployments/packages.py``): a zip named ``<module>.zip`` that the
master stores and each node fetches at Start. Inside is a package whose ``run`` is the
function, rebuilt with cloudpickle (the serializer Prefect itself uses for flows), so
closures, notebook globals and helper functions defined in other cells come along by value.

What cannot come along (an open socket, a database connection, a lock) is found here, at
decoration, by pickling and unpickling the function once, and named in the error with the
variable that holds it. The node checks the Python version before unpickling: bytecode
does not travel between minor versions.
"""

from __future__ import annotations

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

PICKLE_FILE = "function.pkl"
META_FILE = "shipped.json"
CLASS_NAME = "run"  # the task's ClassName: the package's module-level ``run``
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member times: the same function gives the same bytes


class UnshippableError(TypeError):
    """The function cannot be sent to the nodes; the message says what to change."""


def module_name(title: str) -> str:
    """The package (AssemblyName) a task's function is shipped in: readable, importable and
    one per title (titles are unique), e.g. ``smfn_sync_orders_1a2b3c4d``."""
    slug = re.sub(r"[^A-Za-z0-9_]+", "_", title).strip("_").lower()[:40] or "task"
    digest = hashlib.sha1(title.encode("utf-8")).hexdigest()[:8]
    return f"smfn_{slug}_{digest}"


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
    path = str(Path(path).resolve())
    roots = {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib", "platstdlib")}
    return any(path.startswith(str(Path(r).resolve())) for r in roots)


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


def dumps(fn: Callable[..., Any]) -> bytes:
    """``fn`` pickled by value, or UnshippableError naming what cannot travel."""
    import cloudpickle

    if not callable(fn):
        raise UnshippableError(f"{fn!r} is not a function")
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise UnshippableError(f"{_name(fn)} is a generator; a task function returns its result")
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    by_value = module is not None and module.__name__ != "__main__" and not _installed(module)
    if by_value:
        cloudpickle.register_pickle_by_value(module)
    try:
        data = cloudpickle.dumps(fn)
    except Exception as exc:
        culprits = _culprits(fn)
        what = ("it uses " + ", ".join(culprits)) if culprits else f"{type(exc).__name__}: {exc}"
        raise UnshippableError(
            f"{_name(fn)} cannot be shipped to the nodes: {what}. Create such objects inside the "
            "function (or in a TaskBase's initialize) instead of capturing them from the notebook.") from None
    finally:
        if by_value:
            cloudpickle.unregister_pickle_by_value(module)
    try:
        cloudpickle.loads(data)
    except Exception as exc:
        raise UnshippableError(f"{_name(fn)} pickles but cannot be rebuilt ({type(exc).__name__}: {exc}); "
                               "a node could not load it either") from None
    return data


_INIT = '''"""{title}: {qualname}, shipped by schedulemaster (cloudpickle {cp}, Python {py})."""
from pathlib import Path

from schedulemaster.shipping import load_function

run = load_function(Path(__file__).parent)
'''


def package(fn: Callable[..., Any], title: str) -> tuple[str, bytes]:
    """(file name, zip bytes) of the plugin package that runs ``fn`` as the task ``title``."""
    import cloudpickle

    from schedulemaster.sdk import TaskBase

    if inspect.isclass(fn) and not issubclass(fn, TaskBase):
        raise UnshippableError(f"{_name(fn)} is a class but not a TaskBase subclass")
    context = True if inspect.isclass(fn) else takes_context(fn)
    data = dumps(fn)
    name = module_name(title)
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
                (f"{name}/__init__.py", _INIT.format(title=title.replace('"', "'").replace("\\", "/"),
                                                     qualname=_name(fn), cp=cloudpickle.__version__, py=py)),
                (f"{name}/{META_FILE}", json.dumps(meta, ensure_ascii=False, indent=1)),
                (f"{name}/{PICKLE_FILE}", data)):
            info = zipfile.ZipInfo(member, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, content)
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
