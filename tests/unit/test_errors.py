"""Every exception the lab defines derives from ``LabError`` and keeps its built-in base."""

import importlib
import inspect
import pkgutil

import lab_utils
from lab_utils.errors import LabError

#: The built-in base each error had before the common base existed (callers catch these).
BUILTIN_BASE = {
    "LaunchError": RuntimeError, "GroupTrainingError": ValueError, "ModelError": RuntimeError,
    "ModelServerUnavailableError": RuntimeError, "RestScoringError": RuntimeError,
    "InferenceError": RuntimeError, "AudioError": ValueError, "EspeakMissingError": RuntimeError,
    "ImageError": ValueError, "TFRecordSchemaError": ValueError,
    "TFRecordDestinationError": FileExistsError, "ServingError": Exception,
    "ClusterUnavailableError": RuntimeError, "DockerError": RuntimeError,
    "ModelIntegrityError": ValueError, "PayloadError": ValueError,
}


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
