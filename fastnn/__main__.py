"""python -m fastnn: the fastnn command line."""
import sys

from .cli import main

sys.exit(main())
