"""Benchmarks and evidence scripts: code like the library, importable as ``benchmarks.<name>``.

Run each from the repository root as a module, e.g. ``python -m benchmarks.atp_cost`` (see
docs/benchmarks.md); shared helpers live here too (:mod:`benchmarks.isolated`: measurements in a
fresh process with their peak memory; :mod:`benchmarks.plotting`: figures drawn to files;
:mod:`benchmarks.tiny`: the tiny random Llama of ``--quick`` runs;
:mod:`benchmarks.studylib`, :mod:`benchmarks.edgeslib`: the study's and the edge evidence's parts).
"""
