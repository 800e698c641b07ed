"""`python -m operations.swap`: the floating-IP swap (operations/swap/command.py)."""
import sys

from .command import main

sys.exit(main())
