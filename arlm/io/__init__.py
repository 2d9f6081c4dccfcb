"""Everything arlm reads from disk or writes to it, at the bottom of the layers (only config and
errors below): atomic writes (:mod:`~arlm.io.atomic`), run locks (:mod:`~arlm.io.lock`), output
paths checked before work starts (:mod:`~arlm.io.paths`), the text policy (:mod:`~arlm.io.text`),
bytes/JSON/JSONL readers (:mod:`~arlm.io.files`), a typed, validated dataclass per metadata file
(:mod:`~arlm.io.schema`), and checkpoint folders (:mod:`~arlm.io.checkpoint`).

Nothing is imported here, so ``import arlm.io.text`` stays cheap.
"""
