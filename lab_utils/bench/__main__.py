"""``python -m lab_utils.bench``: run the benchmark (``make bench``)."""

import sys

from lab_utils.bench.inference_suite import main

if __name__ == "__main__":
    sys.exit(main())
