"""Spark DL Lab helpers: session, native cluster, inference, data and benchmarks.

Importing the package (or any module in it) imports neither TensorFlow nor PySpark; the heavy
frameworks are imported inside the functions that need them.
"""
