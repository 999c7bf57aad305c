"""Developer scripts, not part of the installed package: benchmarks/ (speed and accuracy
measurements), release/ (tools that rewrite the shipped assets) and gpu_check/ (the one-call
remote GPU check). Packages only so that tests import their logic by name."""
