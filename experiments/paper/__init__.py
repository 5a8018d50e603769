"""Ships as ``hizfo.paper`` inside the wheel, carrying paper_numbers.csv (see pyproject's package-dir)."""
