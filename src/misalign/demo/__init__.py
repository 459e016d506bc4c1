"""Demo-SafetyBench (Naseem et al., EACL Findings 2026): DICES conversations rated by LLMs as demographic raters.

- :mod:`misalign.demo.dices`: the DICES importer (conversations, ratings, raters and their demographics);
- :mod:`misalign.demo.rate`: ``misalign rate`` (the runner: framings, template, cache) and its figures;
- :mod:`misalign.demo.metrics`: ICC, Spearman's ρ, demographic sensitivity, DPD and EOD as plain functions;
- :mod:`misalign.demo.record`: the typed run record (manifest, ratings.jsonl, metrics.json);
- the report's Demo-SafetyBench section is :mod:`misalign.report.demo` (the report layer reads the record).
"""
