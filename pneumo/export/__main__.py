"""`python -m pneumo.export RUN --format onnx|torchscript [--output FILE]`."""

import sys

from pneumo.export.cli import main

if __name__ == "__main__":
    sys.exit(main())
