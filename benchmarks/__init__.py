"""Benchmarks of CrowdCompute against its peers, run by hand and never by the test suite.

``python -m benchmarks`` runs every workload of issue 6 against CrowdCompute
and, in the same run, multiprocessing, dask.distributed, ipyparallel and Ray
(skipping those not installed), and prints medians and ratios. See README.md.
"""
