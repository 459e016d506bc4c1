"""Execution engines for the same steps: ``local`` (asyncio in this process, the default) and ``ray`` (Ray Data
pipelines, :mod:`misalign.engines.raydata`; the ``[ray]`` extra, imported only when asked for).

Both run the step code of :mod:`misalign.bench` and :mod:`misalign.build`; an engine only decides where the
calls happen. For the same inputs and seeds both write the same bytes.
"""

ENGINES = ("local", "ray")
