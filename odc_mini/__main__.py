"""``python -m odc_mini``: the command line (``odc_mini.study.cli``)."""
import sys

from .study.cli import main

if __name__ == "__main__":
    sys.exit(main())
