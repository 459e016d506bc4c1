"""Stage I: build a paired dataset. Each step is written once, as a function of (records, config, models, cache):

- :mod:`~misalign.build.classify`: the :class:`~misalign.build.classify.Classifier` interface (chat or embedded;
  :func:`~misalign.build.classify.get_classifier`) and per-domain probabilities;
- :mod:`~misalign.build.expand`: count prompts per domain and write new ones for low-resource domains;
- :mod:`~misalign.build.dedup`: drop near-duplicates (SimHash, :mod:`~misalign.build.simhash`);
- :mod:`~misalign.build.respond`: an aligned and a misaligned candidate per prompt (or per prompt and generator);
- :mod:`~misalign.build.filter`: two-stage rejection sampling by a judge;
- :mod:`~misalign.build.split`: a seeded, stratified train/validation/test split (optionally keeping groups whole).

The step commands (:mod:`misalign.cli.build`) and ``misalign build`` (:mod:`~misalign.build.pipeline`) call the
same functions, through :func:`~misalign.build.session.run_with_models` for models and the call cache. Prompts
sent to models are the versioned templates ``classify_v2`` (``classify_v1`` still loads by name),
``classify_type_v1`` (semantic types, when asked for), ``expand_v1``, ``respond_v1`` and ``check_v1``.
"""
