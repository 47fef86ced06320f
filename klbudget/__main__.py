"""`python -m klbudget ...` (and `torchrun --nproc_per_node N -m klbudget train ...`)."""

import sys

from klbudget.cli import main

sys.exit(main())
