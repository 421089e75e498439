"""The application around the library: one training loop, training from a config file,
the demo, the benchmark suites and their reports, datasets, reference models and the
command line. It imports `perforate`; `perforate` never imports it.

Needs the `[bench]` extra (scikit-learn, matplotlib, mnist1d) for datasets and figures.
"""
