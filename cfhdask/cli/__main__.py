import sys

from cfhdask.cli import main

sys.exit(main())
