"""The lab's model server: saved Keras models over TensorFlow Serving's REST API.

Run it with ``python -m lab_utils.serving`` (the ``model-server`` role of ``lab run``).
"""
