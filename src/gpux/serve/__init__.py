"""The serve box: ``gpux serve`` — an HTTP API over the store's models (needs the ``serve`` extra).

``manager`` decides what is loaded, ``batcher`` merges requests into calls, ``app``/``native``/``compat``
speak HTTP; none of them imports torch.
"""
