"""The training machinery: the loop and what it owns (checkpoints and their selection, resume,
export of the final model) and the primitives a method's step is built from (the loss, AdamW and
schedules, precision, data-parallel distribution, CPU offload), plus ``method.Method``, the
contract between the loop and a method.

May import ``hizfo.runs`` only. Methods, models and evaluation build on this package; it never
imports them.
"""
