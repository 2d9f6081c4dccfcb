"""Speech as token sequences: scoring models in bits per sample beside classical baselines, and
continuing utterances to WAV with a waveform and spectrogram picture.

The parts live in their layers (arlm/tokenizers/audio.py: mu-law; arlm/data/audio.py: espeak-ng,
soundfile, ``arlm audio prepare``; arlm/eval/audio.py: bits per sample, unigram and LPC); this package
puts them together for ``arlm audio eval`` and ``arlm audio generate``. Training is ``arlm train``.
"""
