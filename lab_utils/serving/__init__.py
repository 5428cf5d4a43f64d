"""The lab's model server: saved Keras models over TensorFlow Serving's REST API.

Run it with ``python -m lab_utils.serving`` (the ``model-server`` role of ``lab run``).

This package re-exports nothing: import each name from the module that defines it.

* :mod:`~lab_utils.serving.model_server`: the app (``create_app``) and the CLI (``main``)
* :mod:`~lab_utils.serving.handlers`: what each route answers (imports Starlette)
* :mod:`~lab_utils.serving.registry`: the served models, their status and metadata
* :mod:`~lab_utils.serving.inputs`: what a model takes, the request limits, ``ServingError``
* :mod:`~lab_utils.serving.payloads`: predict bodies (pixel lists, ``{"b64": ...}`` files)
* :mod:`~lab_utils.serving.faults`: injected faults (``Faults``) and the ``/stats`` counters
* :mod:`~lab_utils.serving.process`: a server in a child process (``launch``,
  ``server_healthy``), for the tests, notebook 08 and the bench
"""
