"""``python -m impl.datapath --config FILE --control SOCKET``: run the reference director."""

from impl.datapath.process import main

raise SystemExit(main())
