"""espresso's benchmarks: ``python -m bench`` measures the ESP core against each backend's raw crypto loop (the
ceiling) and against what a user would write instead, and reports ratios. See bench/RESULTS.md."""
