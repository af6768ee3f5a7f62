"""``python -m medqa`` runs the CLI."""

import sys

from medqa.cli import main

sys.exit(main())
