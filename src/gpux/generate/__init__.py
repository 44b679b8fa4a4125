"""The generate box: decoder language models on the run path (no torch, no transformers).

:mod:`loop` runs the cache graph token by token over a batch; :mod:`sampling` chooses each token
(one chain per sequence); :mod:`detok` turns tokens into text that never splits a character;
:mod:`stops` cuts at stop strings; :mod:`chat` renders chat templates as transformers does.
"""
