"""``gpux serve --ray``: the same FastAPI app on Ray Serve replicas (docs/scale.md).

Three small modules, so that each process imports only what it runs:

- :mod:`.proxy` runs inside Ray's HTTP proxies (stdlib and orjson only): it reads the model a request
  names and sets Ray's multiplexed-model header, so clients need not.
- :mod:`.deployment` runs in each replica: gpux's model manager and app behind ``@serve.ingress``.
- :mod:`.launch` runs in the ``gpux serve --ray`` process: starts or joins Ray, deploys, waits.

Nothing here is imported by ``gpux --help`` or a plain ``gpux serve``.
"""
