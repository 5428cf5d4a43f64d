"""Every exception the lab defines derives from ``LabError`` and keeps its built-in base, and no
module raises a plain built-in exception that a notebook's ``except LabError`` would miss."""

import ast
import builtins
import importlib
import inspect
import pkgutil
from pathlib import Path

import lab_utils
from lab_utils.errors import LabError

PACKAGE = Path(lab_utils.__file__).parent

#: The built-in base each error had before the common base existed (callers catch these).
BUILTIN_BASE = {
    "LaunchError": RuntimeError, "GroupTrainingError": ValueError, "ModelError": RuntimeError,
    "ModelServerUnavailableError": RuntimeError, "RestScoringError": RuntimeError,
    "InferenceError": RuntimeError, "AudioError": ValueError, "EspeakMissingError": RuntimeError,
    "ImageError": ValueError, "TFRecordSchemaError": ValueError,
    "TFRecordDestinationError": FileExistsError, "ServingError": Exception,
    "ClusterUnavailableError": RuntimeError, "DockerError": RuntimeError,
    "ModelIntegrityError": ValueError, "PayloadError": ValueError, "BenchError": RuntimeError,
    "RestOptionsError": ValueError, "FaultSettingsError": ValueError,
    "ImagenetDownloadError": ConnectionError,  # issue 34: notebook 03's opt-in download
    # Issue 28: the raises that were plain built-ins, each with the base its callers catch.
    "ConfigError": ValueError, "EnvFileError": ValueError,
    "ResultsNotFoundError": FileNotFoundError, "CacheSizeError": ValueError,
    "NoJvmError": RuntimeError, "EspeakError": RuntimeError,
    "WindowSpecError": ValueError, "CustomerRecordError": ValueError,
    "NonFiniteWindowError": ValueError, "EventBoundError": ValueError,  # issue 29, data prep
    "TFRecordLocationError": ValueError, "TFRecordWriteError": RuntimeError,
    "TFRecordMissingError": FileNotFoundError, "TFRecordFeatureError": KeyError,
    "NonLocalPathError": ValueError, "UnplaceableFileError": OSError,
    "NoInputFilesError": ValueError, "NoSparkUiError": RuntimeError,
    "ModelServerStartError": RuntimeError, "NoImagesError": FileNotFoundError,
    "TooFewImagesError": ValueError, "RunFilesMissingError": FileNotFoundError,
    "NotHttpError": ConnectionError, "AdmissionSettingsError": ValueError,
    # Issue 30, Spark Connect: a classic-only call under Connect, a URL the client would hang on.
    "ClassicOnlyError": RuntimeError, "ConnectUrlError": ValueError,
    "PredictorFormError": ValueError,
    "StorageNotSharedError": OSError,  # a path the workers do not see as the client does
    "SqlMetricsError": LookupError,  # issue 31: a query or metric the Spark UI does not have
    "ResourceSettingError": ValueError,  # issue 31: a GPU amount Spark would refuse
    "StageRunsError": LookupError,  # issue 31: tagged stages the Spark UI does not have
    "AlreadyLandedError": FileExistsError, "LandingNameError": ValueError,  # issue 32, landing
    # Issue 33, notebook 10: the encoder's package and files, the docstring corpus's libraries.
    "ModelPackageNotFoundError": FileNotFoundError, "ModelHashError": ValueError,
    "BatchSizeError": ValueError,
    "LibraryNotFoundError": ModuleNotFoundError, "LibraryFileError": OSError,
    # Issue 35, notebook 11: too few task slots, no barrier stage, a training child that failed.
    "NotEnoughSlotsError": RuntimeError, "BarrierUnavailableError": RuntimeError,
    "WorkerFailedError": RuntimeError,
}

#: Built-ins a raise may still name: control flow and "not written yet", not a refusal.
ALLOWED_BUILTINS = {"NotImplementedError", "StopIteration", "SystemExit", "KeyboardInterrupt"}
BUILTIN_EXCEPTIONS = {name for name, obj in vars(builtins).items()
                      if isinstance(obj, type) and issubclass(obj, Exception)} - ALLOWED_BUILTINS
#: A deliberate plain built-in says why in a comment on the raise or right above it, e.g. a
#: failure that is recorded as a row's text (never raised to the caller) whose class a notebook
#: compares.
EXEMPT = "# plain-builtin:"


def _lab_exceptions():
    found = {}
    for info in pkgutil.walk_packages(lab_utils.__path__, "lab_utils."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException)
                    and obj.__module__ == module.__name__ and obj is not LabError):
                found[name] = obj
    return found


def test_every_lab_exception_has_the_common_base_and_its_builtin_one():
    found = _lab_exceptions()
    assert set(found) == set(BUILTIN_BASE), "a new exception: give it LabError and list it here"
    for name, cls in found.items():
        assert issubclass(cls, LabError), name
        assert issubclass(cls, BUILTIN_BASE[name]), name


def plain_raises(source: str) -> list[tuple[int, str]]:
    """``(line, statement)`` of each ``raise <built-in exception>`` in ``source``.

    Bare ``raise`` and ``raise exc`` (a variable) re-raise and pass; so does a name the module
    binds itself (its own class, or an import that shadows the built-in).
    """
    tree = ast.parse(source)
    lines = source.splitlines()
    bound = {target.id for node in tree.body if isinstance(node, ast.Assign)
             for target in node.targets if isinstance(target, ast.Name)}
    bound |= {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    bound |= {(alias.asname or alias.name).split(".")[0] for node in tree.body
              if isinstance(node, ast.Import | ast.ImportFrom) for alias in node.names}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Raise) or node.exc is None:
            continue
        raised = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
        if not (isinstance(raised, ast.Name) and raised.id in BUILTIN_EXCEPTIONS - bound):
            continue
        first = node.lineno - 1
        while first > 0 and lines[first - 1].lstrip().startswith("#"):
            first -= 1  # the comment block right above the raise
        if any(EXEMPT in line and line.split(EXEMPT, 1)[1].strip()
               for line in lines[first:node.end_lineno]):
            continue
        found.append((node.lineno, ast.unparse(node)))
    return found


def test_the_scan_finds_plain_builtin_raises_and_only_those():
    source = '''
from concurrent.futures import TimeoutError

class OwnError(Exception):
    pass

def f(exc):
    raise ValueError("x")
    raise OSError
    raise RuntimeError("y") from None
    raise  # bare: re-raises
    raise exc
    raise OwnError("z")
    raise TimeoutError("an import, not the built-in")
    raise NotImplementedError
    raise StopIteration
    # plain-builtin: a row's text, compared by a notebook
    raise KeyError("k")
    # plain-builtin:
    raise IndexError("a marker without a reason does not count")
'''
    assert [line for line, _ in plain_raises(source)] == [8, 9, 10, 20]


def test_no_module_raises_a_plain_builtin_exception():
    # A notebook's `except LabError` catches every refusal of the lab only if each raise uses a
    # LabError subclass; the subclass keeps the built-in base callers catch (ValueError, ...).
    found = [f"{path.relative_to(PACKAGE.parent)}:{line}: {statement[:110]}"
             for path in sorted(PACKAGE.rglob("*.py"))
             for line, statement in plain_raises(path.read_text())]
    assert not found, (
        "plain built-in exceptions raised (a notebook's `except LabError` misses them): raise "
        "the module's LabError subclass, or add one next to the code (`class XError(LabError, "
        "ValueError)`) and list it in BUILTIN_BASE; a deliberate built-in says why in a "
        f"'{EXEMPT} <why>' comment\n" + "\n".join(found))
