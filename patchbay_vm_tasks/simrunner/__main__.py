"""`python -m patchbay_vm_tasks.simrunner` (and the host's zipapp): the builtin runner."""

from .cli import main

raise SystemExit(main())
