"""`python -m pulsewire` runs the CLI."""

import sys

from pulsewire.cli import main

sys.exit(main())
