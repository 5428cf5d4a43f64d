"""``make bench``: every inference style and the many-models plans, measured against one process.

:mod:`lab_utils.bench.inference_suite` measures the inference styles,
:mod:`lab_utils.bench.training_suite` the per-group training plans.
``python -m lab_utils.bench`` runs both.
"""
