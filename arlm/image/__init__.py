"""Images as token sequences: sampling grids, completing images and scoring models in bits per pixel.

The parts live in their layers (arlm/tokenizers/image.py: pixels <-> ids; arlm/data/images.py: readers,
``arlm image prepare``, PNG grids; arlm/eval/images.py: bits per dimension); this package puts them
together for ``arlm image sample`` and ``arlm image eval``. Training is ``arlm train`` on the prepared
folder, the same loop as for text.
"""
