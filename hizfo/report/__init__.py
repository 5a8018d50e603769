"""The paper's tables and plots rendered from run records beside the paper's own numbers
(`python -m hizfo.report tables|plots`).

May import ``hizfo.runs`` only: reporting reads records, never a model or a method.
"""
