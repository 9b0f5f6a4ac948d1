"""Simulation: ground truth for tests, benchmarks, the demo and network training.

- :mod:`qsmflow.sims.phantom`: the head phantom (Zubal anatomy, nuclei, veins, lesions; χ in ppm)
  and its true total and local fields.
- :mod:`qsmflow.sims.megre`: the multi-echo GRE simulator and the BIDS dataset / demo writers.
- :mod:`qsmflow.sims.dicom`: synthetic vendor-style GRE DICOM series (Siemens, Philips, GE).
- ``data/``: the shipped Zubal label volume (see ``data/README.md``).
"""
