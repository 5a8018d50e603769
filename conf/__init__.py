"""Marks conf/ as the package ``hizfo.conf`` inside the wheel, so Hydra finds the configs at
``pkg://hizfo.conf`` when hizfo is installed without a checkout (see pyproject's package-dir)."""
