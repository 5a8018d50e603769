"""``python -m hizfo.study.tuned`` (``make study-report``)."""

from hizfo.study.tuned.cli import main

raise SystemExit(main())
