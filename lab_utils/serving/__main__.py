"""``python -m lab_utils.serving``: run the model server in the foreground."""

import sys

from lab_utils.serving.model_server import main

if __name__ == "__main__":
    sys.exit(main())
