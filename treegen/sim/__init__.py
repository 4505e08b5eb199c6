"""The simulator: an OpenAI-compatible server on loopback that answers from a pool of real or
synthetic examples, with faults on demand. Everything it makes is labelled simulated.

- ``server``: the HTTP server and the reply logic (``Simulator``, ``SimServer``, ``SimConfig``),
  structured outputs (``response_format``) and the hostile-server faults.
- ``batch``: the OpenAI Batch API (files and batches in memory, ``BatchStore``).
- ``pool``: the synthetic pools it draws from when no pool file is given.
"""
