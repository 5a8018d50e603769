"""The CPU-scale studies of the paper's claims: arms, statistics, verdicts and their rendering from
run records (`python -m hizfo.study`).

May import ``hizfo.runs``, ``hizfo.training`` (resume state), ``hizfo.evaluation`` (re-scoring) and
``hizfo.report``; it trains nothing itself.
"""
