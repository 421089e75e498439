"""The application around the library: `perforate compare` and its engine, the benchmark
suites as studies on it and their reports, `perforate train`, datasets, reference models
and the command line. It imports `perforate`; `perforate` never imports it.

Needs the `[bench]` extra (scikit-learn, matplotlib, mnist1d, scipy, tqdm) for datasets,
statistics and figures.
"""
